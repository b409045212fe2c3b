"""`sagann demo`: train a GCN out-of-core on a learnable synthetic graph under a small budget."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from sagann import profiler
from sagann.chunks.synthetic import sbm
from sagann.engine.graph import ChunkedGraph
from sagann.engine.models import GCN, MLP
from sagann.engine.train import EpochStats, format_profile, profiled, train_node_classifier
from sagann.scheduler.config import ScheduleConfig
from sagann.scheduler.devices import CpuDevice


@dataclass(frozen=True)
class DemoConfig:
    num_vertices: int = 40_000
    avg_degree: float = 16.0
    feature_dim: int = 64
    num_classes: int = 8
    hidden: int = 64
    epochs: int = 30
    budget_fraction: float = 0.25  # device budget / in-memory working set
    lr: float = 0.01
    seed: int = 0
    meter: bool = False  # measure device memory as allocated (measured_device_peak_bytes); slows each epoch
    transfer_dtype: torch.dtype | None = None  # ScheduleConfig.transfer_dtype: rows cross the link in 16 bits

    def __post_init__(self):
        if not 0 < self.budget_fraction <= 1:
            raise ValueError(f"budget_fraction must be in (0, 1], got {self.budget_fraction}")
        if self.epochs < 1 or self.num_vertices < self.num_classes:
            raise ValueError("demo needs epochs >= 1 and num_vertices >= num_classes")


def _best_val_test(history: list[EpochStats]) -> float:
    return max(history, key=lambda s: (s.val_accuracy, -s.epoch)).test_accuracy


def in_memory_working_set(data, model: torch.nn.Module) -> int:
    """Device bytes one training step of ``model`` needs with the whole graph resident (P=1, ApplyVertex on whole intervals)."""
    device = CpuDevice(None, name="in-memory", vertex_block_bytes=None)
    g = ChunkedGraph(data.edge_index, data.num_vertices, num_chunks=1, device=device)
    x = torch.from_numpy(data.x)
    model.train()
    model(g, x).sum().backward()
    model.zero_grad(set_to_none=True)
    return device.peak_bytes


def run_demo(config: DemoConfig = DemoConfig(), progress: bool = True, profile_dir: str | None = None) -> dict:
    """Returns the demo's figures; keys are a contract of ``sagann demo --json``.

    With ``profile_dir``, the out-of-core training is profiled and
    ``trace.json``, ``timeline.png`` and ``summary.json`` are written there.
    """
    torch.manual_seed(config.seed)
    data = sbm(config.num_vertices, config.num_classes, config.avg_degree, config.feature_dim, seed=config.seed)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    masks = [torch.from_numpy(m) for m in (data.train_mask, data.val_mask, data.test_mask)]

    model = GCN(config.feature_dim, config.hidden, config.num_classes)
    working_set = in_memory_working_set(data, model)
    budget = int(working_set * config.budget_fraction)
    device = CpuDevice(budget, meter=config.meter or None)  # None: SAGANN_METER decides
    g = ChunkedGraph(data.edge_index, data.num_vertices, device=device, schedule=ScheduleConfig(transfer_dtype=config.transfer_dtype))
    t0, sent = time.perf_counter(), device.bytes_in
    with profiled(profile_dir) as profile_result:
        history = train_node_classifier(model, g, x, y, *masks, epochs=config.epochs, lr=config.lr, progress=progress, desc="GCN out-of-core")
        gcn_seconds = time.perf_counter() - t0
    sent = device.bytes_in - sent

    torch.manual_seed(config.seed)
    mlp = MLP(config.feature_dim, config.hidden, config.num_classes)
    mlp_history = train_node_classifier(mlp, None, x, y, *masks, epochs=config.epochs, lr=config.lr, progress=progress, desc="MLP baseline")
    return {
        "accuracy": _best_val_test(history),
        "mlp_accuracy": _best_val_test(mlp_history),
        "num_chunks": g.num_chunks,
        "memory_budget_bytes": budget,
        "peak_device_bytes": device.peak_bytes,
        "measured_device_peak_bytes": device.measured_peak_bytes,  # None: not metered
        "working_set_bytes": working_set,
        "epoch_seconds": [s.seconds for s in history],
        "num_vertices": data.num_vertices,
        "num_edges": data.num_edges,
        "epochs": config.epochs,
        "train_seconds_total": gcn_seconds,
        "bytes_moved": sent,  # host -> device over the training epochs and their evaluations
        **profile_result,
    }


def format_report(r: dict) -> str:
    mb = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    sec = np.asarray(r["epoch_seconds"])
    return "\n".join(
        [
            f"graph: SBM, {r['num_vertices']:,} vertices, {r['num_edges']:,} edges; 2-layer GCN, {r['epochs']} epochs",
            f"device budget {mb(r['memory_budget_bytes'])} = {r['memory_budget_bytes'] / r['working_set_bytes']:.2f} x the in-memory working set ({mb(r['working_set_bytes'])})",
            f"chunks P = {r['num_chunks']}, peak device bytes {mb(r['peak_device_bytes'])} (within budget: {r['peak_device_bytes'] <= r['memory_budget_bytes']})",
            f"host -> device: {mb(r['bytes_moved'])} over the training",
            f"epoch time (train step): median {np.median(sec):.3f} s, first {sec[0]:.3f} s",
            f"test accuracy: GCN out-of-core {r['accuracy']:.3f} vs MLP without edges {r['mlp_accuracy']:.3f}",
        ]
        + format_profile(r)
    )
