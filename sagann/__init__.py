"""sagann: full-graph GNN training larger than accelerator memory (NeuGraph's SAGA-NN).

Write a layer as ApplyEdge / ApplyVertex with torch ops; sagann splits the
graph into chunks that fit the device and streams them through it.
"""
from sagann import fn, nn, profiler
from sagann.version import __version__
from sagann.engine import ChunkedGraph, EdgeBatch, Layer
from sagann.engine.chain import explain
from sagann.engine.pending import chaining
from sagann.interop import ConversionError, GraphData, convert, from_dgl, from_pyg, from_scipy, save_dataset
from sagann.profiler import profile
from sagann.scheduler import BudgetExceeded, BudgetTooSmall, CpuDevice, CudaDevice, Device, EmulatedLink, ScheduleConfig
from sagann.scheduler.host import HostMemory, host_heap, set_host_heap

__all__ = ["BudgetExceeded", "BudgetTooSmall", "ChunkedGraph", "ConversionError", "GraphData", "convert", "from_dgl", "from_pyg", "from_scipy", "save_dataset", "CpuDevice", "CudaDevice", "Device", "EdgeBatch", "EmulatedLink", "HostMemory", "Layer", "ScheduleConfig", "chaining", "explain", "fn", "host_heap", "nn", "profile", "profiler", "set_host_heap", "__version__"]
