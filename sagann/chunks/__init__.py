"""The 2D partition, the chunk format in memory and on disk, and synthetic graphs."""
from sagann.chunks.dataset import FORMAT_VERSION, Dataset, DatasetError, DatasetWriter, load_dataset, save_dataset, verify_dataset
from sagann.chunks.external import PartitionConfig, PartitionSummary, partition_edge_list
from sagann.chunks.ingest import EdgeListError, open_edge_list
from sagann.chunks.ogb import partition_ogb
from sagann.chunks.partition import GraphPartition, as_edge_index, balanced_bounds, partition_graph
from sagann.chunks.reorder import Reorder
from sagann.chunks.types import ChunkId, EdgeChunk, Partition, VertexId

__all__ = [
    "FORMAT_VERSION",
    "ChunkId",
    "Dataset",
    "DatasetError",
    "DatasetWriter",
    "EdgeChunk",
    "EdgeListError",
    "GraphPartition",
    "Partition",
    "PartitionConfig",
    "PartitionSummary",
    "Reorder",
    "VertexId",
    "as_edge_index",
    "balanced_bounds",
    "load_dataset",
    "open_edge_list",
    "partition_edge_list",
    "partition_graph",
    "partition_ogb",
    "save_dataset",
    "verify_dataset",
]
