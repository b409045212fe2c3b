"""The 2D partition, the chunk format in memory and on disk, and synthetic graphs."""
from sagann.chunks.dataset import FORMAT_VERSION, Dataset, DatasetError, load_dataset, save_dataset, verify_dataset
from sagann.chunks.partition import GraphPartition, as_edge_index, balanced_bounds, partition_graph
from sagann.chunks.types import ChunkId, EdgeChunk, Partition, VertexId

__all__ = [
    "FORMAT_VERSION",
    "ChunkId",
    "Dataset",
    "DatasetError",
    "EdgeChunk",
    "GraphPartition",
    "Partition",
    "VertexId",
    "as_edge_index",
    "balanced_bounds",
    "load_dataset",
    "partition_graph",
    "save_dataset",
    "verify_dataset",
]
