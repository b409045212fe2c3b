"""The bad-input matrix: every class of bad input through the `sagann` command and the Python API.

Each CLI row runs ``sagann <command>`` (``main(argv)``, in process: the
real argument parsing and error handling without a 2 s interpreter start per
row; ``test_the_real_command_line`` spawns real processes) and asserts: a
non-zero exit, stderr is ONE line naming the problem and the fix, no
traceback, nothing on stdout, and the work directory byte for byte as it was
(nothing written: no output dataset, checkpoint or profile, no temporaries).
Each API row calls the library with the same input and expects a clear
exception type and one-line message.

The valid corner cases (a graph without edges, a graph without vertices)
must work end to end: partition, verify, train, and the layers' forward and
backward.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

import sagann
from sagann.chunks import partition_graph, save_dataset
from sagann.chunks.dataset import DatasetError, load_dataset
from sagann.chunks.external import PartitionConfig, partition_edge_list
from sagann.chunks.ingest import EdgeListError
from sagann.cli import main
from sagann.engine.models import MODELS
from sagann.engine.train import SPLITS, TrainConfig, run_training, train_node_classifier

N = 50  # vertices of the good inputs
TRAIN = ("train", "{d}/ds", "--epochs", "1", "--checkpoint", "{d}/ckpt", "--profile", "{d}/prof")
VERIFY = ("verify", "{d}/ds")


def _partition_argv(*extra: str, edges: str = "{d}/e.npy") -> tuple[str, ...]:
    return ("partition", edges, "{d}/out", *extra)


# ---------------------------------------------------------------- inputs


def _good_inputs(d: Path) -> None:
    """An edge list, features, labels and masks that partition cleanly (rows overwrite them to break one)."""
    rng = np.random.default_rng(0)
    np.save(d / "e.npy", rng.integers(0, N, size=(2, 400)))
    np.save(d / "x.npy", rng.standard_normal((N, 3)).astype(np.float32))
    np.save(d / "y.npy", rng.integers(0, 3, size=N))
    for m in SPLITS:
        np.save(d / f"{m}.npy", rng.random(N) < 0.5)


def _save_good_dataset(path: Path, masks=SPLITS) -> Path:
    rng = np.random.default_rng(1)
    ei = rng.integers(0, N, size=(2, 400))
    split = {m: rng.random(N) < 0.5 for m in masks}
    return save_dataset(path, partition_graph(ei, N, 2), x=rng.standard_normal((N, 3)).astype(np.float32), y=rng.integers(0, 3, size=N), masks=split)


@pytest.fixture(scope="module")
def good_dataset(tmp_path_factory) -> Path:
    return _save_good_dataset(tmp_path_factory.mktemp("good") / "ds")


@pytest.fixture
def work(tmp_path, good_dataset) -> Path:
    """A directory with good inputs (e.npy, x.npy, y.npy, train/val/test.npy) and a good dataset ds/."""
    d = tmp_path / "w"
    d.mkdir()
    _good_inputs(d)
    shutil.copytree(good_dataset, d / "ds")
    return d


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content hash: any write shows up as a difference."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in filenames:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------- damage


def _edit_manifest(ds: Path, fn: Callable[[dict], None]) -> None:
    m = json.loads((ds / "manifest.json").read_text())
    fn(m)
    (ds / "manifest.json").write_text(json.dumps(m))


def _flip_byte(ds: Path) -> None:
    p = ds / "src_idx.npy"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x40
    p.write_bytes(bytes(data))


def _point_outside(ds: Path) -> None:
    def move(m):
        m["files"]["../labels.npy"] = m["files"].pop("labels.npy")

    _edit_manifest(ds, move)
    shutil.copy(ds / "labels.npy", ds.parent / "labels.npy")  # a real file there: it must still not be read


def _labels_beyond_num_classes(ds: Path) -> None:
    _edit_manifest(ds, lambda m: m["labels"].update(num_classes=1))


def _without_val_test(ds: Path) -> None:
    shutil.rmtree(ds)
    _save_good_dataset(ds, masks=("train", "valid"))


def _truncate_npy(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 7)


def _save(name: str, array) -> Callable[[Path], None]:
    return lambda d: np.save(d / name, np.asarray(array))


def _with_row(shape, row: int, value, dtype=np.float64) -> np.ndarray:
    a = np.ones(shape, dtype=dtype)
    a[row] = value
    return a


# ---------------------------------------------------------------- API calls with the same input


def _partition(d: Path, features=None, labels=None, masks=None, edges="e.npy", **cfg) -> None:
    partition_edge_list(d / edges, d / "out", PartitionConfig(host_memory="1GB", **cfg), features=features and d / features, labels=labels and d / labels, masks={k: d / v for k, v in (masks or {}).items()} or None)


def _graph(d: Path, n: int = N) -> None:
    sagann.ChunkedGraph(np.load(d / "e.npy"), n)


def _save_api(d: Path, **arrays) -> None:
    ei = np.load(d / "e.npy")
    save_dataset(d / "out", partition_graph(ei, N, 2), **{k: np.load(d / v) if k != "masks" else {m: np.load(d / p) for m, p in v.items()} for k, v in arrays.items()})


def _train_api(d: Path, **cfg) -> None:
    run_training(TrainConfig(str(d / "ds"), epochs=1, checkpoint=str(d / "ckpt"), **cfg))


def _train_loop_with_mask(d: Path, mask_rows: int) -> None:
    ds = load_dataset(d / "ds")
    g = sagann.ChunkedGraph.from_partition(ds.partition)
    x, y = torch.from_numpy(np.array(ds.x)), torch.from_numpy(np.array(ds.y))
    masks = [torch.zeros(mask_rows, dtype=torch.bool)] + [torch.from_numpy(np.array(ds.masks[m])) for m in SPLITS[1:]]
    train_node_classifier(sagann.nn.GCNConv(3, 3), g, x, y, *masks, epochs=1, progress=False)


# ---------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Case:
    id: str
    damage: Callable[[Path], Any] | None  # breaks one input in the work directory
    argv: tuple[str, ...]  # "{d}" is the work directory
    problem: str  # stderr names the problem...
    fix: str  # ...and the fix
    api: tuple[tuple[Callable[[Path], Any], type[BaseException]], ...] = ()


CASES = [
    # ids in the edge list
    Case("negative-id", _save("e.npy", [[0, -1], [1, 2]]), _partition_argv(), "has negative vertex id -1", "ids must lie in [0, N)",
         ((_partition, EdgeListError), (_graph, ValueError))),
    Case("id-beyond-N", _save("e.npy", [[0, 1], [1, 70]]), _partition_argv("--num-vertices", "50"), "has vertex id 70 but --num-vertices 50", "pass a larger --num-vertices",
         ((lambda d: _partition(d, num_vertices=N), EdgeListError), (_graph, ValueError))),
    Case("float-ids", _save("e.npy", [[0.5, 1], [1, 2]]), _partition_argv(), "vertex ids must be integers", "convert with edge_index.astype(np.int64)",
         ((_partition, EdgeListError), (_graph, ValueError))),
    Case("edge-list-shape", _save("e.npy", np.zeros((3, 4), np.int64)), _partition_argv(), "shape [2, E] or [E, 2], got [3, 4]", "save it with np.save",
         ((_partition, EdgeListError), (_graph, ValueError))),
    Case("edge-list-truncated", lambda d: _truncate_npy(d / "e.npy"), _partition_argv(), "is not a readable .npy array", "write it with np.save",
         ((_partition, EdgeListError),)),
    Case("edge-list-missing", None, _partition_argv(edges="{d}/none.npy"), "none.npy: no such file", "check the path",
         ((lambda d: _partition(d, edges="none.npy"), EdgeListError),)),
    Case("edge-list-not-npy", lambda d: (d / "e.npy").write_text("0 1\n1 two\n"), _partition_argv(), "is named .npy but is not a .npy array", "write it with np.save",
         ((_partition, EdgeListError),)),
    # vertex data
    Case("features-missing", None, _partition_argv("--features", "{d}/none.npy"), "none.npy: no such file", "check the path",
         ((lambda d: _partition(d, features="none.npy"), EdgeListError),)),
    Case("features-NaN", _save("x.npy", _with_row((N, 3), 7, np.nan)), _partition_argv("--features", "{d}/x.npy"), "row 7 (vertex 7) holds NaN or Inf", "np.nan_to_num",
         ((lambda d: _partition(d, features="x.npy"), ValueError), (lambda d: _save_api(d, x="x.npy"), ValueError))),
    Case("features-Inf", _save("x.npy", _with_row((N, 3), 4, np.inf, np.float32)), _partition_argv("--features", "{d}/x.npy"), "row 4 (vertex 4) holds NaN or Inf", "np.nan_to_num",
         ((lambda d: _partition(d, features="x.npy"), ValueError), (lambda d: _save_api(d, x="x.npy"), ValueError))),
    Case("features-dtype", _save("x.npy", np.ones((N, 3), np.int64)), _partition_argv("--features", "{d}/x.npy"), "features must be floating point, got dtype int64", "x.astype(np.float32)",
         ((lambda d: _partition(d, features="x.npy"), ValueError), (lambda d: _save_api(d, x="x.npy"), ValueError))),
    Case("features-shape", _save("x.npy", np.ones(N, np.float32)), _partition_argv("--features", "{d}/x.npy"), "features must have shape [N, F], got [50]", "x.reshape(-1, 1)",
         ((lambda d: _partition(d, features="x.npy"), ValueError), (lambda d: _save_api(d, x="x.npy"), ValueError))),
    Case("labels-negative", _save("y.npy", _with_row(N, 9, -1, np.int64)), _partition_argv("--labels", "{d}/y.npy"), "row 9 holds class id -1", "fix the labels",
         ((lambda d: _partition(d, labels="y.npy"), ValueError), (lambda d: _save_api(d, y="y.npy"), ValueError))),
    Case("labels-dtype", _save("y.npy", np.ones(N)), _partition_argv("--labels", "{d}/y.npy"), "labels must be integer class ids, got dtype float64", "y.astype(np.int64)",
         ((lambda d: _partition(d, labels="y.npy"), ValueError), (lambda d: _save_api(d, y="y.npy"), ValueError))),
    Case("labels-beyond-num-classes", lambda d: _labels_beyond_num_classes(d / "ds"), TRAIN, "outside [0, 1) given by labels.num_classes", "re-save the dataset",
         ((lambda d: load_dataset(d / "ds"), DatasetError),)),
    Case("mask-length", _save("train.npy", np.ones(N - 10, bool)), _partition_argv("--features", "{d}/x.npy", "--mask", "train={d}/train.npy"), "the 40 rows of the mask 'train' train.npy disagree", "pass one row per vertex everywhere",
         ((lambda d: _partition(d, features="x.npy", masks={"train": "train.npy"}), ValueError), (lambda d: _save_api(d, masks={"train": "train.npy"}), ValueError),
          (lambda d: _train_loop_with_mask(d, N - 10), ValueError))),
    Case("mask-dtype", _save("train.npy", np.ones(N, np.int64)), _partition_argv("--mask", "train={d}/train.npy"), "mask 'train' must be bool, got dtype int64", "mask.astype(bool)",
         ((lambda d: _partition(d, masks={"train": "train.npy"}), ValueError), (lambda d: _save_api(d, masks={"train": "train.npy"}), ValueError))),
    Case("mask-spec", None, _partition_argv("--mask", "{d}/train.npy"), "--mask must be NAME=FILE.npy", "--mask train=train.npy"),
    Case("dataset-without-masks", lambda d: _without_val_test(d / "ds"), TRAIN, "no val/test mask (masks found: train, valid)", "--mask train=TRAIN.npy --mask val=VAL.npy --mask test=TEST.npy",
         ((_train_api, DatasetError),)),
    # options
    Case("budget-too-small", None, (*TRAIN, "--memory-budget", "2KB"), "no partition fits the memory budget of 2,000 bytes", "give the device at least",
         ((lambda d: _train_api(d, memory_budget="2KB"), sagann.BudgetTooSmall),)),
    Case("budget-unreadable", None, (*TRAIN, "--memory-budget", "lots"), "cannot read memory size 'lots'", "'64MB'",
         ((lambda d: sagann.CpuDevice("lots"), ValueError),)),
    Case("unknown-model", None, (*TRAIN, "--model", "gcnn"), "unknown model 'gcnn'", f"known models: {', '.join(MODELS)}",
         ((lambda d: _train_api(d, model="gcnn"), ValueError),)),
    Case("unknown-order", None, (*TRAIN, "--order", "random"), "unknown order 'random'", "known: natural, profile",
         ((lambda d: sagann.ScheduleConfig(order="random"), ValueError),)),
    Case("unknown-device", None, (*TRAIN, "--device", "tpu"), "unknown device 'tpu'", "known devices: cpu, cuda",
         ((lambda d: _train_api(d, device="tpu"), ValueError),)),
    Case("unknown-reorder", None, _partition_argv("--reorder", "bfs"), "unknown reorder 'bfs'", "known: none, degree, rcm, metis",
         ((lambda d: PartitionConfig(reorder="bfs"), ValueError),)),
    Case("unknown-option", None, (*TRAIN, "--epohcs", "3"), "unrecognized arguments: --epohcs 3", "(did you mean --epochs?); known options: --checkpoint,"),
    Case("host-memory-unreadable", None, _partition_argv("--host-memory", "2 potatoes"), "cannot read memory size '2 potatoes'", "'64MB'",
         ((lambda d: PartitionConfig(host_memory="2 potatoes"), ValueError),)),
    Case("bad-chunks", None, _partition_argv("--chunks", "-2"), "--chunks must be an int >= 1 or 'auto', got '-2'", "'auto'",
         ((lambda d: PartitionConfig(num_chunks=-2), ValueError), (lambda d: sagann.ChunkedGraph(np.load(d / "e.npy"), N, num_chunks=-2), ValueError))),
]

# damage to a dataset directory: `sagann verify` and `sagann train` both refuse it
DAMAGE = [
    ("missing-file", lambda ds: (ds / "dst_ptr.npy").unlink(), "dst_ptr.npy is missing", "re-save it"),
    ("extra-file", lambda ds: np.save(ds / "extra.npy", np.zeros(2)), "extra.npy is not listed", "remove the unexpected file"),
    ("truncated-file", lambda ds: os.truncate(ds / "edge_ids.npy", 100), "truncated or modified", "re-save the dataset"),
    ("flipped-byte", _flip_byte, "sha256 mismatch", "re-save the dataset or restore it from a backup"),
    ("newer-format", lambda ds: _edit_manifest(ds, lambda m: m.update(format_version=99)), "format_version 99 was written by a newer sagann", "upgrade sagann"),
    ("manifest-outside-dir", _point_outside, "lists file '../labels.npy', which is not a plain file name inside the dataset directory", "re-save the dataset"),
    ("no-manifest", lambda ds: (ds / "manifest.json").unlink(), "manifest.json is missing", "re-run sagann partition"),
    ("not-a-dataset", lambda ds: shutil.rmtree(ds), "does not exist", "check the path"),
]
for name, damage, problem, fix in DAMAGE:
    for argv in (VERIFY, TRAIN):
        CASES.append(Case(f"{argv[0]}-{name}", lambda d, f=damage: f(d / "ds"), argv, problem, fix, ((lambda d: load_dataset(d / "ds"), DatasetError),)))

if not torch.cuda.is_available():
    CASES.append(Case("cuda-without-gpu", None, (*TRAIN, "--device", "cuda"), "torch sees no CUDA GPU", "use --device cpu", ((lambda d: _train_api(d, device="cuda"), ValueError),)))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_refuses_in_one_line_and_writes_nothing(work, capsys, case):
    if case.damage is not None:
        case.damage(work)
    before = _snapshot(work.parent)
    capsys.readouterr()
    try:
        rc = main([a.format(d=work) for a in case.argv])
    except SystemExit as exit_:  # argparse errors exit through SystemExit
        rc = exit_.code
    out, err = capsys.readouterr()
    assert rc not in (0, None), f"exit code {rc}"
    assert "Traceback" not in out + err
    assert out == "", out
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith(f"sagann {case.argv[0]}"), err
    assert case.problem in err, f"problem {case.problem!r} not named in: {err}"
    assert case.fix in err, f"fix {case.fix!r} not named in: {err}"
    assert _snapshot(work.parent) == before, "the failed command wrote something"


API_CASES = [(c.id, k, fn, exc) for c in CASES for k, (fn, exc) in enumerate(c.api)]


@pytest.mark.parametrize("case_id, k, call, exc", API_CASES, ids=[f"{c[0]}-{c[1]}" for c in API_CASES])
def test_api_raises_a_clear_exception(work, case_id, k, call, exc):
    case = next(c for c in CASES if c.id == case_id)
    if case.damage is not None:
        case.damage(work)
    before = _snapshot(work.parent)
    with pytest.raises(exc) as info:
        call(work)
    message = str(info.value)
    assert message and "\n" not in message, f"not one line: {message!r}"
    assert _snapshot(work.parent) == before, "the failed call wrote something"


def test_matrix_covers_every_class_of_bad_input():
    """At least 15 distinct classes of bad input, each through the CLI and (nearly all) the API."""
    classes = {c.id.removeprefix("verify-").removeprefix("train-") for c in CASES}
    assert len(classes) >= 15, sorted(classes)
    without_api = sorted(c.id for c in CASES if not c.api)
    assert without_api == ["mask-spec", "unknown-option"], without_api  # CLI syntax only


# ---------------------------------------------------------------- the real process


def test_the_real_command_line(work):
    """Two rows through a real `python -m sagann.cli` process: exit code, one line, no traceback."""
    _flip_byte(work / "ds")
    env = {**os.environ, "PYTHONPATH": str(Path(sagann.__file__).parents[1])}  # this checkout's sagann
    for argv, code, problem in ((("verify", str(work / "ds")), 1, "sha256 mismatch"), (("train", str(work / "ds"), "--epohcs", "3"), 2, "did you mean --epochs?")):
        r = subprocess.run([sys.executable, "-m", "sagann.cli", *argv], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == code and r.stdout == "" and "Traceback" not in r.stderr
        assert r.stderr.count("\n") == 1 and problem in r.stderr, r.stderr


# ---------------------------------------------------------------- valid corner cases


@pytest.mark.parametrize("n", [6, 0], ids=["no-edges", "no-vertices"])
def test_graphs_without_edges_or_vertices_work_end_to_end(tmp_path, capsys, n):
    """partition -> verify -> train through the CLI, and layers' forward + backward through the API."""
    np.save(tmp_path / "e.npy", np.zeros((2, 0), np.int64))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((n, 3)).astype(np.float32))
    np.save(tmp_path / "y.npy", np.arange(n) % 2)
    masks = []
    for m in SPLITS:
        np.save(tmp_path / f"{m}.npy", np.ones(n, bool))
        masks += ["--mask", f"{m}={tmp_path / m}.npy"]
    ds = str(tmp_path / "ds")
    assert main(["partition", str(tmp_path / "e.npy"), ds, "--features", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"), *masks]) == 0
    assert main(["verify", ds]) == 0
    capsys.readouterr()
    assert main(["train", ds, "--epochs", "2", "--json", "--memory-budget", "20KB", "--hidden", "4", "--checkpoint", str(tmp_path / "ck")]) == 0
    r = json.loads(capsys.readouterr().out)  # strict JSON: an undefined loss is null, not NaN
    assert r["num_vertices"] == n and r["num_edges"] == 0 and len(r["losses"]) == 2
    if n:
        assert all(isinstance(v, float) for v in r["losses"]) and r["accuracy"] is not None
    else:
        assert r["losses"] == [None, None] and r["accuracy"] is None  # nothing to measure
    assert (tmp_path / "ck" / "checkpoint.pt").exists()

    g = sagann.ChunkedGraph(np.zeros((2, 0), dtype=np.int64), n, device=sagann.CpuDevice("20KB"))
    x = torch.randn(n, 3, requires_grad=True)
    for layer in (sagann.nn.SAGEConv(3, 2), sagann.nn.GCNConv(3, 2), sagann.nn.GATConv(3, 2, heads=2), sagann.nn.SAGEConv(3, 2, aggr="max")):
        out = layer(g, x)
        out.sum().backward()
        assert out.shape[0] == n and x.grad is not None
    assert g.device.current_bytes == 0
