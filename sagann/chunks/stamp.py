"""A verified stamp: skip re-hashing a dataset whose files have not changed since it was last verified.

Hashing every file of a large dataset before each training run costs
minutes. After a full verification, ``verified.json`` in the dataset
directory records each file's size and modification time (nanoseconds);
while they all still match, the next run trusts the earlier hashes. A file
rewritten in place changes its mtime, so it is hashed again. A file whose
mtime lies within :data:`RACY_SECONDS` of the stamp is not trusted (a write
in the same clock tick as the stamp would keep its mtime), as git does with
its index. A directory that cannot be written keeps no stamp and is hashed
every time.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from sagann.chunks.layout import MANIFEST
from sagann.chunks.reader import verify_dataset

__all__ = ["STAMP", "RACY_SECONDS", "stamp_matches", "verify_once", "write_stamp"]

STAMP = "verified.json"
RACY_SECONDS = 2.0


def _files(root: Path) -> dict[str, list[int]]:
    """(size, mtime_ns) of the manifest and every file it lists."""
    with open(root / MANIFEST, encoding="utf-8") as f:
        names = [MANIFEST, *json.load(f)["files"]]
    out = {}
    for name in names:
        st = (root / name).stat()
        out[name] = [st.st_size, st.st_mtime_ns]
    return out


def stamp_matches(path) -> bool:
    """True when ``path`` holds a stamp and every file still has the size and mtime it recorded."""
    root = Path(os.fspath(path))
    try:
        stamp = json.loads((root / STAMP).read_text(encoding="utf-8"))
        return isinstance(stamp, dict) and stamp.get("files") == _files(root)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_stamp(path) -> bool:
    """Record the files of ``path`` (just verified) as verified; False when none could be written."""
    root = Path(os.fspath(path))
    try:
        files = _files(root)
        now = time.time_ns()
        if any(now - mtime < RACY_SECONDS * 1e9 for _, mtime in files.values()):
            return False  # written moments ago: a change in the same tick would go unseen; stamp next time
        tmp = root / f".{STAMP}.tmp"
        tmp.write_text(json.dumps({"files": files}), encoding="utf-8")
        os.replace(tmp, root / STAMP)
        return True
    except (OSError, ValueError, KeyError):
        return False


def verify_once(path) -> str:
    """Verify ``path`` unless its stamp says nothing changed since it was verified; returns ``"sha256"`` or ``"stamp"``.

    Raises :class:`~sagann.chunks.dataset.DatasetError` as :func:`verify_dataset` does.
    The stamp is written by :func:`write_stamp`, once the caller is done
    with the dataset (a failed run leaves the directory as it was).
    """
    if stamp_matches(path):
        return "stamp"
    verify_dataset(path)
    return "sha256"
