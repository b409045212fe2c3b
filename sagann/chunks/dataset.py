"""A partitioned graph on disk: a directory of memory-mappable ``.npy`` files.

The format is described in :mod:`sagann.chunks.layout`; :mod:`sagann.chunks.writer`
saves a dataset atomically (:class:`DatasetWriter`, :func:`save_dataset`) and
:mod:`sagann.chunks.reader` loads and checks one (:func:`load_dataset`,
:func:`verify_dataset`). This module gathers their public names.
"""
from __future__ import annotations

from sagann.chunks.layout import FORMAT_VERSION, INDEX_COLUMNS, MANIFEST
from sagann.chunks.reader import Dataset, DatasetError, load_dataset, verify_dataset
from sagann.chunks.writer import DatasetWriter, save_dataset

__all__ = [
    "FORMAT_VERSION",
    "INDEX_COLUMNS",
    "MANIFEST",
    "Dataset",
    "DatasetError",
    "DatasetWriter",
    "save_dataset",
    "load_dataset",
    "verify_dataset",
]
