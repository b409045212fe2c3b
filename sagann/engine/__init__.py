"""SAGA-NN layers, the chunked SAGA passes with their autograd, and the model zoo."""
from sagann.engine.graph import ChunkedGraph
from sagann.engine.layer import EdgeBatch, Layer

__all__ = ["ChunkedGraph", "EdgeBatch", "Layer"]
