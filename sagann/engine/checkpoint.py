"""Training checkpoints: atomic, checksummed, and loaded without pickle.

A checkpoint is one ``torch.save`` file holding plain containers and tensors
only (so ``torch.load(..., weights_only=True)`` reads it): the model and
optimizer state, the number of finished epochs, the loss history, every RNG
state the training draws from (the GPUs' too, where CUDA is in use), a fingerprint of the run, and a sha256 over
all of that.

Invariant: the file at :attr:`Checkpointer.path` is always a complete
checkpoint or absent. It is written to a temporary file in the same
directory, fsynced, moved over the old one with ``os.replace`` (atomic on
POSIX), and the directory is fsynced. A process killed at any moment leaves
the previous checkpoint (plus, at worst, a stale temporary that the next run
removes); a file damaged afterwards fails the checksum.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sagann.chunks.files import check_fault

__all__ = ["CHECKPOINT_NAME", "CheckpointError", "Checkpointer", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]

CHECKPOINT_NAME = "checkpoint.pt"
_FORMAT = "sagann-checkpoint"
_VERSION = 1
_REQUIRED = {"epoch": int, "model": dict, "optimizer": dict, "history": list, "rng": dict, "fingerprint": dict}
_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]+$")

Fingerprint = dict[str, "str | int | float | bool | None"]


class CheckpointError(ValueError):
    """A checkpoint is corrupt, truncated, from a newer sagann, or from a different run."""


# ------------------------------------------------------------------ RNG state
def rng_state() -> dict:
    """Torch's CPU and CUDA generators, numpy's global generator and Python's ``random``, as tensors and plain values.

    ``"cuda"`` (one state per GPU) is there where torch can use CUDA: dropout
    on a GPU draws from those generators, so a resumed GPU run needs them to
    match an uninterrupted one.
    """
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = [t.clone() for t in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured.

    CUDA states are restored where torch can use CUDA, one per GPU present
    (a checkpoint of another machine restores the GPUs both have); a
    checkpoint written without CUDA leaves the CUDA generators alone.
    """
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        for index, s in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, index)
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


# ------------------------------------------------------------------ checksum
def _digest(obj: Any) -> str:
    """sha256 of a nest of dicts, lists/tuples, tensors and scalars, independent of pickling."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(o.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            h.update(b"{")
            for k in sorted(o, key=repr):
                walk(k)
                walk(o[k])
            h.update(b"}")
        elif isinstance(o, (list, tuple)):
            h.update(b"[")
            for v in o:
                walk(v)
            h.update(b"]")
        else:
            h.update(f"{type(o).__name__}:{o!r};".encode())

    walk(obj)
    return h.hexdigest()


# ------------------------------------------------------------------ files
def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` (keys ``epoch, model, optimizer, history, rng, fingerprint``) atomically to ``path``."""
    path = Path(path)
    missing = set(_REQUIRED) - set(state)
    if missing:
        raise ValueError(f"checkpoint state lacks {sorted(missing)}")
    payload = {"format": _FORMAT, "version": _VERSION, **{k: state[k] for k in _REQUIRED}}
    payload["sha256"] = _digest(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "wb") as f:
            check_fault("checkpoint")
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_checkpoint(path) -> dict:
    """Read and validate a checkpoint; raises :class:`CheckpointError` with a one-line reason."""
    path = Path(path)
    fix = f"delete {path} to start over (or restore a good copy)"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # zip, unpickling and decoding errors of a damaged file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise CheckpointError(f"{path} is corrupt or truncated and cannot be read ({type(exc).__name__}: {reason}); {fix}") from exc
    if not isinstance(obj, dict) or obj.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is not a sagann checkpoint; {fix}")
    version = obj.get("version")
    if not isinstance(version, int) or version > _VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version!r} but this sagann reads up to {_VERSION}; upgrade sagann or {fix}")
    for key, kind in _REQUIRED.items():
        if not isinstance(obj.get(key), kind) or isinstance(obj.get(key), bool):
            raise CheckpointError(f"{path} has no valid {key!r} entry; {fix}")
    stored = obj.pop("sha256", None)
    if stored != _digest(obj):
        raise CheckpointError(f"{path} fails its checksum: the file is corrupt; {fix}")
    if obj["epoch"] != len(obj["history"]):
        raise CheckpointError(f"{path} says {obj['epoch']} epochs but holds {len(obj['history'])} history entries; {fix}")
    return obj


def _describe_mismatch(found: Fingerprint, expected: Fingerprint) -> str:
    keys = sorted(set(found) | set(expected))
    diffs = [f"{k} {found.get(k)!r} there vs {expected.get(k)!r} here" for k in keys if found.get(k) != expected.get(k)]
    return ", ".join(diffs[:4]) + (f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else "")


class Checkpointer:
    """The checkpoint of one training run in ``directory``.

    Args:
        directory: holds ``checkpoint.pt``; created at the first save, so a
            run that fails before finishing an epoch leaves nothing behind.
        fingerprint: plain values naming the run (dataset, model, optimizer
            settings, seed); a checkpoint with another fingerprint is refused.
    """

    def __init__(self, directory, fingerprint: Fingerprint):
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint path {self.directory} is a file; pass a directory")
        self.path = self.directory / CHECKPOINT_NAME
        self.fingerprint = dict(fingerprint)
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """Temporaries of writers that died (kill -9 mid-write); a live writer's are left alone."""
        if not self.directory.is_dir():
            return
        for p in self.directory.iterdir():
            m = _TMP.match(p.name)
            if m and m["name"] == CHECKPOINT_NAME and not _alive(int(m["pid"])):
                p.unlink(missing_ok=True)

    def load(self) -> dict | None:
        """The validated checkpoint of this run, or None when there is none yet."""
        if not self.path.exists():
            return None
        state = load_checkpoint(self.path)
        if state["fingerprint"] != self.fingerprint:
            raise CheckpointError(
                f"{self.path} belongs to a different run ({_describe_mismatch(state['fingerprint'], self.fingerprint)}); "
                f"use another checkpoint directory or delete {self.path} to start over"
            )
        return state

    def restore(self, state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """Load model, optimizer and RNG state from ``state``; returns the number of finished epochs."""
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            reason = str(exc).strip().splitlines()[0][:160]
            raise CheckpointError(f"{self.path} does not fit this model/optimizer ({reason}); use another checkpoint directory") from exc
        set_rng_state(state["rng"])
        return state["epoch"]

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int, history: list[dict]) -> None:
        """Checkpoint after ``epoch`` finished epochs; call it last in the epoch so the RNG state is the next epoch's."""
        save_checkpoint(
            self.path,
            {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "history": history,
                "rng": rng_state(),
                "fingerprint": self.fingerprint,
            },
        )


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers: we are not writing now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
