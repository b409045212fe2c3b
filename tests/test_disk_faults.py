"""Disk faults in real `sagann` processes: a full disk is one error line, never a SIGBUS; nothing half-written is used.

A full disk is a real size-limited tmpfs where this machine lets an
unprivileged user mount one (``unshare -rm``), else ``SAGANN_FAULT_ENOSPC``,
which makes the N-th write of a kind fail with ENOSPC at the write call.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sagann.chunks import partition_graph, save_dataset
from sagann.chunks.files import FAULT_ENV
from sagann.chunks.synthetic import sbm

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _sagann(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sagann.cli", *map(str, args)], capture_output=True, text=True, env=env or _env(), timeout=timeout, cwd=ROOT)


_FORECAST = ("plan: ", "warning: a ")  # what train says of its plan before it starts


def _error_lines(stderr: str) -> list[str]:
    """stderr less the forecast and progress lines: a traceback's first line counts as an error line."""
    return [line for line in stderr.splitlines()
            if line.strip() and "Warning" not in line and not line.startswith(("  ", *_FORECAST)) and " chunks (" not in line]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = sbm(3000, 4, 8.0, 16, seed=1)
    path = tmp_path_factory.mktemp("data") / "sbm"
    save_dataset(path, partition_graph(d.edge_index, d.num_vertices, 2), x=d.x, y=d.y, masks={"train": d.train_mask, "val": d.val_mask, "test": d.test_mask})
    return path


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt 2>/dev/null || mount -t tmpfs -o size=1m tmpfs /tmp"], capture_output=True)
    return r.returncode == 0


TRAIN = ["--epochs", "3", "--hidden", "16", "--memory-budget", "150KB", "--order", "natural", "--json"]


def _train_on_tmpfs(dataset, tmp_path, size: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``sagann train --host-memory 1KB`` spilling into a fresh tmpfs of ``size`` (a mount namespace of its own)."""
    small = tmp_path / "small"
    small.mkdir()
    cmd = [sys.executable, "-m", "sagann.cli", "train", str(dataset), *TRAIN, "--host-memory", "1KB", "--spill-dir", str(small)]
    script = f"mount -t tmpfs -o size={size} tmpfs {small} && exec " + " ".join(map(str, cmd))
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=_env(), timeout=300, cwd=ROOT), small


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="no unprivileged mount namespace here for a small tmpfs")
def test_spill_dir_on_a_full_tmpfs_is_one_error_line_not_sigbus(dataset, tmp_path):
    """Spill files larger than the disk: before space was reserved with posix_fallocate, this died of SIGBUS (exit 135)."""
    r, _ = _train_on_tmpfs(dataset, tmp_path, "400k")
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("sagann train: error: cannot create a") and "No space left on device" in lines[0], r.stderr
    assert "--spill-dir" in lines[0]


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="no unprivileged mount namespace here for a small tmpfs")
def test_spill_dir_too_small_for_the_plan_is_refused_up_front(dataset, tmp_path):
    """Features and logits beyond --host-memory (240 KB) cannot fit a 100 KB disk: refused before training, naming the flags."""
    r, small = _train_on_tmpfs(dataset, tmp_path, "100k")
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("sagann train: error: the run spills at least"), r.stderr
    words = lines[0].replace(str(small), "DIR")
    assert "--spill-dir" in words and "--host-memory" in words and "spill_dir" not in words and "host_memory" not in words, lines[0]
    assert not any(line.startswith("plan: ") for line in r.stderr.splitlines())  # refused before planning, let alone training


def test_spill_room_is_checked_in_python_terms(tmp_path):
    from sagann.scheduler.host import HostMemory

    HostMemory(None, tmp_path).check_disk_room(1 << 60, "everything")  # no budget: nothing spills, nothing to check
    HostMemory("1MB", tmp_path).check_disk_room(1 << 20, "a layer")  # fits
    with pytest.raises(OSError, match=r"spills at least .* spill_dir .* host_memory"):
        HostMemory("1MB", tmp_path / "not" / "yet").check_disk_room(1 << 60, "everything")  # made on first spill: its parent's disk


def test_injected_spill_enospc_is_one_error_line(dataset, tmp_path):
    r = _sagann("train", dataset, *TRAIN, "--host-memory", "1KB", "--spill-dir", tmp_path / "spill", env=_env(**{FAULT_ENV: "spill:5"}))
    assert r.returncode == 1, r.stderr
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "No space left on device" in lines[0] and "spill file" in lines[0], r.stderr


def test_dataset_disk_full_leaves_no_dataset_that_verifies(tmp_path):
    """ENOSPC while `sagann partition` writes: one line, exit 1, and nothing at OUT that `sagann verify` accepts."""
    import numpy as np

    rng = np.random.default_rng(0)
    edges = tmp_path / "edges.npy"
    np.save(edges, rng.integers(0, 5000, size=(2, 40_000)))
    out = tmp_path / "ds"
    r = _sagann("partition", edges, out, "--chunks", "2", env=_env(**{FAULT_ENV: "dataset:4"}))
    assert r.returncode == 1, r.stderr
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "No space left on device" in lines[0], r.stderr
    assert _sagann("verify", out).returncode == 1
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".ds")]  # no temp directory left either
    assert _sagann("partition", edges, out, "--chunks", "2").returncode == 0 and _sagann("verify", out).returncode == 0


def test_checkpoint_written_before_a_full_disk_resumes(dataset, tmp_path):
    ckpt = tmp_path / "ckpt"
    base = ["train", dataset, *TRAIN, "--host-memory", "1KB", "--spill-dir", tmp_path / "spill"]
    full = _sagann(*base)  # uninterrupted, for the losses
    assert full.returncode == 0, full.stderr
    losses = json.loads(full.stdout.strip().splitlines()[-1])["losses"]
    one, two = _count_spills(base, 1), _count_spills(base, 2)  # the first epoch spills more (features, partitions)
    r = _sagann(*base, "--checkpoint", ckpt, env=_env(**{FAULT_ENV: f"spill:{(one + two) // 2}"}))  # mid epoch 2
    assert r.returncode == 1 and "No space left on device" in r.stderr, r.stderr
    again = _sagann(*base, "--checkpoint", ckpt)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout.strip().splitlines()[-1])
    assert result["resumed_from_epoch"] == 1
    assert result["losses"] == losses


def test_full_disk_at_a_checkpoint_write_keeps_the_previous_one(dataset, tmp_path):
    ckpt = tmp_path / "ckpt"
    base = ["train", dataset, *TRAIN, "--checkpoint", ckpt]
    r = _sagann(*base, env=_env(**{FAULT_ENV: "checkpoint:2"}))  # epoch 1 saved, epoch 2's save fails
    assert r.returncode == 1, r.stderr
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "No space left on device" in lines[0], r.stderr
    assert [p.name for p in ckpt.iterdir()] == ["checkpoint.pt"]  # no temporary left behind
    again = _sagann(*base)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["resumed_from_epoch"] == 1


def _count_spills(base: list, epochs: int) -> int:
    """Spill files a run of ``epochs`` epochs creates (from its JSON)."""
    r = _sagann(*base, "--epochs", str(epochs))
    assert r.returncode == 0, r.stderr
    return int(json.loads(r.stdout.strip().splitlines()[-1])["spill_files"])


def test_sigterm_saves_a_checkpoint_and_exits_nonzero(dataset, tmp_path):
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "sagann.cli", "train", str(dataset), "--epochs", "400", "--hidden", "16", "--memory-budget", "150KB", "--checkpoint", str(ckpt), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    deadline = time.time() + 240
    while not (ckpt / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    time.sleep(0.3)  # into a later epoch
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, err[-2000:])
    lines = _error_lines(err)
    assert len(lines) == 1 and "SIGTERM" in lines[0] and str(ckpt) in lines[0], err
    done = int(lines[0].split("holds the ")[1].split()[0])
    assert done >= 1
    r = _sagann("train", dataset, "--epochs", str(done + 1), "--hidden", "16", "--memory-budget", "150KB", "--checkpoint", ckpt, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["resumed_from_epoch"] == done


def test_corrupted_spill_file_is_detected_not_read(tmp_path):
    """Overwrite a live spill file's first page through the kernel's view of the mapping; the next read must refuse it."""
    script = f"""
import ctypes, torch
from sagann.scheduler.host import HostMemory, SPILL_HEADER_BYTES, SpillCorrupted, stage, stage_rows
h = HostMemory(1, {str(tmp_path)!r})
t = h.empty((1000, 8))
t.copy_(torch.arange(8000.).view(1000, 8))
assert torch.equal(stage(t), torch.arange(8000.).view(1000, 8))
start = t.untyped_storage().data_ptr() - SPILL_HEADER_BYTES
for line in open('/proc/self/maps'):
    lo, hi = (int(v, 16) for v in line.split()[0].split('-'))
    if lo <= start < hi:
        path = '/proc/self/map_files/' + line.split()[0]
        break
try:
    f = open(path, 'r+b')
except OSError:
    f = None
if f is not None:
    with f:
        f.seek(start - lo)
        f.write(b'garbage!' * 8)
else:
    ctypes.memmove(start, b'garbage!' * 8, 64)
for read in (lambda: stage(t), lambda: stage_rows(t, torch.tensor([1, 2]))):
    try:
        read()
    except SpillCorrupted as exc:
        print('DETECTED', exc)
    else:
        print('READ AS DATA')
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("DETECTED") == 2, r.stdout + r.stderr
