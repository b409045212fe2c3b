"""SAGA-NN layers, the chunked dataflow with its autograd, and the model zoo."""
from sagann.engine.graph import ChunkedGraph
from sagann.engine.layer import EdgeBatch, Layer

__all__ = ["ChunkedGraph", "EdgeBatch", "Layer"]
