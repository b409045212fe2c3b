"""Bridges from PyG, DGL and scipy: graphs and their data (``from_pyg``, ``from_dgl``, ``from_scipy``), datasets on disk (``save_dataset``), and whole PyG models (``convert``)."""
from sagann.interop.bridges import GraphData, from_dgl, from_pyg, from_scipy, save_dataset
from sagann.interop.convert import ConversionError, convert

__all__ = ["ConversionError", "GraphData", "convert", "from_dgl", "from_pyg", "from_scipy", "save_dataset"]
