"""Inputs in other formats staged as ``.npy`` files for :func:`~sagann.chunks.partition_edge_list`.

Readers of other layouts (OGB's CSV files, a saved PyG ``Data``) write the
edge list, features, labels and masks as plain ``.npy`` files in a staging
directory next to the output (the same disk, removed afterwards), then run
the out-of-core partitioner on them: one partitioner, whatever the input.
An :class:`NpyStream` writes an array of known shape block by block, so no
reader ever holds more than one block.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["NpyStream", "staging_dir", "write_npy"]


@contextlib.contextmanager
def staging_dir(out) -> Iterator[Path]:
    """A fresh directory beside ``out`` (``.<name>.staging-*``), removed when the block ends, however it ends."""
    out = Path(os.path.abspath(os.fspath(out)))
    out.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class NpyStream:
    """A ``.npy`` of a shape known in advance, written in row blocks (:meth:`write`), checked complete at :meth:`close`."""

    def __init__(self, path, shape: tuple[int, ...], dtype):
        self.path, self.shape, self.dtype = Path(path), tuple(int(s) for s in shape), np.dtype(dtype)
        self.rows = 0
        self._f = open(self.path, "wb")
        np.lib.format.write_array_header_1_0(self._f, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape})

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:] or self.rows + block.shape[0] > self.shape[0]:
            raise ValueError(f"{self.path.name}: a block of shape {list(block.shape)} does not fit rows {self.rows}.. of {list(self.shape)}")
        block.tofile(self._f)
        self.rows += block.shape[0]

    def close(self) -> Path:
        self._f.close()
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.path.name}: {self.rows} rows written of {self.shape[0]}")
        return self.path

    def abort(self) -> None:
        """Close without the completeness check (the staging directory goes anyway)."""
        self._f.close()

    def __enter__(self) -> "NpyStream":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_npy(path, array: np.ndarray, block_rows: int = 1 << 20) -> Path:
    """``array`` (a numpy array or memory map) as a ``.npy`` at ``path``, copied ``block_rows`` rows at a time."""
    with NpyStream(path, array.shape, array.dtype) as out:
        for r in range(0, array.shape[0], max(1, block_rows)):
            out.write(array[r : r + block_rows])
    return Path(path)
