"""Whole models built from sagann layers: plain torch modules taking ``(g, x)``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sagann.engine import host_ops
from sagann.engine.convs import GATConv, GatedGCNConv, GCNConv, GINConv, SAGEConv
from sagann.engine.pending import chaining, chaining_enabled

__all__ = ["GCN", "GraphSAGE", "GIN", "GAT", "GGCN", "MLP", "MODELS", "build_model"]


class _Stack(nn.Module):
    """Layers with ReLU and dropout between them (on the host rows, under the graph's host budget).

    Called as a user's own module would call its layers: the engine chains
    them where it can (:mod:`sagann.engine.chain`: a GCNConv on its cached
    Gather, the ReLU and the next GCNConv's matmul as one vertex pass).
    ``chain_layers = False`` runs every layer on its own
    (``sagann.chaining(False)`` inside this model's forward).
    """

    chain_layers = True

    def __init__(self, layers: list[nn.Module], dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.dropout = dropout

    def forward(self, g, x: torch.Tensor) -> torch.Tensor:
        with chaining(self.chain_layers and chaining_enabled()):
            last = len(self.layers) - 1
            for k, layer in enumerate(self.layers):
                x = host_ops.dropout(x, self.dropout, self.training, g)  # F.dropout, under g's host budget
                x = layer(g, x)
                if k < last:
                    x = host_ops.relu(x, g)
            return x


def _widths(in_channels: int, hidden: int, out_channels: int, num_layers: int) -> list[tuple[int, int]]:
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    dims = [in_channels] + [hidden] * (num_layers - 1) + [out_channels]
    return list(zip(dims[:-1], dims[1:]))


class GCN(_Stack):
    """Kipf & Welling's GCN: ``num_layers`` GCNConv layers."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, num_layers: int = 2, dropout: float = 0.5):
        super().__init__([GCNConv(a, b) for a, b in _widths(in_channels, hidden, out_channels, num_layers)], dropout)


class GraphSAGE(_Stack):
    """GraphSAGE with mean aggregation."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, num_layers: int = 2, dropout: float = 0.5):
        super().__init__([SAGEConv(a, b) for a, b in _widths(in_channels, hidden, out_channels, num_layers)], dropout)


class GIN(_Stack):
    """GIN with a two-layer MLP per layer."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, num_layers: int = 2, dropout: float = 0.5):
        mlp = lambda a, b: nn.Sequential(nn.Linear(a, hidden), nn.ReLU(), nn.Linear(hidden, b))  # noqa: E731
        super().__init__([GINConv(mlp(a, b)) for a, b in _widths(in_channels, hidden, out_channels, num_layers)], dropout)


class GAT(_Stack):
    """GAT: hidden layers with ``heads`` concatenated heads, one averaged head on the output."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, num_layers: int = 2, dropout: float = 0.5, heads: int = 4):
        if hidden % heads:
            raise ValueError(f"GAT: hidden ({hidden}) must be divisible by heads ({heads})")
        widths = _widths(in_channels, hidden, out_channels, num_layers)
        layers = [GATConv(a, b // heads, heads=heads) for a, b in widths[:-1]] + [GATConv(widths[-1][0], out_channels, heads=1)]
        super().__init__(layers, dropout)


class GGCN(_Stack):
    """NeuGraph's G-GCN: gated GCN layers, the last without activation."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, num_layers: int = 2, dropout: float = 0.5):
        widths = _widths(in_channels, hidden, out_channels, num_layers)
        super().__init__([GatedGCNConv(a, b, activation=k < len(widths) - 1) for k, (a, b) in enumerate(widths)], dropout)


class MLP(nn.Module):
    """The same depth without edges: the baseline a GNN must beat. Ignores the graph."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, num_layers: int = 2, dropout: float = 0.5):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in _widths(in_channels, hidden, out_channels, num_layers))
        self.dropout = dropout

    def forward(self, g, x: torch.Tensor) -> torch.Tensor:
        home = x.device  # host rows in and out, as the graph models; the weights may live on a GPU
        x = x.to(self.layers[0].weight.device)
        for k, layer in enumerate(self.layers):
            x = layer(F.dropout(x, self.dropout, self.training))
            if k < len(self.layers) - 1:
                x = F.relu(x)
        return x.to(home)


MODELS = {"gcn": GCN, "sage": GraphSAGE, "gin": GIN, "gat": GAT, "ggcn": GGCN, "mlp": MLP}


def build_model(name: str, in_channels: int, hidden: int, out_channels: int, **kwargs) -> nn.Module:
    """A model by name; unknown names list the known ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name](in_channels, hidden, out_channels, **kwargs)
