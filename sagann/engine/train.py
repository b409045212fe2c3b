"""A full-graph node-classification loop: plain torch training around out-of-core layers.

:func:`train_node_classifier` is the loop (optionally checkpointed and
resumable, see :mod:`sagann.engine.checkpoint`); :func:`run_training` is
``sagann train``: a dataset directory in, a result dict out.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import random
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from sagann import kernels, profiler
from sagann.chunks.dataset import DatasetError, load_dataset
from sagann.chunks.stamp import verify_once, write_stamp
from sagann.engine.checkpoint import CheckpointError, Checkpointer
from sagann.engine.foresight import Forecast, forecast_epoch
from sagann.engine.graph import ChunkedGraph
from sagann.engine.loss import masked_accuracy, masked_cross_entropy
from sagann.engine.models import MODELS, build_model
from sagann.scheduler.config import ScheduleConfig
from sagann.scheduler.devices import CpuDevice, Device
from sagann.scheduler.host import AnonMeter, HostMemory
from sagann.scheduler.progress import PassProgress, watch
from sagann.units import format_bytes, parse_bytes

__all__ = ["EpochStats", "TrainConfig", "TrainingInterrupted", "accuracy", "format_epoch", "format_profile", "format_train_report", "profiled", "run_training", "train_node_classifier"]

SPLITS = ("train", "val", "test")


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


class TrainingInterrupted(RuntimeError):
    """SIGTERM stopped a checkpointed run; the checkpoint holds its last finished epoch."""

    def __init__(self, message: str, epochs_done: int):
        super().__init__(message)
        self.epochs_done = epochs_done


class _SigtermStop:
    """SIGTERM only sets a flag; the run stops at the next chunk step or epoch, never inside a write or a lock.

    Raising from the signal handler itself would land at any bytecode: in a
    checkpoint's atomic write, a prefetcher's cleanup, a lock's release. The
    executor's progress hooks give safe points instead (a step of a pass is
    a few milliseconds to seconds), and the epoch loop checks between epochs.
    """

    def __init__(self):
        self.requested = False

    def check(self) -> None:
        if self.requested and threading.current_thread() is threading.main_thread():
            raise TrainingInterrupted("SIGTERM", -1)

    def began(self, key: int, name: str, phase: str, steps: int) -> None:
        self.check()

    def stepped(self, key: int, nbytes: int) -> None:
        self.check()

    def ended(self, key: int) -> None:
        pass  # a pass's cleanup: never raise there


@contextlib.contextmanager
def _stop_on_sigterm(active: bool) -> Iterator[_SigtermStop]:
    """Inside, SIGTERM makes the training loop raise :class:`TrainingInterrupted` at its next safe point (main thread only)."""
    stop = _SigtermStop()
    if not active or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum, frame):
        stop.requested = True

    previous = signal.signal(signal.SIGTERM, request)
    try:
        with watch(stop):
            yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def accuracy(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
    """The fraction of masked rows predicted right (a block of rows at a time: no copy of the masked logits)."""
    return masked_accuracy(logits, y, mask)


@contextlib.contextmanager
def profiled(profile_dir) -> Iterator[dict]:
    """Profile the block when ``profile_dir`` is set, then write trace.json, timeline.png and summary.json there.

    Yields a dict that, after the block, holds ``profile`` (the per-epoch
    summaries as dicts) and ``profile_dir``; it stays empty without a directory.
    """
    result: dict = {}
    if not profile_dir:
        yield result
        return
    with profiler.profile() as prof:
        yield result
    calls = {b: sum(prof.counters(kernels.CALL_COUNTER + b).values()) for b in kernels.available_backends()}
    result["kernel_calls"] = {b: n for b, n in calls.items() if n}  # which kernel backend ran, and how often
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", profiler.NoPlotWarning)
        result["profile"] = [s.to_dict() for s in profiler.save_profile(prof, profile_dir)]
    result["profile_dir"] = str(profile_dir)
    result["profile_files"] = sorted(p.name for p in Path(profile_dir).iterdir() if p.name in PROFILE_FILES)
    for w in caught:
        if issubclass(w.category, profiler.NoPlotWarning):
            result["profile_note"] = str(w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


PROFILE_FILES = ("trace.json", "timeline.png", "summary.json")


def format_profile(r: dict) -> list[str]:
    """The report's lines on a profile: where it went, what is there (and how to get a missing PNG), the table."""
    if "profile" not in r:
        return []
    files = ", ".join(r.get("profile_files", PROFILE_FILES))
    lines = [f"profile written to {r['profile_dir']} ({files}):"]
    if r.get("profile_note"):
        lines.append(r["profile_note"])
    return lines + [profiler.format_table([profiler.EpochSummary.from_dict(e) for e in r["profile"]], notes=True)]


def _run_fingerprint(model: torch.nn.Module, g, x: torch.Tensor, masks: tuple[torch.Tensor, ...], lr: float, weight_decay: float) -> dict:
    """What a checkpoint must agree on to continue this run (epochs may grow)."""
    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return {
        "model_class": type(model).__name__,
        "parameter_shapes": hashlib.sha256(shapes.encode()).hexdigest()[:16],
        "optimizer": "Adam",
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "num_vertices": int(x.shape[0]),
        "num_edges": None if g is None else int(g.num_edges),
        "num_features": int(x.shape[1]),
        **{f"num_{name}": int(m.sum()) for name, m in zip(SPLITS, masks)},
    }


def _history_from(state: dict, path) -> list[EpochStats]:
    names = {f.name for f in fields(EpochStats)}
    if not all(isinstance(h, dict) and set(h) == names for h in state["history"]):
        raise CheckpointError(f"{path} has a malformed loss history; delete it to start over")
    return [EpochStats(**h) for h in state["history"]]


def _saved_under_host_budget(g):
    """Autograd's saved activations placed under the graph's host-memory budget (spilled past it)."""
    host = getattr(g, "host", None)
    return host.saved_tensors() if host is not None else contextlib.nullcontext()


def check_training_inputs(g, x, y, masks: tuple, num_classes: int | None = None) -> None:
    """Shapes, dtypes and ranges of what :func:`train_node_classifier` trains on: one clear line each.

    Checked here, at the API boundary, so that a wrong mask or label fails
    before the first epoch instead of as an IndexError deep inside torch.
    """
    n = None if g is None else g.num_vertices
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or (n is not None and x.shape[0] != n):
        raise ValueError(f"x must be a [num_vertices={n}, F] tensor, got {list(getattr(x, 'shape', []))}")
    n = int(x.shape[0])
    if not isinstance(y, torch.Tensor) or y.shape != (n,) or y.dtype != torch.int64:
        raise ValueError(f"y must be an int64 tensor of shape [{n}] (one class id per vertex), got {getattr(y, 'dtype', type(y).__name__)} {list(getattr(y, 'shape', []))}")
    top = "num_classes" if num_classes is None else num_classes
    if n and (int(y.min()) < 0 or (num_classes is not None and int(y.max()) >= num_classes)):
        raise ValueError(f"y holds class ids {int(y.min())}..{int(y.max())} outside [0, {top}); fix the labels")
    for name, m in zip(SPLITS, masks):
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.shape != (n,):
            raise ValueError(
                f"the {name} mask must be a bool tensor of shape [{n}] (one entry per vertex), got {getattr(m, 'dtype', type(m).__name__)} {list(getattr(m, 'shape', []))}; "
                f"for an index list use m = torch.zeros({n}, dtype=torch.bool); m[idx] = True"
            )


def train_node_classifier(
    model: torch.nn.Module,
    g,
    x: torch.Tensor,
    y: torch.Tensor,
    train_mask: torch.Tensor,
    val_mask: torch.Tensor,
    test_mask: torch.Tensor,
    *,
    epochs: int = 30,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    progress: bool = True,
    desc: str = "train",
    on_epoch: Callable[[EpochStats], None] | None = None,
    checkpoint_dir=None,
    fingerprint: dict | None = None,
    on_resume: Callable[[int], None] | None = None,
) -> list[EpochStats]:
    """Train with Adam on the training vertices; evaluate every epoch without dropout.

    Returns one :class:`EpochStats` per epoch. Accuracies come from an extra
    evaluation pass, which is not counted in ``seconds``.

    With ``checkpoint_dir``, model, optimizer, history and RNG state are saved
    atomically after every epoch; a checkpoint already there is resumed
    (``on_resume`` gets its epoch count) and the returned history starts with
    its epochs. On the CPU a resumed run's losses equal an uninterrupted
    run's bit for bit when the chunk order is deterministic
    (``ScheduleConfig(order="natural")``). ``fingerprint`` adds plain values
    (dataset id, seed, ...) that a checkpoint must match, besides the model's
    parameter shapes, the optimizer settings and the data sizes.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    check_training_inputs(g, x, y, (train_mask, val_mask, test_mask))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history: list[EpochStats] = []
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = Checkpointer(checkpoint_dir, {**_run_fingerprint(model, g, x, (train_mask, val_mask, test_mask), lr, weight_decay), **(fingerprint or {})})
        state = ckpt.load()
        if state is not None:
            history = _history_from(state, ckpt.path)
            if history:
                _replay_earlier_calls(model, g, x, len(history))
            ckpt.restore(state, model, opt)  # last: restores the RNG state the next epoch starts from
            if on_resume is not None:
                on_resume(len(history))
    start = len(history)
    bar = tqdm(range(start, epochs), desc=desc, disable=not progress, leave=False, initial=start, total=epochs)
    saved = start
    stop = None
    try:
        bars = watch(PassProgress(tty=True)) if progress and sys.stderr.isatty() else contextlib.nullcontext()  # a bar per pass
        with _stop_on_sigterm(ckpt is not None) as stop, bars:
            for epoch in bar:
                stop.check()
                saved = _train_epoch(_Loop(model, g, x, y, (train_mask, val_mask, test_mask), opt, history, ckpt, bar, on_epoch), epoch, saved)
    except Exception:
        # raised at a safe point, or wrapped on its way out (autograd, a device thread): the flag decides
        if stop is None or not stop.requested:
            raise
        if ckpt is not None and saved < len(history):  # an epoch finished but its save was cut short: save it now
            ckpt.save(model, opt, len(history), [s.to_dict() for s in history])
            saved = len(history)
        raise TrainingInterrupted(
            f"stopped by SIGTERM during epoch {saved + 1}; the checkpoint in {checkpoint_dir} holds the {saved} finished epochs: "
            f"run the same command again to resume", saved) from None
    return history


@dataclass
class _Loop:
    """What every epoch of :func:`train_node_classifier` works on."""

    model: torch.nn.Module
    g: object
    x: torch.Tensor
    y: torch.Tensor
    masks: tuple
    opt: torch.optim.Optimizer
    history: list
    ckpt: object
    bar: object
    on_epoch: object


def _train_epoch(loop: _Loop, epoch: int, saved: int) -> int:
    """One training step and evaluation, saved to the checkpoint if any; returns the epochs the checkpoint holds."""
    model, g, x, y, opt, history, ckpt, bar, on_epoch = loop.model, loop.g, loop.x, loop.y, loop.opt, loop.history, loop.ckpt, loop.bar, loop.on_epoch
    train_mask, val_mask, test_mask = loop.masks
    profiler.mark_epoch(epoch)  # spans of this epoch (training step and evaluation) are tagged with it
    model.train()
    t0 = time.perf_counter()
    opt.zero_grad()
    with _saved_under_host_budget(g):
        logits = model(g, x)
        loss = masked_cross_entropy(logits, y, train_mask, getattr(g, "host", None)) if bool(train_mask.any()) else None
    if loss is not None:
        loss.backward()
        opt.step()
    else:  # nothing to learn from (e.g. a graph without vertices): the loss is undefined, nothing moves
        logits.sum().backward()  # still runs the backward passes, as a real epoch would
        loss = torch.tensor(float("nan"))
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        logits = model(g, x)
    stats = EpochStats(epoch, loss.item(), accuracy(logits, y, train_mask), accuracy(logits, y, val_mask), accuracy(logits, y, test_mask), seconds)
    history.append(stats)
    if ckpt is not None:
        ckpt.save(model, opt, len(history), [s.to_dict() for s in history])
        saved = len(history)
    bar.set_postfix(loss=f"{stats.loss:.3f}", val=f"{stats.val_accuracy:.3f}", s=f"{seconds:.2f}")
    if on_epoch is not None:
        on_epoch(stats)
    return saved


def _replay_earlier_calls(model: torch.nn.Module, g: ChunkedGraph, x: torch.Tensor, epochs_done: int) -> None:
    """A training-mode call and evaluation calls on x, so a resumed run computes what the uninterrupted one did.

    The uninterrupted run had called the model on x before this epoch, so
    its first layer ran on a cached Gather (``sagann.engine.constant``: from
    the inputs' second call) and, from the call that cached it, the graph
    may have moved to a coarser partition; without these calls the resumed
    run's epochs would stream or chunk differently, equal up to fp32
    rounding, not bit for bit. Each epoch ended with an evaluation call on
    x (and one training call on x where no dropout draws a new input), so by
    its second epoch the uninterrupted run had seen x at least twice, after
    its first at least once: replaying ``min(2, epochs_done)`` calls reaches
    the same state (a second sighting in the resumed epoch itself comes
    before anything that depends on it, as it did in the uninterrupted
    run). First one training-mode call under autograd (no backward): the
    planner narrows its sub-chunks for the calls whose backward needs more
    room when it first sees them, as the uninterrupted run did in its first
    epoch; without it the resumed epoch's first layers would run on the
    wider sub-chunks an evaluation call allows. Output discarded; the
    checkpoint's RNG state is restored after the replay (a dropout's draws
    are undone).
    """
    was_training = model.training
    model.train()
    with torch.enable_grad():
        model(g, x)
    if g.schedule.cache_gather:
        model.eval()
        with torch.no_grad():
            for _ in range(min(2, epochs_done)):
                model(g, x)
    model.train(was_training)


# ---------------------------------------------------------------- sagann train
TRANSFER_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}  # by the names the CLI takes


@dataclass(frozen=True)
class TrainConfig:
    """Options of ``sagann train``; validated on construction.

    ``host_memory`` bounds the RAM taken by features, layer outputs,
    gradients and saved activations; past it they live in memory-mapped
    spill files under ``spill_dir`` (default: a temporary directory). ``order``
    defaults to ``"natural"`` with a checkpoint (so a resumed run matches an
    uninterrupted one bit for bit) and to ``"profile"`` without one.
    """

    dataset: str
    model: str = "gcn"
    epochs: int = 30
    hidden: int = 64
    lr: float = 0.01
    weight_decay: float = 5e-4
    device: str = "cpu"
    memory_budget: int | str | None = "64MB"
    host_memory: int | str | None = None
    spill_dir: str | None = None
    order: str | None = None
    seed: int = 0
    checkpoint: str | None = None
    profile: str | None = None
    meter: bool = False  # measure device memory as allocated (measured_device_peak_bytes); slows a CPU run
    verify: bool = True  # hash the dataset's files first, unless a stamp says they are unchanged since
    transfer_dtype: str = "float32"  # rows cross the link in float32, bfloat16 or float16 (ScheduleConfig.transfer_dtype)
    dropout: float = 0.5  # on the features and between the layers; 0 lets the first layer's Gather be cached in training

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; known models: {', '.join(MODELS)}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {self.device!r}; known devices: cpu, cuda")
        if self.epochs < 1 or self.hidden < 1:
            raise ValueError(f"epochs and hidden must be >= 1, got epochs={self.epochs}, hidden={self.hidden}")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}")
        parse_bytes(self.memory_budget)
        parse_bytes(self.host_memory)
        if self.order is None:
            object.__setattr__(self, "order", "natural" if self.checkpoint is not None else "profile")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.transfer_dtype not in TRANSFER_DTYPES:
            raise ValueError(f"unknown transfer dtype {self.transfer_dtype!r}; known: {', '.join(TRANSFER_DTYPES)}")
        self.schedule()

    def schedule(self) -> ScheduleConfig:
        return ScheduleConfig(order=self.order, transfer_dtype=TRANSFER_DTYPES[self.transfer_dtype])


def _make_device(config: TrainConfig) -> Device:
    if config.device == "cuda":
        from sagann.scheduler.cuda import CudaDevice, cuda_available

        if not cuda_available():
            raise ValueError("device='cuda': torch sees no CUDA GPU on this machine; use device='cpu'")
        return CudaDevice(config.memory_budget)
    return CpuDevice(config.memory_budget, meter=config.meter or None)  # None: SAGANN_METER decides


def _open(path, host: HostMemory, verify: bool = True):
    """Dataset, features (under the host budget), labels and the train/val/test masks as torch tensors; and how it was verified."""
    checked = verify_once(path) if verify else "skipped"
    ds = load_dataset(path, mmap=True, verify=False)  # sizes, headers and the chunk index: always
    if ds.x is None or ds.y is None:
        missing = " and ".join(n for n, a in (("features.npy", ds.x), ("labels.npy", ds.y)) if a is None)
        raise DatasetError(f"{ds.path} has no {missing}; save the dataset with x=... and y=... to train on it")
    missing = [m for m in SPLITS if m not in ds.masks]
    if missing:
        raise DatasetError(
            f"{ds.path} has no {'/'.join(missing)} mask (masks found: {', '.join(ds.masks) or 'none'}); "
            f"save the dataset with masks={{'train': ..., 'val': ..., 'test': ...}}"
        )
    n, f = (int(v) for v in ds.x.shape)
    # features and the logits are alive together in every training step: at least what they take beyond the budget spills
    host.check_disk_room(4 * n * (f + max(ds.num_classes, 1)) - (host.budget or 0), "the features and the model's output")
    x = _load_rows(host, ds.x, np.float32, "features")
    y = _load_rows(host, ds.y, np.int64, "labels")
    masks = tuple(_load_rows(host, ds.masks[m], np.bool_, f"{m} mask") for m in SPLITS)
    return ds, x, y, masks, checked


def _load_rows(host: HostMemory, a: np.ndarray, dtype, what: str) -> torch.Tensor:
    """A dataset array (memory-mapped) copied into a tensor under the host budget, 64 MiB of rows at a time."""
    out = host.empty(tuple(a.shape), torch.from_numpy(np.empty(0, dtype=dtype)).dtype, what)
    row = max(1, np.dtype(dtype).itemsize * int(np.prod(a.shape[1:], dtype=np.int64)))
    step = max(1, (64 << 20) // row)
    for lo in range(0, int(a.shape[0]), step):
        out[lo : lo + step] = torch.from_numpy(np.array(a[lo : lo + step], dtype=dtype))
    return out


def run_training(
    config: TrainConfig,
    progress: bool = False,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_resume: Callable[[int], None] | None = None,
    on_forecast: Callable[[Forecast], None] | None = None,
) -> dict:
    """Train ``config.model`` on a dataset directory; the keys are a contract of ``sagann train --json``.

    With ``on_forecast``, the plan's predicted epoch time (and any much
    faster larger budget) is estimated before training and handed to it
    (:mod:`sagann.engine.foresight`).
    """
    with AnonMeter() as anon:
        return _run_training(config, progress, on_epoch, on_resume, on_forecast, anon)


def _run_training(config: TrainConfig, progress, on_epoch, on_resume, on_forecast, anon: AnonMeter) -> dict:
    device = _make_device(config)
    host = HostMemory(config.host_memory, config.spill_dir)
    ds, x, y, masks, verified = _open(config.dataset, host, config.verify)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    check_training_inputs(None, x, y, masks, ds.num_classes)
    # a graph without vertices has no classes; one output keeps the model well formed
    model = build_model(config.model, int(x.shape[1]), config.hidden, max(ds.num_classes, 1), dropout=config.dropout).to(device.torch_device)
    g = ChunkedGraph.from_partition(ds.partition, device=device, schedule=config.schedule(), host_memory=host)
    run_id = {
        "dataset": hashlib.sha256(json.dumps(ds.manifest["files"], sort_keys=True).encode()).hexdigest()[:16],
        "model_name": config.model,
        "hidden": config.hidden,
        "seed": config.seed,
    }
    if config.transfer_dtype != "float32":  # 16-bit rows round differently: a checkpoint resumes only its own kind (float32 ones as before)
        run_id["transfer_dtype"] = config.transfer_dtype
    if config.dropout != 0.5:  # another dropout draws other masks (the default's checkpoints keep their fingerprint)
        run_id["dropout"] = config.dropout
    forecast = forecast_epoch(model, g, int(x.shape[1]), seed=config.seed) if on_forecast is not None else None
    if forecast is not None:
        on_forecast(forecast)
    resumed: list[int] = []

    def resume(epoch: int) -> None:
        resumed.append(epoch)
        if on_resume is not None:
            on_resume(epoch)

    t0 = time.perf_counter()
    with profiled(config.profile) as prof:
        history = train_node_classifier(
            model, g, x, y, *masks, epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay,
            progress=progress, desc=config.model, on_epoch=on_epoch,
            checkpoint_dir=config.checkpoint, fingerprint=run_id, on_resume=resume,
        )
        seconds = time.perf_counter() - t0
    if verified == "sha256":
        write_stamp(ds.path)  # the next run skips the hashing while the files stay as they are
    last = history[-1]
    return {
        "dataset": str(ds.path),
        "model": config.model,
        "epochs": len(history),
        "num_vertices": ds.partition.num_vertices,
        "num_edges": ds.partition.num_edges,
        "num_chunks": g.num_chunks if g.num_chunks is not None else ds.partition.num_chunks,
        "memory_budget_bytes": device.memory_budget,
        "transfer_dtype": config.transfer_dtype,
        "kernel_backend": device.kernel_backend if g.backend == "auto" else g.backend,
        **host.stats(),  # host_memory_bytes, peak_resident_bytes, spilled_bytes_total, ...
        "peak_host_anon_bytes": anon.read(),  # sampled from /proc since the start: what the OS charged
        "peak_device_bytes": device.peak_bytes,
        "measured_device_peak_bytes": device.measured_peak_bytes,  # None: not metered
        "accuracy": last.test_accuracy,
        "val_accuracy": last.val_accuracy,
        "train_accuracy": last.train_accuracy,
        "losses": [s.loss for s in history],
        "epoch_seconds": [s.seconds for s in history],
        "train_seconds_total": seconds,
        "resumed_from_epoch": resumed[0] if resumed else None,
        "checkpoint": None if config.checkpoint is None else str(config.checkpoint),
        "forecast": None if forecast is None else forecast.to_dict(),  # estimated before training
        "verified": verified,  # sha256 (every file hashed), stamp (unchanged since a verified run) or skipped
        **prof,
    }


def format_epoch(s: EpochStats, epochs: int) -> str:
    return (
        f"epoch {s.epoch + 1:>{len(str(epochs))}}/{epochs}  loss {s.loss:.4f}  "
        f"train {s.train_accuracy:.3f}  val {s.val_accuracy:.3f}  test {s.test_accuracy:.3f}  {s.seconds:.2f} s"
    )


def _measured(r: dict) -> str:
    m = r.get("measured_device_peak_bytes")
    return "" if m is None else f" (measured {format_bytes(m)})"


def format_train_report(r: dict) -> str:
    sec = np.asarray(r["epoch_seconds"])
    lines = [
        f"dataset {r['dataset']}: {r['num_vertices']:,} vertices, {r['num_edges']:,} edges, P = {r['num_chunks']} chunks; model {r['model']}, {r['epochs']} epochs",
        f"peak device bytes {format_bytes(r['peak_device_bytes'])}{_measured(r)} of a {format_bytes(r['memory_budget_bytes'])} budget; "
        f"epoch time (train step) median {np.median(sec):.3f} s",
        f"test accuracy {r['accuracy']:.3f} (val {r['val_accuracy']:.3f}, train {r['train_accuracy']:.3f}) after the last epoch",
    ]
    if r.get("transfer_dtype", "float32") != "float32":
        lines.append(f"rows crossed the host link in {r['transfer_dtype']} (kernels computed in float32)")
    if r["host_memory_bytes"] is not None:
        lines.append(f"host memory budget {format_bytes(r['host_memory_bytes'])}: peak {format_bytes(r['peak_resident_bytes'])} of engine tensors in RAM, "
                     f"{format_bytes(r['spilled_bytes_total'])} spilled to {r['spill_files']} memory-mapped files")
    if r.get("forecast"):
        lines.append(f"predicted training step ~{r['forecast']['plan']['epoch_seconds']:.3g} s per epoch before training (an estimate), measured median {np.median(sec):.3g} s")
    if r.get("verified") in ("stamp", "skipped"):
        lines.append("dataset not hashed (--no-verify)" if r["verified"] == "skipped" else "dataset not hashed again: its files are unchanged since a verified run")
    if r["checkpoint"]:
        lines.append(f"checkpoint: {r['checkpoint']}")
    return "\n".join(lines + format_profile(r))
