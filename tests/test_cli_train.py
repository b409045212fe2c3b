"""`sagann train` on a dataset directory: the JSON contract, errors, profiling, and kill -9 + resume."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from sagann.chunks import partition_graph, save_dataset
from sagann.chunks.synthetic import sbm
from sagann.cli import build_parser, main
from sagann.engine.checkpoint import CHECKPOINT_NAME
from sagann.engine.train import TrainConfig

TRAIN_KEYS = {"accuracy", "num_chunks", "memory_budget_bytes", "peak_device_bytes", "measured_device_peak_bytes", "epoch_seconds", "losses", "resumed_from_epoch"}


def _save(path, n=800, masks=("train", "val", "test")):
    d = sbm(n, 3, 8.0, 8, seed=1)
    split = {"train": d.train_mask, "val": d.val_mask, "test": d.test_mask, "valid": d.val_mask}
    return save_dataset(path, partition_graph(d.edge_index, n, 2), x=d.x, y=d.y, masks={m: split[m] for m in masks})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return str(_save(tmp_path_factory.mktemp("data") / "sbm"))


def _one_json(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, "--json prints exactly one JSON object"
    return json.loads(lines[0])


def test_train_json_contract(dataset, capsys):
    assert main(["train", dataset, "--epochs", "8", "--json", "--memory-budget", "150KB", "--hidden", "16"]) == 0
    r = _one_json(capsys.readouterr().out)
    assert TRAIN_KEYS <= set(r)
    assert len(r["losses"]) == len(r["epoch_seconds"]) == 8
    assert r["losses"][-1] < r["losses"][0]
    assert r["num_chunks"] > 1 and r["memory_budget_bytes"] == 150_000
    assert 0 < r["measured_device_peak_bytes"] <= r["memory_budget_bytes"], "measured as allocated, not the ledger's count"
    assert r["accuracy"] > 0.5  # 3 classes; chance is 1/3
    assert r["resumed_from_epoch"] is None and r["host_memory_bytes"] is None


def test_train_json_without_the_meter(dataset, capsys):
    assert main(["train", dataset, "--epochs", "1", "--json", "--memory-budget", "150KB", "--hidden", "16", "--no-meter"]) == 0
    r = _one_json(capsys.readouterr().out)
    assert r["measured_device_peak_bytes"] is None and r["peak_device_bytes"] > 0


def test_train_report_lists_epochs(dataset, capsys):
    assert main(["train", dataset, "--epochs", "2", "--model", "sage", "--host-memory", "1GB"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out
    assert "test accuracy" in out and "peak device bytes" in out and "P = " in out
    assert "host memory budget" in out and "0 B spilled" in out  # 1 GB holds this small graph


def test_host_memory_budget_spills_and_trains_as_in_ram(dataset, tmp_path, capsys):
    common = ["train", dataset, "--epochs", "3", "--json", "--memory-budget", "150KB", "--hidden", "16", "--order", "natural"]
    assert main(common) == 0
    ram = _one_json(capsys.readouterr().out)
    spill = tmp_path / "spill"
    assert main(common + ["--host-memory", "10KB", "--spill-dir", str(spill)]) == 0
    disk = _one_json(capsys.readouterr().out)
    assert disk["host_memory_bytes"] == 10_000 and disk["spilled_bytes_total"] > 0 and disk["spill_files"] > 0
    assert disk["peak_resident_bytes"] <= 10_000
    assert list(spill.iterdir()) == [], "spill files are gone once mapped"
    assert disk["losses"] == pytest.approx(ram["losses"], rel=1e-5)
    assert disk["accuracy"] == pytest.approx(ram["accuracy"], abs=1e-9)


def test_help_describes_the_disk_tier(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert "memory-mapped spill files" in " ".join(capsys.readouterr().out.split())


def _error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_corrupt_checkpoint_is_a_clear_error(dataset, tmp_path, capsys):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"PK\x03\x04 not really a zip")
    err = _error(capsys, ["train", dataset, "--epochs", "1", "--checkpoint", str(tmp_path)])
    assert "corrupt or truncated" in err and CHECKPOINT_NAME in err


def test_checkpoint_of_another_model_is_refused(dataset, tmp_path, capsys):
    assert main(["train", dataset, "--epochs", "1", "--json", "--checkpoint", str(tmp_path)]) == 0
    capsys.readouterr()
    err = _error(capsys, ["train", dataset, "--epochs", "2", "--model", "gin", "--checkpoint", str(tmp_path)])
    assert "different run" in err and "model_name 'gcn' there vs 'gin' here" in err


def test_16_bit_transfers_train_and_resume_only_their_own_checkpoints(dataset, tmp_path, capsys):
    assert main(["train", dataset, "--epochs", "8", "--json", "--memory-budget", "150KB", "--hidden", "16", "--transfer-dtype", "bfloat16", "--checkpoint", str(tmp_path)]) == 0
    r = _one_json(capsys.readouterr().out)
    assert r["transfer_dtype"] == "bfloat16" and r["num_chunks"] > 1 and r["losses"][-1] < r["losses"][0] and r["accuracy"] > 0.5
    err = _error(capsys, ["train", dataset, "--epochs", "9", "--memory-budget", "150KB", "--hidden", "16", "--checkpoint", str(tmp_path)])
    assert "different run" in err and "--transfer-dtype 'bfloat16' there" in err, "a float32 run does not resume a bfloat16 run's checkpoint"
    assert main(["train", dataset, "--epochs", "1", "--memory-budget", "150KB", "--hidden", "16", "--transfer-dtype", "float16"]) == 0
    assert "rows crossed the host link in float16" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown transfer dtype 'int8'"):
        TrainConfig(dataset, transfer_dtype="int8")
    with pytest.raises(ValueError, match="dropout must be in"):
        TrainConfig(dataset, dropout=1.0)


def test_profile_writes_trace_timeline_summary(dataset, tmp_path, capsys):
    out = tmp_path / "prof"
    assert main(["train", dataset, "--epochs", "2", "--json", "--memory-budget", "150KB", "--profile", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"trace.json", "timeline.png", "summary.json"}
    assert len(_one_json(capsys.readouterr().out)["profile"]) == 2


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sagann.cli", "train", *args]


def test_kill_9_then_resume_matches_an_uninterrupted_run(dataset, tmp_path):
    """Real processes: an uninterrupted run, and one killed at a random moment of training, then resumed."""
    ckpt = tmp_path / "ckpt"
    common = ["--epochs", "30", "--memory-budget", "150KB", "--hidden", "16", "--order", "natural", "--json"]
    reference = subprocess.Popen(_cli(dataset, *common), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child = subprocess.Popen(_cli(dataset, *common, "--checkpoint", str(ckpt)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None and not (ckpt / CHECKPOINT_NAME).exists():
        time.sleep(0.01)  # the first epoch's checkpoint is there: training is under way
    time.sleep(random.uniform(0.0, 0.3))
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL, "training finished before it could be killed: raise the epochs"
    final = subprocess.run(_cli(dataset, *common, "--checkpoint", str(ckpt)), capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    resumed = _one_json(final.stdout)
    assert "resumed from the checkpoint" in final.stderr and 1 <= resumed["resumed_from_epoch"] < 30
    out, err = reference.communicate(timeout=120)
    assert reference.returncode == 0, err
    assert resumed["losses"] == _one_json(out)["losses"]  # bit for bit


def test_progress_lines_inside_each_epoch_when_stderr_is_not_a_terminal(dataset):
    """stderr to a pipe: plain lines (chunks done / total, bytes moved, ETA) while an epoch runs, before its epoch line."""
    args = _cli(dataset, "--epochs", "2", "--memory-budget", "150KB", "--hidden", "16", "--progress-every", "0")
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stdout
    lines = r.stdout.splitlines()
    progress = [k for k, line in enumerate(lines) if re.match(r"^GCNConv (forward|backward): \d+/\d+ chunks \(\d+%\), .* moved, ", line)]
    first_epoch = next(k for k, line in enumerate(lines) if line.startswith("epoch 1/2"))
    assert progress and progress[0] < first_epoch, "progress is reported inside the first epoch"
    assert any(re.search(r": 1/[2-9]\d* chunks .* ETA \d+ s$", lines[k]) for k in progress), "a line from the middle of a pass, with its ETA"


def test_a_verified_dataset_is_not_hashed_again_and_no_verify_skips_it(tmp_path, capsys):
    path = _save(tmp_path / "ds")
    old = time.time() - 60  # written a while ago (a stamp never trusts files written in the last seconds)
    for p in path.iterdir():
        os.utime(p, (old, old))
    common = ["train", str(path), "--epochs", "1", "--json", "--hidden", "4"]
    seen = []
    for extra in ([], [], ["--no-verify"]):
        assert main(common + extra) == 0
        seen.append(_one_json(capsys.readouterr().out)["verified"])
    assert seen == ["sha256", "stamp", "skipped"]
    assert main(["train", str(path), "--epochs", "1", "--hidden", "4", "--no-verify"]) == 0
    assert "dataset not hashed (--no-verify)" in capsys.readouterr().out


def test_train_forecasts_the_plan_before_training(dataset, capsys):
    assert main(["train", dataset, "--epochs", "1", "--memory-budget", "40KB", "--hidden", "16"]) == 0
    out = capsys.readouterr().out.splitlines()
    plan = next(k for k, line in enumerate(out) if line.startswith("plan: about P = "))
    assert plan < next(k for k, line in enumerate(out) if line.startswith("epoch 1/1")), "the forecast comes before training"
    assert "predicted training step" in out[plan] and "estimate" in out[plan]
    assert any(line.startswith("predicted training step") and "measured median" in line for line in out)
    assert main(["train", dataset, "--epochs", "1", "--memory-budget", "40KB", "--hidden", "16", "--json"]) == 0
    f = _one_json(capsys.readouterr().out)["forecast"]
    assert f["plan"]["budget"] == 40_000 and f["plan"]["num_chunks"] > 1 and [o["budget"] for o in f["larger"]][:1] == [80_000]
