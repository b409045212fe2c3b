"""SAGA-NN layers, the chunked SAGA passes with their autograd, and the model zoo."""
from sagann.engine.graph import ChunkedGraph
from sagann.engine.layer import EdgeBatch, Layer
from sagann.engine import calibrate  # noqa: F401  (registers the engine's step timer with the time model)

__all__ = ["ChunkedGraph", "EdgeBatch", "Layer"]
