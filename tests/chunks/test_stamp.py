"""The verified stamp: an unchanged dataset is not hashed again; a changed file is, and a corrupt one is caught."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from sagann.chunks import partition_graph, save_dataset
from sagann.chunks import reader
from sagann.chunks.dataset import DatasetError
from sagann.chunks.stamp import STAMP, stamp_matches, verify_once, write_stamp


def _aged(path, seconds=60):
    """Move every file's mtime into the past, as for a dataset written a while ago."""
    t = time.time() - seconds
    for p in path.iterdir():
        os.utime(p, (t, t))


@pytest.fixture
def ds(tmp_path):
    rng = np.random.default_rng(0)
    path = save_dataset(tmp_path / "ds", partition_graph(rng.integers(0, 40, (2, 300)), 40, 2), x=rng.standard_normal((40, 3)).astype(np.float32))
    _aged(path)
    return path


@pytest.fixture
def hashes(monkeypatch):
    """Counts the files hashed."""
    seen = []
    real = reader.sha256

    def counting(p):
        seen.append(p)
        return real(p)

    monkeypatch.setattr(reader, "sha256", counting)
    return seen


def test_unchanged_dataset_is_not_hashed_again(ds, hashes):
    assert verify_once(ds) == "sha256" and hashes
    assert write_stamp(ds) and (ds / STAMP).is_file()
    hashes.clear()
    assert verify_once(ds) == "stamp" and hashes == []


def test_a_rewritten_file_is_hashed_and_corruption_caught(ds, hashes):
    verify_once(ds)
    write_stamp(ds)
    p = ds / "src_idx.npy"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x40
    p.write_bytes(bytes(data))  # same size, new mtime
    assert not stamp_matches(ds)
    with pytest.raises(DatasetError, match="sha256 mismatch"):
        verify_once(ds)


def test_no_stamp_for_files_written_moments_ago(tmp_path):
    rng = np.random.default_rng(0)
    path = save_dataset(tmp_path / "fresh", partition_graph(rng.integers(0, 40, (2, 300)), 40, 2))
    verify_once(path)
    assert not write_stamp(path) and not stamp_matches(path)  # a change in the same clock tick would keep the mtime


def test_a_read_only_directory_keeps_no_stamp(ds):
    os.chmod(ds, 0o555)
    try:
        if os.access(ds, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        assert not write_stamp(ds)
    finally:
        os.chmod(ds, 0o755)


def test_the_stamp_is_not_a_dataset_file(ds):
    verify_once(ds)
    write_stamp(ds)
    reader.verify_dataset(ds)  # a full check accepts the directory with its stamp
