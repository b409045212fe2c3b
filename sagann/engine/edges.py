"""What ApplyEdge sees: the edges of one sub-chunk, their rows gathered on first use."""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["EdgeBatch"]


class EdgeBatch:
    """The edges of one sub-chunk as ApplyEdge sees them; rows are gathered on first use.

    Attributes (all ``[num_edges, .]`` tensors on the device):
        src: layer-input rows at each edge's source.
        dst: layer-input rows at each edge's destination.
        data: the call's ``edge_data`` rows, or None.
        src_term / dst_term: ``apply_src`` / ``apply_dst`` outputs at the
            edge's source / destination, or None when the hook is absent.
    """

    FIELDS = ("src", "dst", "data", "src_term", "dst_term")

    def __init__(self, num_edges: int, loaders: dict[str, Callable[[], torch.Tensor | None]]):
        self.num_edges = num_edges
        self._loaders = loaders
        self._values: dict[str, torch.Tensor | None] = {}
        self.used: set[str] = set()

    def _get(self, name: str) -> torch.Tensor | None:
        if name not in self._values:
            self.used.add(name)
            loader = self._loaders.get(name)
            self._values[name] = loader() if loader is not None else None
        return self._values[name]

    src = property(lambda self: self._get("src"))
    dst = property(lambda self: self._get("dst"))
    data = property(lambda self: self._get("data"))
    src_term = property(lambda self: self._get("src_term"))
    dst_term = property(lambda self: self._get("dst_term"))

    def __len__(self) -> int:
        return self.num_edges
