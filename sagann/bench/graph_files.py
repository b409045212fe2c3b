"""The benchmark graphs of `sagann bench gcn|gat|sage`, written once to ``.npy`` files every worker reads (DGL's too,
which must not import sagann): R-MAT with random features, or the Reddit-shaped SBM."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sagann.bench import _peers

__all__ = ["GRAPHS", "QUICK_REDDIT_SCALE", "REDDIT_SCALE", "RMAT_CLASSES", "RMAT_FEATURES", "GraphFiles", "prepare_graph", "rmat_features", "simple_edges"]

GRAPHS = ("rmat", "reddit")
REDDIT_SCALE, QUICK_REDDIT_SCALE = 0.05, 0.002
RMAT_FEATURES, RMAT_CLASSES = 128, 16


@dataclass(frozen=True)
class GraphFiles:
    """The ``.npy`` files of one benchmark graph and its JSON description (``info``)."""

    edges: Path
    features: Path
    labels: Path
    info: dict

    @property
    def num_vertices(self) -> int:
        return self.info["num_vertices"]


def rmat_features(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """R-MAT's features and labels from numpy (the same bits in every environment, DGL's too)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, RMAT_FEATURES), dtype=np.float32)
    y = rng.integers(0, RMAT_CLASSES, n)
    return torch.from_numpy(x), torch.from_numpy(y)


def simple_edges(edge_index: np.ndarray, n: int) -> np.ndarray:
    """``edge_index`` without self loops and duplicates, sorted by (source, destination)."""
    keep = edge_index[0] != edge_index[1]
    keys = np.unique(edge_index[0, keep] * n + edge_index[1, keep])
    return np.stack([keys // n, keys % n])


def _write_once(directory: Path, stem: str, make: Callable[[], tuple[dict, dict]]) -> GraphFiles:
    """``make() -> (arrays, info)`` saved as ``stem_<name>.npy`` + ``stem.json``; later calls reuse them.

    The JSON is written last, so a graph whose writing was interrupted is made again.
    """
    meta = directory / f"{stem}.json"
    paths = {name: directory / f"{stem}_{name}.npy" for name in ("edges", "x", "y")}
    if meta.exists():
        info = json.loads(meta.read_text())
    else:
        arrays, info = make()
        for name, array in arrays.items():
            tmp = paths[name].with_suffix(".tmp.npy")
            np.save(tmp, array)
            tmp.rename(paths[name])
        meta.with_suffix(".tmp").write_text(json.dumps(info))
        meta.with_suffix(".tmp").rename(meta)
    return GraphFiles(paths["edges"], paths["x"], paths["y"], info)


def _rmat(directory: Path, quick: bool, simple: bool) -> GraphFiles:
    spec = _peers.QUICK_GRAPH if quick else _peers.FULL_GRAPH
    n = spec.num_vertices

    def make():
        ei = spec.edge_index()
        info = {"name": "rmat", **spec.to_dict(), "features": RMAT_FEATURES, "classes": RMAT_CLASSES, "simple": simple}
        if simple:
            drawn = ei.shape[1]
            ei = simple_edges(ei, n)
            info.update(generator="sagann.chunks.synthetic.rmat(self_loops=False), duplicate edges removed, + one self loop per vertex",
                        duplicates_removed=drawn - ei.shape[1], edges_with_self_loops=ei.shape[1] + n)
        x, y = rmat_features(n)
        return {"edges": ei, "x": x.numpy(), "y": y.numpy()}, info

    stem = f"rmat_{n}_{spec.num_edges}_{spec.seed}" + ("_simple" if simple else "")
    return _write_once(directory, stem, make)


def _reddit(directory: Path, scale: float) -> GraphFiles:
    from sagann.chunks.synthetic import PRESETS, preset_graph

    def make():
        g = preset_graph("reddit", scale, seed=0)
        ei = simple_edges(g.edge_index, g.num_vertices)
        n, shape = g.num_vertices, PRESETS["reddit"]
        info = {
            "name": g.name, "generator": f"sagann.chunks.synthetic.preset_graph('reddit', {scale:g}) (SBM), self loops and duplicate edges removed, + one self loop per vertex",
            "scale": scale, "num_vertices": n, "sbm_edges": g.num_edges, "duplicates_and_loops_removed": g.num_edges - ei.shape[1],
            "edges_with_self_loops": ei.shape[1] + n, "avg_in_degree": round((ei.shape[1] + n) / n, 1), "reddit_avg_degree": round(shape.avg_degree, 1),
            "features": g.num_features, "classes": g.num_classes, "seed": 0, "simple": True,
        }
        return {"edges": ei, "x": g.x, "y": g.y}, info

    return _write_once(directory, f"reddit_{scale:g}_0", make)


def prepare_graph(directory: str | os.PathLike, graph: str = "rmat", scale: float | None = None, quick: bool = False, simple: bool = True) -> GraphFiles:
    """Write the benchmark graph's files into ``directory`` once (``simple``: R-MAT without duplicates)."""
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; use one of: {', '.join(GRAPHS)}")
    Path(directory).mkdir(parents=True, exist_ok=True)
    if graph == "rmat":
        if scale is not None:
            raise ValueError("--scale applies to --graph reddit only (the R-MAT graph has a fixed size; --quick makes it small)")
        return _rmat(Path(directory), quick, simple)
    scale = (QUICK_REDDIT_SCALE if quick else REDDIT_SCALE) if scale is None else float(scale)
    return _reddit(Path(directory), scale)
