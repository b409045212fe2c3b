"""Ready-made layers: ``sagann.nn.GCNConv``, ``SAGEConv``, ``GINConv``, ``GATConv``, ``GatedGCNConv``."""
from sagann.engine.convs import GATConv, GatedGCNConv, GCNConv, GINConv, SAGEConv

__all__ = ["GCNConv", "SAGEConv", "GINConv", "GATConv", "GatedGCNConv"]
