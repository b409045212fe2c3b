"""A PyG ``Data`` saved with ``torch.save``, partitioned into a dataset directory (``sagann partition data.pt OUT``).

The file is unpickled with ``weights_only=True``, allowing only the classes
of ``torch_geometric.data`` (a Data and its storages): a file that needs
anything else is refused, not executed. The edge list, features, integer
labels and ``*_mask`` tensors are staged as ``.npy`` files next to the
output and partitioned by :func:`~sagann.chunks.partition_edge_list`, so
``--chunks``, ``--reorder`` and ``--host-memory`` mean what they mean for
an edge list.
"""
from __future__ import annotations

import importlib
import os
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from sagann.chunks.files import check_target
from sagann.chunks.external import PartitionConfig, PartitionSummary, partition_edge_list
from sagann.chunks.partition import as_edge_index
from sagann.chunks.staging import staging_dir, write_npy

__all__ = ["is_torch_file", "load_pyg_file", "partition_pyg_file"]

SAFE_PREFIX = "torch_geometric.data."


def is_torch_file(path) -> bool:
    """Was ``path`` written by ``torch.save`` (a zip archive holding ``data.pkl``, or named .pt / .pth)?"""
    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        return True
    try:
        return zipfile.is_zipfile(path) and any(n.endswith("/data.pkl") or n == "data.pkl" for n in zipfile.ZipFile(path).namelist())
    except OSError:
        return False


def _allowed_globals(path: Path) -> list:
    names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    bad = [n for n in names if not n.startswith(SAFE_PREFIX)]
    if bad:
        raise ValueError(
            f"{path}: the file needs {', '.join(bad)} to be unpickled, which sagann does not load; "
            "save the graph itself with torch.save(data, path) (a torch_geometric.data.Data)"
        )
    out = []
    for name in names:
        module, _, attr = name.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            raise ValueError(f"{path}: needs {name}, which this torch_geometric does not have; save it again with this version, or install the one that wrote it") from None
    return out


def load_pyg_file(path):
    """The PyG ``Data`` in a ``torch.save`` file (only ``torch_geometric.data`` classes are unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file; check the path")
    try:
        allowed = _allowed_globals(path)
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except ValueError:
        raise
    except Exception as err:  # a corrupt or foreign file: one line
        raise ValueError(f"{path}: cannot be read as a torch.save file ({' '.join(str(err).split())[:200]}); save the graph with torch.save(data, path)") from None
    if isinstance(obj, (tuple, list)):
        raise ValueError(f"{path}: holds a {type(obj).__name__} (an InMemoryDataset's processed file?); save one graph with torch.save(dataset[0], path)")
    if not (hasattr(obj, "edge_index") and hasattr(obj, "num_nodes")):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a torch_geometric.data.Data; save the graph with torch.save(data, path)")
    if obj.edge_index is None:
        raise ValueError(f"{path}: the Data has no edge_index")
    return obj


def _numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def partition_pyg_file(path, out, config: PartitionConfig | None = None) -> PartitionSummary:
    """Partition the ``Data`` saved at ``path`` into the dataset directory ``out``: edges, x, integer y, ``*_mask``."""
    config = config or PartitionConfig()
    check_target(Path(os.path.abspath(os.fspath(out))), config.overwrite)  # before any staging work
    data = load_pyg_file(path)
    n = int(data.num_nodes)
    if config.num_vertices is not None and config.num_vertices != n:
        raise ValueError(f"--num-vertices {config.num_vertices} but the Data in {path} has num_nodes={n}; drop --num-vertices")
    try:
        edge_index = as_edge_index(data.edge_index, n)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    with staging_dir(out) as staging:
        edges = write_npy(staging / "edges.npy", edge_index)
        del edge_index
        features = labels = None
        x = getattr(data, "x", None)
        if isinstance(x, torch.Tensor) and x.dim() == 2 and x.is_floating_point():
            features = write_npy(staging / "x.npy", _numpy(x.float() if x.dtype == torch.bfloat16 else x))
        y = getattr(data, "y", None)
        if isinstance(y, torch.Tensor) and not y.is_floating_point() and y.dtype != torch.bool and y.numel() == n:
            labels = write_npy(staging / "y.npy", _numpy(y.reshape(-1)).astype(np.int64))
        masks = {}
        for key in data.keys():
            m = data[key]
            if key.endswith("_mask") and isinstance(m, torch.Tensor) and m.dtype == torch.bool and m.shape == (n,):
                masks[key[: -len("_mask")]] = str(write_npy(staging / f"{key}.npy", _numpy(m)))
        del data
        return partition_edge_list(edges, out, replace(config, num_vertices=n), features=features, labels=labels, masks=masks)
