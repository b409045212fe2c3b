"""Edge lists read in blocks: ``.npy`` int arrays ([2, E] or [E, 2]) and "src dst" text.

Nothing here holds more than one block: a ``.npy`` is memory-mapped afresh for
each block and unmapped after it (so the pages read do not pile up in the
process's RSS), and text is parsed a few MiB at a time. Errors are
:class:`EdgeListError`, one line naming the file, the edge or line, and the fix.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

__all__ = ["EdgeBlock", "EdgeList", "EdgeListError", "NpyEdgeList", "TextEdgeList", "open_edge_list", "open_vertex_array", "read_rows"]

_NPY_MAGIC = b"\x93NUMPY"
_INT64_MAX = np.iinfo(np.int64).max
_TOKEN = re.compile(rb"[+-]?[0-9]+")
MIN_TEXT_LINE = 4  # bytes of the shortest edge line, "0 0\n": bounds the edges in a text block


class EdgeListError(ValueError):
    """An edge list (or a vertex array) that cannot be read, or that holds an invalid id."""


@dataclass(frozen=True)
class EdgeBlock:
    """Consecutive edges of the list: ``src[k], dst[k]`` is edge ``start + k``.

    ``locate(k)`` names edge ``start + k`` for error messages ("edge 7", "line 12").
    """

    start: int
    src: np.ndarray  # int64 [k]
    dst: np.ndarray  # int64 [k]
    locate: Callable[[int], str]

    def __len__(self) -> int:
        return int(self.src.shape[0])


class EdgeList:
    """An edge list on disk, read block by block (see :func:`open_edge_list`)."""

    path: Path
    num_edges: int | None  # None for text until one full pass has counted the lines

    def blocks(self, block_edges: int) -> Iterator[EdgeBlock]:
        raise NotImplementedError

    def bytes_per_edge(self) -> int:
        """Extra bytes a block holds per edge while it is read (raw data before conversion)."""
        return 16


def _fail(path: Path, what: str) -> EdgeListError:
    return EdgeListError(f"{path}: {what}".replace("\n", " "))


def _load_npy(path: Path) -> np.ndarray:
    """Memory-map a .npy (header checks only; never unpickles)."""
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise _fail(path, "no such file; check the path") from None
    except IsADirectoryError:
        raise _fail(path, "is a directory; pass a .npy file") from None
    except (ValueError, OSError, EOFError) as err:
        raise _fail(path, f"is not a readable .npy array ({err}); write it with np.save(path, array)") from None
    if not isinstance(a, np.ndarray):  # an .npz archive
        raise _fail(path, "is an .npz archive; save the single array with np.save(path, array)")
    return a


class NpyEdgeList(EdgeList):
    """A ``.npy`` int array of shape [2, E] (row 0 = sources) or [E, 2] ([2, 2] reads as [2, E])."""

    def __init__(self, path):
        self.path = Path(path)
        a = _load_npy(self.path)
        shape, dtype = a.shape, a.dtype
        del a
        if len(shape) != 2 or 2 not in shape:
            raise _fail(self.path, f"an edge list must have shape [2, E] or [E, 2], got {list(shape)}; save it with np.save(path, edge_index)")
        if not np.issubdtype(dtype, np.integer):
            raise _fail(self.path, f"holds {dtype} values but vertex ids must be integers; convert with edge_index.astype(np.int64) after checking they are whole numbers")
        self.transposed = shape[0] != 2
        self.num_edges = int(shape[0] if self.transposed else shape[1])
        self.dtype = dtype

    def where(self, edge: int) -> str:
        return f"edge {edge} ({'row' if self.transposed else 'column'} {edge} of the {'[E, 2]' if self.transposed else '[2, E]'} array)"

    def blocks(self, block_edges: int) -> Iterator[EdgeBlock]:
        block_edges = max(1, int(block_edges))
        for a in range(0, self.num_edges, block_edges):
            b = min(self.num_edges, a + block_edges)
            mm = _load_npy(self.path)  # mapped per block: unmapping drops the pages read from our RSS
            part = mm[a:b].T if self.transposed else mm[:, a:b]
            if self.dtype == np.uint64 and b > a and int(part.max()) > _INT64_MAX:
                k = int(np.argmax(part.max(axis=0)))
                raise _fail(self.path, f"{self.where(a + k)} has vertex id {int(part.max())}, beyond int64; ids must lie in [0, N)")
            src = np.array(part[0], dtype=np.int64)
            dst = np.array(part[1], dtype=np.int64)
            del part, mm
            yield EdgeBlock(a, src, dst, lambda k, a=a: self.where(a + k))


class TextEdgeList(EdgeList):
    """Text with one "src dst" edge per line (whitespace separated); ``#`` starts a comment."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise _fail(self.path, "no such file; check the path")
        if self.path.is_dir():
            raise _fail(self.path, "is a directory; pass an edge-list file")
        self.num_edges = None

    def bytes_per_edge(self) -> int:
        return 16 + 2 * MIN_TEXT_LINE  # raw text and the parser's buffer

    def blocks(self, block_edges: int) -> Iterator[EdgeBlock]:
        block_bytes = max(64, int(block_edges) * MIN_TEXT_LINE)
        start, line = 0, 1  # edge position and line number of the block's first line
        with open(self.path, "rb") as f:
            while True:
                data = f.read(block_bytes)
                if not data:
                    break
                if not data.endswith(b"\n"):
                    data += f.readline()  # finish the last line
                pairs = self._parse(data, line)
                yield EdgeBlock(start, np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1]), lambda k, d=data, l0=line: f"line {_data_line(d, l0, k)}")
                start += pairs.shape[0]
                line += data.count(b"\n")
        self.num_edges = start

    def _parse(self, data: bytes, first_line: int) -> np.ndarray:
        """[k, 2] int64 of a block of whole lines; a bad line gets a precise message."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "input contained no data" for comment-only blocks
                pairs = np.loadtxt(io.BytesIO(data), dtype=np.int64, comments="#", ndmin=2)
        except (ValueError, OverflowError):
            pairs = None
        if pairs is not None and pairs.size == 0:
            return np.zeros((0, 2), dtype=np.int64)
        if pairs is not None and pairs.shape[1] == 2:
            return pairs
        for k, raw in enumerate(data.split(b"\n")):  # slow path: find the first bad line
            tokens = raw.split(b"#", 1)[0].split()
            if not tokens:
                continue
            where = f"line {first_line + k}"
            if len(tokens) != 2:
                raise _fail(self.path, f"{where} has {len(tokens)} fields; each line must be two integer vertex ids 'src dst' (comments start with #)")
            for t in tokens:
                if not _TOKEN.fullmatch(t):
                    raise _fail(self.path, f"{where}: {t.decode('utf-8', 'replace')!r} is not an integer vertex id; write ids as whole numbers such as 17")
                if abs(int(t)) > _INT64_MAX:
                    raise _fail(self.path, f"{where}: vertex id {t.decode()} is beyond int64; ids must lie in [0, N)")
        last = first_line + data.count(b"\n")
        raise _fail(self.path, f"lines {first_line}..{last} could not be read as 'src dst' integer pairs")


def _data_line(data: bytes, first_line: int, row: int) -> int:
    """Line number of the ``row``-th edge line of a text block (skipping blanks and comments)."""
    seen = -1
    for k, raw in enumerate(data.split(b"\n")):
        if raw.split(b"#", 1)[0].strip():
            seen += 1
            if seen == row:
                return first_line + k
    return first_line


def open_edge_list(path) -> EdgeList:
    """An :class:`EdgeList` for ``path``: ``.npy`` by its magic bytes, else text."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
    except FileNotFoundError:
        raise _fail(path, "no such file; check the path") from None
    except IsADirectoryError:
        raise _fail(path, "is a directory; pass an edge-list file (.npy or text)") from None
    if magic == _NPY_MAGIC:
        return NpyEdgeList(path)
    if path.suffix == ".npz" or magic.startswith(b"PK"):
        raise _fail(path, "is an .npz archive (or another zip file); save the single edge array with np.save(path, edge_index)")
    if path.suffix == ".npy":
        raise _fail(path, "is named .npy but is not a .npy array; write it with np.save(path, edge_index)")
    return TextEdgeList(path)


def open_vertex_array(path, what: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a per-vertex ``.npy`` (features, labels), checking only its header."""
    a = _load_npy(Path(path))
    shape, dtype = tuple(int(s) for s in a.shape), a.dtype
    del a
    if dtype.fields is not None or dtype.hasobject:
        raise _fail(Path(path), f"{what} must be a plain numeric array, got dtype {dtype}")
    return shape, dtype


def read_rows(path, rows: np.ndarray | slice) -> np.ndarray:
    """A copy of ``rows`` of a ``.npy`` (a slice or an index array), mapping the file only meanwhile."""
    mm = _load_npy(Path(path))
    out = np.array(mm[rows])
    del mm
    return out
