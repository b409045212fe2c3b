"""Files that appear whole or not at all: a save writes into a temp directory and renames it into place.

Everything goes into ``.<name>.tmp-<pid>-<random>`` next to the target; every
file is fsynced and the directory renamed last, so a crashed save never
leaves a loadable dataset, and the next save to the same path removes the
temp directories of dead processes. An existing target is renamed aside only
once the new directory is complete, then removed (restored if the final
rename fails). Arrays are streamed into ``.npy`` files in blocks, hashed
with sha256 on the way.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import psutil

from sagann.chunks.layout import MANIFEST

__all__ = [
    "BLOCK_BYTES",
    "FAULT_ENV",
    "Spool",
    "check_fault",
    "check_target",
    "clean_stale",
    "fsync_dir",
    "make_temp_dir",
    "sha256",
    "swap_into_place",
    "write_manifest",
    "write_npy",
]

BLOCK_BYTES = 1 << 24  # bytes per block when scanning, converting and writing rows
_HASH_BLOCK = 1 << 22  # 4 MiB
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>[0-9]+)-[0-9a-f]+$")


FAULT_ENV = "SAGANN_FAULT_ENOSPC"  # test hook: "WHERE:N" fails the N-th write to WHERE (1-based) with ENOSPC
_FAULT_COUNTS: dict[str, int] = {}


def check_fault(where: str) -> None:
    """Raise ``OSError(ENOSPC)`` here when the environment asks for a full disk at this write (a test hook).

    ``SAGANN_FAULT_ENOSPC=WHERE:N`` makes the N-th write to ``WHERE``
    (``dataset``: a dataset file; ``spill``: a spill file's reservation;
    ``checkpoint``: a checkpoint file) fail as a full disk would, so fault
    tests run the real code path in a real process without a small disk.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != where:
        return
    _FAULT_COUNTS[where] = _FAULT_COUNTS.get(where, 0) + 1
    if _FAULT_COUNTS[where] >= int(nth or 1):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + f" (injected by {FAULT_ENV}={spec})")


class _HashingWriter:
    """File wrapper that hashes and counts every byte written."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def write(self, data) -> int:
        check_fault("dataset")
        mv = memoryview(data).cast("B")
        self.sha.update(mv)
        self._f.write(mv)
        self.nbytes += len(mv)
        return len(mv)


def write_npy(folder: Path, name: str, dtype, shape: tuple, pieces: Iterable[np.ndarray]) -> dict:
    """Stream ``pieces`` (C order) into ``folder/name`` as one .npy; fsync; return its manifest entry."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    with open(folder / name, "wb") as raw:
        out = _HashingWriter(raw)
        np.lib.format.write_array_header_1_0(out, header)
        data_start = out.nbytes
        for piece in pieces:
            piece = np.ascontiguousarray(piece, dtype=dtype)
            out.write(piece.reshape(-1).view(np.uint8))
        raw.flush()
        os.fsync(raw.fileno())
    expected = data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if out.nbytes != expected:  # a bug in the caller, not in the user's data
        raise RuntimeError(f"wrote {out.nbytes} bytes to {name}, expected {expected}")
    return {"sha256": out.sha.hexdigest(), "shape": list(shape), "dtype": dtype.name, "nbytes": out.nbytes}


class Spool:
    """Values of one dtype appended to a scratch file, read back in blocks of ~16 MiB."""

    def __init__(self, path: Path, dtype):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._f = open(path, "wb")

    def write(self, piece: np.ndarray) -> None:
        check_fault("dataset")
        piece = np.ascontiguousarray(piece, dtype=self.dtype).reshape(-1)
        self._f.write(piece.view(np.uint8))
        self.count += int(piece.shape[0])

    def blocks(self) -> Iterator[np.ndarray]:
        self._f.close()
        step = max(1, BLOCK_BYTES // self.dtype.itemsize)
        with open(self.path, "rb") as f:
            for start in range(0, self.count, step):
                want = min(step, self.count - start)
                block = np.fromfile(f, dtype=self.dtype, count=want)
                if block.shape[0] != want:
                    raise RuntimeError(f"scratch file {self.path} is shorter than what was written to it")
                yield block

    def close(self) -> None:
        self._f.close()

    def remove(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


def write_manifest(folder: Path, manifest: dict) -> None:
    with open(folder / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_temp_dir(target: Path) -> Path:
    """Create the empty ``.<name>.tmp-<pid>-<random>`` directory next to ``target``."""
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def swap_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` to ``target``; an old ``target`` goes only after."""
    if not (target.exists() or target.is_symlink()):
        os.rename(tmp, target)
    else:
        old = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old, target)  # put the previous dataset back
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(target.parent)


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse a ``target`` that is not a dataset directory we may create or replace."""
    if not target.name or target.name in (".", ".."):
        raise ValueError(f"dataset path {str(target)!r} has no directory name; pass a path such as 'data/mygraph'")
    if not (target.exists() or target.is_symlink()):
        return
    if not overwrite:
        raise ValueError(f"{target} already exists; pass overwrite=True to replace it or choose another path")
    if target.is_symlink() or not target.is_dir():
        raise ValueError(f"{target} exists and is not a directory; refusing to replace it, remove it or choose another path")
    if any(target.iterdir()) and not (target / MANIFEST).is_file():
        raise ValueError(f"{target} is a non-empty directory without {MANIFEST} (not a sagann dataset); refusing to replace it, choose another path")


def _pid_alive(pid: int) -> bool:
    """True unless ``pid`` is gone or a zombie (a killed child not yet reaped)."""
    if pid == os.getpid():
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # access denied: someone else's live process
        return True


def clean_stale(target: Path) -> None:
    """Tidy what killed saves to ``target`` left behind (their directory names hold their pid).

    Temp directories of dead processes are removed. A dataset a dead process
    had set aside (``.old-``, mid-swap) is renamed back if ``target`` is
    gone, else removed.
    """
    stale = []
    for p in target.parent.iterdir():
        m = _LEFTOVER.match(p.name)
        if m and m["name"] == target.name and p.is_dir() and not p.is_symlink() and not _pid_alive(int(m["pid"])):
            stale.append((m["kind"], p))
    for kind, p in sorted(stale):  # "old" before "tmp"
        if kind == "old" and not (target.exists() or target.is_symlink()) and (p / MANIFEST).is_file():
            os.rename(p, target)
        else:
            shutil.rmtree(p, ignore_errors=True)


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    buf = bytearray(_HASH_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            h.update(view[:k])
    return h.hexdigest()

