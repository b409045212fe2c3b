"""From PyG, DGL and scipy graphs to a :class:`~sagann.ChunkedGraph` with its vertex data, and to a dataset directory.

``from_pyg(data, device=...)`` (and ``from_dgl``, ``from_scipy``) return a
:class:`GraphData`: the graph, split for the device's budget at the first
layer call, plus the features, labels, masks and edge weights as host
tensors (the caller's own tensors where they already are float32 / bool on
the host: nothing is copied but the graph's edge list). Its attribute names
follow PyG's ``Data`` (``x``, ``y``, ``train_mask``, and ``edge_index``,
which is the graph), so a PyG script keeps its lines after
``data = sagann.from_pyg(data, device=...)`` and ``model = sagann.convert(model)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from sagann.chunks import dataset as chunk_dataset
from sagann.chunks.partition import GraphPartition, partition_graph
from sagann.engine.graph import ChunkedGraph

__all__ = ["GraphData", "from_dgl", "from_pyg", "from_scipy", "save_dataset"]

_X_NAMES = ("feat", "x", "features", "feature")
_Y_NAMES = ("label", "y", "labels")
_WEIGHT_NAMES = ("edge_weight", "weight", "w")


@dataclass(eq=False)
class GraphData:
    """A graph ready for sagann layers and the host tensors that go with it.

    Shapes:
        x ``[N, F]`` float32 or None; y ``[N]`` (or ``[N, k]``) or None;
        masks: name -> ``[N]`` bool (PyG's ``train_mask`` is ``masks["train"]``);
        edge_weight ``[E]`` float32 or None; edge_attr ``[E, k]`` or None, in
        the caller's edge order.
    """

    graph: ChunkedGraph
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    edge_weight: torch.Tensor | None = None
    edge_attr: torch.Tensor | None = None

    @property
    def edge_index(self) -> ChunkedGraph:
        """The graph, where a PyG script passes ``data.edge_index`` (converted layers take either)."""
        return self.graph

    @property
    def num_nodes(self) -> int:
        return self.graph.num_vertices

    @property
    def num_edges(self) -> int:
        return self.graph.num_edges

    def __getattr__(self, name: str):
        masks = self.__dict__.get("masks", {})
        if name.endswith("_mask") and name[: -len("_mask")] in masks:
            return masks[name[: -len("_mask")]]
        raise AttributeError(f"GraphData has no attribute {name!r} (masks: {', '.join(f'{m}_mask' for m in masks) or 'none'})")

    def __repr__(self) -> str:
        parts = [f"graph={self.graph!r}"]
        for name in ("x", "y", "edge_weight", "edge_attr"):
            t = getattr(self, name)
            if t is not None:
                parts.append(f"{name}={list(t.shape)}")
        parts += [f"{m}_mask={int(t.sum())}" for m, t in self.masks.items()]
        return f"GraphData({', '.join(parts)})"


def _graph_options(device, options: dict) -> dict:
    known = {"num_chunks", "sub_chunk_nnz", "backend", "schedule", "topology", "distributed", "host_memory"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; the graph takes device=... and {', '.join(sorted(known))}")
    return {"device": device, **options}


def _host(t, what: str) -> torch.Tensor | None:
    """A host tensor (float64 features as float32); numpy arrays are wrapped."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(np.asarray(t))
    if t.requires_grad:
        t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if what in ("x", "edge_weight", "edge_attr") and t.is_floating_point() and t.dtype != torch.float32:
        t = t.float()
    return t


def _labels(y) -> torch.Tensor | None:
    y = _host(y, "y")
    if y is not None and y.dim() == 2 and y.shape[1] == 1:  # OGB's [N, 1] labels
        y = y.view(-1)
    return y


def _masks(items, n: int) -> dict[str, torch.Tensor]:
    """``name_mask`` entries that are [N] bool tensors, by ``name``."""
    out = {}
    for key, value in items:
        if isinstance(key, str) and key.endswith("_mask") and isinstance(value, torch.Tensor) and value.dtype == torch.bool and value.shape == (n,):
            out[key[: -len("_mask")]] = _host(value, "mask")
    return out


def _first(mapping, names):
    for name in names:
        if name in mapping:
            return mapping[name]
    return None


def _make(edge_index, n: int, device, options: dict, **tensors) -> GraphData:
    graph = ChunkedGraph(edge_index, n, **_graph_options(device, options))
    return GraphData(graph, **tensors)


def from_pyg(data, device=None, **options) -> GraphData:
    """A PyG ``Data`` as a :class:`GraphData`: ``data.edge_index`` as a ChunkedGraph on ``device``, and x, y, the ``*_mask`` tensors, edge_weight, edge_attr.

    Args:
        data: a homogeneous ``torch_geometric.data.Data`` (a ``HeteroData``:
            ``data.to_homogeneous()`` first).
        device: a :class:`~sagann.CpuDevice` / :class:`~sagann.CudaDevice`
            (its memory budget decides P), a list of them, or None (unlimited CPU).
        **options: passed to :class:`~sagann.ChunkedGraph`: ``num_chunks``
            (force P), ``sub_chunk_nnz``, ``backend``, ``schedule``,
            ``host_memory``, ``topology``, ``distributed``.

    Example:
        >>> d = sagann.from_pyg(data, device=sagann.CpuDevice("16MB"))
        >>> out = model(d.x, d.edge_index)        # a sagann.convert'ed model
    """
    if hasattr(data, "node_types") and hasattr(data, "edge_types") and not hasattr(data, "edge_index"):
        raise TypeError("from_pyg takes a homogeneous Data, got a HeteroData; convert it with data.to_homogeneous()")
    if not (hasattr(data, "edge_index") and hasattr(data, "num_nodes")):
        raise TypeError(f"from_pyg takes a torch_geometric.data.Data, got {type(data).__name__}; for a [2, E] edge_index use sagann.ChunkedGraph(edge_index, N)")
    if data.edge_index is None:
        raise ValueError("this Data has no edge_index; set data.edge_index ([2, E], row 0 = source)")
    n = int(data.num_nodes)
    items = [(k, data[k]) for k in data.keys()]
    return _make(
        data.edge_index, n, device, options,
        x=_host(getattr(data, "x", None), "x"), y=_labels(getattr(data, "y", None)), masks=_masks(items, n),
        edge_weight=_host(getattr(data, "edge_weight", None), "edge_weight"), edge_attr=_host(getattr(data, "edge_attr", None), "edge_attr"),
    )


def from_dgl(graph, device=None, **options) -> GraphData:
    """A homogeneous DGL graph as a :class:`GraphData`: ``graph.edges()`` (in edge-id order) as the ChunkedGraph.

    ``ndata["feat"]`` (or ``x`` / ``features``) becomes x, ``ndata["label"]``
    (or ``y`` / ``labels``) y, every ``ndata["<name>_mask"]`` a mask, and
    ``edata["weight"]`` (or ``w`` / ``edge_weight``) the edge weights.
    ``device`` and ``options`` as in :func:`from_pyg`.
    """
    if not (callable(getattr(graph, "edges", None)) and callable(getattr(graph, "num_nodes", None)) and hasattr(graph, "ndata")):
        raise TypeError(f"from_dgl takes a dgl.DGLGraph, got {type(graph).__name__}")
    if len(getattr(graph, "ntypes", [None])) != 1 or len(getattr(graph, "canonical_etypes", [None])) != 1:
        raise TypeError("from_dgl takes a homogeneous graph (one node and one edge type); convert it with dgl.to_homogeneous(graph)")
    src, dst = graph.edges()
    n = int(graph.num_nodes())
    edge_index = torch.stack([torch.as_tensor(src).cpu(), torch.as_tensor(dst).cpu()])
    ndata, edata = dict(graph.ndata), dict(getattr(graph, "edata", {}))
    return _make(
        edge_index, n, device, options,
        x=_host(_first(ndata, _X_NAMES), "x"), y=_labels(_first(ndata, _Y_NAMES)),
        masks=_masks([(k, _host(v, "mask")) for k, v in ndata.items() if isinstance(k, str) and k.endswith("_mask")], n),
        edge_weight=_host(_first(edata, _WEIGHT_NAMES), "edge_weight"),
    )


def from_scipy(matrix, device=None, *, x=None, y=None, masks: dict | None = None, **options) -> GraphData:
    """A square scipy.sparse adjacency (``A[src, dst]`` nonzero for an edge src -> dst) as a :class:`GraphData`.

    Edges come in the matrix's COO order (row by row for CSR); explicit
    zeros are no edges. Values other than all ones become ``edge_weight``.
    ``x``, ``y`` and ``masks`` (name -> [N] bool) may be numpy or torch.
    ``device`` and ``options`` as in :func:`from_pyg`.
    """
    if not callable(getattr(matrix, "tocoo", None)) or len(getattr(matrix, "shape", ())) != 2:
        raise TypeError(f"from_scipy takes a scipy.sparse matrix or array, got {type(matrix).__name__}")
    n, m = (int(s) for s in matrix.shape)
    if n != m:
        raise ValueError(f"from_scipy needs a square adjacency matrix [N, N], got {n} x {m}")
    coo = matrix.tocoo()
    keep = np.asarray(coo.data) != 0
    edge_index = np.stack([np.asarray(coo.row, dtype=np.int64)[keep], np.asarray(coo.col, dtype=np.int64)[keep]])
    values = np.asarray(coo.data)[keep]
    weight = None if values.size == 0 or bool(np.all(values == 1)) else torch.from_numpy(values.astype(np.float32))
    mask_items = [(f"{k}_mask", _host(v, "mask")) for k, v in (masks or {}).items()]
    bad = [k for k, v in mask_items if v.dtype != torch.bool or v.shape != (n,)]
    if bad:
        raise ValueError(f"masks must be [N={n}] bool arrays; {', '.join(b[: -len('_mask')] for b in bad)} is not")
    return _make(edge_index, n, device, options, x=_host(x, "x"), y=_labels(y), masks=_masks(mask_items, n), edge_weight=weight)


def _partition_of(graph, num_chunks: int | None) -> GraphPartition:
    if isinstance(graph, GraphPartition):
        return graph
    if isinstance(graph, GraphData):
        graph = graph.graph
    if not isinstance(graph, ChunkedGraph):
        raise TypeError(f"save_dataset takes a GraphData (from from_pyg / from_dgl / from_scipy), a ChunkedGraph or a GraphPartition, got {type(graph).__name__}")
    if graph.partition is not None and num_chunks is None:
        return graph.partition
    return partition_graph(graph.edge_index(), graph.num_vertices, num_chunks or 1)


def save_dataset(path, graph, x=None, y=None, masks: dict | None = None, edge_data=None, num_classes: int | None = None, overwrite: bool = False, *, num_chunks: int | None = None):
    """Write a graph and its vertex data as a dataset directory that ``sagann train`` and ``ChunkedGraph.from_dataset`` open.

    Args:
        path: the directory to create, atomically (complete or absent).
        graph: a :class:`GraphData` (its x, y, masks and edge weights are
            saved unless given here), a :class:`~sagann.ChunkedGraph`, or a
            ``GraphPartition`` from ``sagann.chunks.partition_graph``.
        x: features [N, F], floating (float64 is stored as float32).
        y: integer class ids [N].
        masks: name -> [N] bool; ``sagann train`` needs ``train``, ``val`` and ``test``.
        edge_data: [E] or [E, k] floats in the caller's edge order.
        num_classes: default ``max(y) + 1``.
        overwrite: replace a dataset already at ``path`` once the new one is complete.
        num_chunks: P of the stored partition (default: the graph's current
            one, else 1; training re-partitions for its budget anyway).

    Returns the dataset path. ``sagann verify PATH`` checks it.
    """
    if isinstance(graph, GraphData):
        x = graph.x if x is None else x
        y = graph.y if y is None else y
        masks = graph.masks if masks is None else masks
        if edge_data is None:
            edge_data = graph.edge_weight if graph.edge_weight is not None else graph.edge_attr
    return chunk_dataset.save_dataset(path, _partition_of(graph, num_chunks), x, y, masks, edge_data, num_classes, overwrite)
