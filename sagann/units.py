"""Byte sizes: parsing "64MB", printing, the size of a tensor and where its memory is.

A base module: every layer (chunks, kernels, scheduler, engine) uses it, so it
imports nothing from sagann, and torch only for type names.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["format_bytes", "parse_bytes", "storage_ptr", "tensor_bytes"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(value: int | str | None) -> int | None:
    """``64MB`` / ``1.5GiB`` / ``1048576`` -> bytes; None stays None (unlimited)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"memory size must be bytes or a string like '64MB', got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"memory size must be positive, got {value}")
        return value
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"cannot read memory size {value!r}; write bytes as an int or a string such as '64MB', '512KiB', '2GB'")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise ValueError(f"memory size must be positive, got {value!r}")
    return n


def format_bytes(n: int | None) -> str:
    """Bytes for people: ``1.50 MiB``; None is ``unlimited``."""
    if n is None:
        return "unlimited"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def tensor_bytes(t: torch.Tensor | None) -> int:
    """Bytes of ``t``'s elements (not of its whole storage); 0 for None."""
    return 0 if t is None else t.numel() * t.element_size()


def storage_ptr(t: torch.Tensor) -> int:
    """Address of ``t``'s storage (shared by all its views); -1 for a tensor without one (sparse, functional wrappers)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return -1
