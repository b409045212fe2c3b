"""Checkpoints: bit-exact resume, refusal of other runs' checkpoints, corrupt files, atomic writes."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import sagann
from sagann.chunks.synthetic import sbm
from sagann.engine.checkpoint import CHECKPOINT_NAME, CheckpointError, Checkpointer, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from sagann.engine.models import build_model
from sagann.engine.train import train_node_classifier

DATA = sbm(300, 3, 6.0, 8, seed=3)


def _train(model_name: str, epochs: int, checkpoint=None, hidden: int = 8, lr: float = 0.01, fingerprint=None, on_resume=None, **model_kw):
    """A fresh process-like run: seed, build the model and a graph under a budget that forces P > 1."""
    torch.manual_seed(0)
    model = build_model(model_name, DATA.x.shape[1], hidden, DATA.num_classes, **model_kw)
    g = sagann.ChunkedGraph(DATA.edge_index, 300, device=sagann.CpuDevice("20KB"), schedule=sagann.ScheduleConfig(order="natural"))
    masks = [torch.from_numpy(m) for m in (DATA.train_mask, DATA.val_mask, DATA.test_mask)]
    history = train_node_classifier(
        model, g, torch.from_numpy(DATA.x), torch.from_numpy(DATA.y), *masks, epochs=epochs, lr=lr, progress=False,
        checkpoint_dir=checkpoint, fingerprint=fingerprint, on_resume=on_resume,
    )
    return model, g, history


@pytest.mark.parametrize("model_name", ["gcn", "sage", "gin", "ggcn"])  # gat also resumes bit-exactly but takes ~12 s here
def test_resume_is_bit_exact(tmp_path, model_name):
    straight, g, full = _train(model_name, 4)
    assert g.num_chunks > 1
    _train(model_name, 2, tmp_path)
    torch.manual_seed(123)  # a resumed process starts from any RNG state: the checkpoint's must win
    resumed_at = []
    resumed, _, history = _train(model_name, 4, tmp_path, on_resume=resumed_at.append)
    assert resumed_at == [2]
    assert [s.loss for s in history] == [s.loss for s in full]
    assert [s.test_accuracy for s in history] == [s.test_accuracy for s in full]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 4


@pytest.mark.parametrize("model_name", ["gcn", "sage"])
def test_resume_without_dropout_is_bit_exact_with_the_cached_gather(tmp_path, model_name):
    """No dropout: training calls reuse the first layer's cached Gather; a resumed run must too, from its first epoch."""
    straight, g, full = _train(model_name, 4, dropout=0.0)
    assert any(r.chunks == 0 for r in g.pass_log), "the first layer ran on its cached Gather"
    _train(model_name, 2, tmp_path, dropout=0.0)
    resumed, _, history = _train(model_name, 4, tmp_path, dropout=0.0)
    assert [s.loss for s in history] == [s.loss for s in full]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()
    state = rng_state()
    before = (torch.rand(3), np.random.standard_normal(3), random.gauss(0, 1), random.random())
    fp = {"run": "rng"}
    save_checkpoint(tmp_path / "c.pt", {"epoch": 0, "model": {}, "optimizer": {}, "history": [], "rng": state, "fingerprint": fp})
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    after = (torch.rand(3), np.random.standard_normal(3), random.gauss(0, 1), random.random())
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2:] == after[2:]


def test_checkpoint_of_another_run_is_refused(tmp_path):
    _train("gcn", 1, tmp_path, fingerprint={"dataset": "a"})
    with pytest.raises(CheckpointError, match="different run.*parameter_shapes"):
        _train("gcn", 2, tmp_path, hidden=16, fingerprint={"dataset": "a"})
    with pytest.raises(CheckpointError, match="different run.*lr 0.01 there vs 0.05 here"):
        _train("gcn", 2, tmp_path, lr=0.05, fingerprint={"dataset": "a"})
    with pytest.raises(CheckpointError, match="model_class 'GCN' there vs 'GIN' here"):
        _train("gin", 2, tmp_path, fingerprint={"dataset": "a"})
    with pytest.raises(CheckpointError, match="dataset 'a' there vs 'b' here"):
        _train("gcn", 2, tmp_path, fingerprint={"dataset": "b"})
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 1  # refused runs wrote nothing


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    _train("gcn", 1, d)
    return (d / CHECKPOINT_NAME).read_bytes()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[: len(b) // 2], "corrupt or truncated"),
        (lambda b: b[:100], "corrupt or truncated"),
        (lambda b: b"", "corrupt or truncated"),
        (lambda b: os.urandom(len(b)), "corrupt or truncated"),
    ],
    ids=["half", "head", "empty", "garbage"],
)
def test_damaged_checkpoint_is_a_clear_error(tmp_path, good_checkpoint, damage, message):
    (tmp_path / CHECKPOINT_NAME).write_bytes(damage(good_checkpoint))
    with pytest.raises(CheckpointError, match=message) as info:
        _train("gcn", 2, tmp_path)
    assert "\n" not in str(info.value) and f"delete {tmp_path / CHECKPOINT_NAME}" in str(info.value)


def test_flipped_bytes_never_load_as_a_wrong_state(tmp_path, good_checkpoint):
    reference = load_checkpoint(_write(tmp_path / "ref.pt", good_checkpoint))
    rng = np.random.default_rng(0)
    caught = 0
    for k, pos in enumerate(rng.choice(len(good_checkpoint), 40, replace=False)):
        bad = bytearray(good_checkpoint)
        bad[pos] ^= 0x5A
        try:
            state = load_checkpoint(_write(tmp_path / f"bad{k}.pt", bytes(bad)))
        except CheckpointError:
            caught += 1
            continue
        # the byte was zip padding or similar: what loads must be exactly the original
        assert all(torch.equal(state["model"][n], t) for n, t in reference["model"].items())
        assert state["history"] == reference["history"] and torch.equal(state["rng"]["torch"], reference["rng"]["torch"])
    assert caught >= 30  # tensor bytes, pickle and zip records all fail loudly


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_not_a_checkpoint_and_newer_format_are_refused(tmp_path):
    torch.save({"weights": torch.ones(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a sagann checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    torch.save({"format": "sagann-checkpoint", "version": 99}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="format version 99.*upgrade sagann"):
        load_checkpoint(tmp_path / "new.pt")


@pytest.mark.parametrize("fail_in", ["torch.save", "os.replace"])
def test_failure_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fail_in):
    _train("gcn", 2, tmp_path)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # a partial file on disk, then the "crash"
        raise OSError("No space left on device")

    def failing_replace(src, dst):
        raise OSError("No space left on device")

    if fail_in == "torch.save":
        monkeypatch.setattr(torch, "save", half_save)
    else:
        monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        _train("gcn", 4, tmp_path)
    monkeypatch.undo()
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME], "the temporary file is removed"
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 2


_WRITER = """
import sys, torch
from sagann.engine.checkpoint import save_checkpoint, rng_state
path = sys.argv[1]
for k in range(1, 10_000):
    model = {"w": torch.full((1 << 21,), float(k)), "b": torch.full((7,), float(k))}
    save_checkpoint(path, {"epoch": k, "model": model, "optimizer": {"k": k}, "history": [{"k": i} for i in range(k)], "rng": rng_state(), "fingerprint": {"writer": 1}})
    print(k, flush=True)
"""


def test_kill_9_during_checkpoint_writes_leaves_a_valid_checkpoint(tmp_path):
    """A real process rewriting an 8 MiB checkpoint in a loop, killed at a random moment."""
    path = tmp_path / CHECKPOINT_NAME
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_WRITER), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "1", "the writer finished one checkpoint"
        time.sleep(random.uniform(0.05, 0.6))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    state = load_checkpoint(path)
    k = state["epoch"]
    assert k >= 1 and len(state["history"]) == k and state["optimizer"] == {"k": k}
    assert bool((state["model"]["w"] == k).all()) and bool((state["model"]["b"] == k).all())
    Checkpointer(tmp_path, {"writer": 1})  # a new run sweeps the dead writer's temporary
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]
