"""Ready-made layers: ``sagann.nn.GCNConv``, ``SAGEConv``, ``GINConv``."""
from sagann.engine.convs import GCNConv, GINConv, SAGEConv

__all__ = ["GCNConv", "SAGEConv", "GINConv"]
