"""The installed sagann's version, for ``sagann.__version__`` and what datasets record as their writer.

A base module: it imports nothing from sagann, so the chunks layer can name
the version without importing the whole package.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

# A source tree used without ``pip install -e .`` has no package metadata.
UNKNOWN_VERSION = "0+unknown"

try:
    __version__ = version("sagann")
except PackageNotFoundError:
    __version__ = UNKNOWN_VERSION
