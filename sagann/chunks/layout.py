"""The dataset format on disk: a directory of memory-mappable ``.npy`` files.

Layout of a dataset directory (format version 1)::

    manifest.json      written last; see below
    chunk_index.npy    int64 [S, 11], one row per sub-chunk (columns below)
    dst_ptr.npy        int32, the sub-chunks' dst_ptr arrays, concatenated
    dst_idx.npy        int32 [E]  -+
    src_idx.npy        int32 [E]   | concatenated per sub-chunk, in the
    src_perm.npy       int32 [E]   | same order: they share one offset
    edge_ids.npy       int64 [E]  -+
    src_rows.npy       int32, concatenated src_rows
    src_ptr.npy        int32, concatenated src_ptr
    in_degree.npy      int64 [N]
    features.npy       float32 | float16 [N, F]   (optional)
    labels.npy         int64 [N]                  (optional)
    mask_<name>.npy    bool [N]                   (optional, one per mask)
    edge_data.npy      float32 | float16 [E] or [E, k], in global edge order
    vertex_order.npy   int64 [N]: input id of each vertex (optional, after reordering)

Sub-chunks are stored in ``GraphPartition.sub_chunks()`` order (by (i, j),
then sub). The columns of ``chunk_index.npy`` are :data:`INDEX_COLUMNS`:
``i, j, sub, dst_offset`` identify the sub-chunk; ``nnz, num_dst, num_src``
are its sizes (stored explicitly); ``edge_start`` is its offset into the four
per-edge files, ``dst_ptr_start`` into dst_ptr.npy (``num_dst + 1``
entries), ``src_rows_start`` into src_rows.npy (``num_src`` entries) and
``src_ptr_start`` into src_ptr.npy (``num_src + 1`` entries). Offsets must
be the exclusive prefix sums of the sizes: the files hold no gaps.

``manifest.json`` holds ``format_version``, ``num_vertices``, ``num_edges``,
``num_chunks`` (P), ``bounds`` (P + 1 ints), ``sub_chunk_nnz``,
``chunk_index_columns``, ``files`` ({name: {sha256, shape, dtype, nbytes}}
where ``nbytes`` is the whole file's size), ``features`` / ``labels`` /
``edge_data`` (shape and dtype, or null; labels add ``num_classes``),
``masks`` (names), ``created_by`` and, optionally, ``vertex_order`` (shape,
dtype and the reordering ``method``, or null; absent in older datasets).
With a vertex order, dataset vertex k is input vertex ``vertex_order[k]``:
features and labels are stored in dataset order, edge ids stay the
positions in the input edge list.

Writing is :mod:`sagann.chunks.writer`, reading and checking
:mod:`sagann.chunks.reader`; both take the names below from here.
"""
from __future__ import annotations

import re

import numpy as np

__all__ = ["COLUMN", "EDGE_FILES", "FLOAT_DTYPES", "FORMAT_VERSION", "INDEX_COLUMNS", "MANIFEST", "MASK_NAME"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_COLUMNS = (
    "i",
    "j",
    "sub",
    "dst_offset",
    "nnz",
    "num_dst",
    "num_src",
    "edge_start",
    "dst_ptr_start",
    "src_rows_start",
    "src_ptr_start",
)
COLUMN = {name: k for k, name in enumerate(INDEX_COLUMNS)}  # column name -> its position in chunk_index.npy
# concatenated edge arrays: file dtype, offset column, size of one sub-chunk's piece
EDGE_FILES = {
    "dst_ptr": (np.int32, "dst_ptr_start", lambda c: c.num_dst + 1),
    "dst_idx": (np.int32, "edge_start", lambda c: c.nnz),
    "src_idx": (np.int32, "edge_start", lambda c: c.nnz),
    "src_rows": (np.int32, "src_rows_start", lambda c: c.num_src),
    "src_ptr": (np.int32, "src_ptr_start", lambda c: c.num_src + 1),
    "src_perm": (np.int32, "edge_start", lambda c: c.nnz),
    "edge_ids": (np.int64, "edge_start", lambda c: c.nnz),
}
FLOAT_DTYPES = ("float16", "float32")  # stored feature and edge-data dtypes
MASK_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # also a file name: mask_<name>.npy
