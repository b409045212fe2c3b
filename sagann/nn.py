"""Ready-made layers: ``sagann.nn.GCNConv``, ``SAGEConv``, ``GINConv``, ``GATConv``."""
from sagann.engine.convs import GATConv, GCNConv, GINConv, SAGEConv

__all__ = ["GCNConv", "SAGEConv", "GINConv", "GATConv"]
