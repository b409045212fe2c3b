"""Tests for the file helpers under a dataset save."""
from __future__ import annotations

import hashlib

import numpy as np

from sagann.chunks import files


def test_hash_streams_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_HASH_BLOCK", 1000)
    data = np.random.default_rng(0).bytes(12345)
    (tmp_path / "f").write_bytes(data)
    assert files.sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
