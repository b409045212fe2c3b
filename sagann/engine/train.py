"""A full-graph node-classification loop: plain torch training around out-of-core layers."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sagann import profiler

__all__ = ["EpochStats", "train_node_classifier", "accuracy"]


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float
    train_accuracy: float
    val_accuracy: float
    test_accuracy: float
    seconds: float  # forward + backward + optimizer step of the training pass

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
    if int(mask.sum()) == 0:
        return float("nan")
    return float((logits[mask].argmax(-1) == y[mask]).float().mean())


def train_node_classifier(
    model: torch.nn.Module,
    g,
    x: torch.Tensor,
    y: torch.Tensor,
    train_mask: torch.Tensor,
    val_mask: torch.Tensor,
    test_mask: torch.Tensor,
    epochs: int = 30,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    progress: bool = True,
    desc: str = "train",
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> list[EpochStats]:
    """Train with Adam on the training vertices; evaluate every epoch without dropout.

    Returns one :class:`EpochStats` per epoch. Accuracies come from an extra
    evaluation pass, which is not counted in ``seconds``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history: list[EpochStats] = []
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        profiler.mark_epoch(epoch)  # spans of this epoch (training step and evaluation) are tagged with it
        model.train()
        t0 = time.perf_counter()
        opt.zero_grad()
        logits = model(g, x)
        loss = F.cross_entropy(logits[train_mask], y[train_mask])
        loss.backward()
        opt.step()
        seconds = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            logits = model(g, x)
        stats = EpochStats(epoch, loss.item(), accuracy(logits, y, train_mask), accuracy(logits, y, val_mask), accuracy(logits, y, test_mask), seconds)
        history.append(stats)
        bar.set_postfix(loss=f"{stats.loss:.3f}", val=f"{stats.val_accuracy:.3f}", s=f"{seconds:.2f}")
        if on_epoch is not None:
            on_epoch(stats)
    return history
