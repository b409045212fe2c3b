"""Out of device memory during a pass: re-plan with a finer partition and run the pass again.

The planner predicts the device peak from a model (``sagann.scheduler.planner``);
a model can be wrong (a user function's temporaries, another process on the
GPU, allocator fragmentation). When a pass runs out of memory anyway — the
budget ledger's :class:`~sagann.scheduler.devices.BudgetExceeded` on a
``CpuDevice``, ``torch.cuda.OutOfMemoryError`` on a GPU, raised in the
compute thread or in the loader (then wrapped in a ``LoaderError``) — the
pass has already released everything it held (scopes close on the way out),
so it can simply run again on a finer partition
(:meth:`sagann.scheduler.planner.Planner.refine`). A pass depends on the partition only for its
order of summation: what it saves for backward is per vertex, so a forward
run at one P and a backward re-run at another still give the gradients of
the same function. After ``ScheduleConfig.max_replans`` re-plans of one pass
the error is raised as :class:`BudgetTooSmall`, naming what was tried.
"""
from __future__ import annotations

import logging
from typing import Callable, TypeVar

import torch

from sagann.engine.graph import Replan
from sagann.scheduler.devices import BudgetExceeded
from sagann.scheduler.num_chunks import PassPlanTooLarge
from sagann.scheduler.planner import BudgetTooSmall
from sagann.units import format_bytes

log = logging.getLogger("sagann")

T = TypeVar("T")
_CUDA_OOM = getattr(torch.cuda, "OutOfMemoryError", None) or getattr(torch, "OutOfMemoryError", None)


def device_oom(exc: BaseException) -> BaseException | None:
    """The out-of-memory error behind ``exc`` (itself, or a cause such as a loader's), or None.

    A pass plan whose dry run does not fit (:class:`PassPlanTooLarge`) counts
    too: the budget would be exceeded, only found before the pass runs.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (BudgetExceeded, PassPlanTooLarge)) or (_CUDA_OOM is not None and isinstance(exc, _CUDA_OOM)):
            return exc
        exc = exc.__cause__
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def run_with_replans(call, phase: str, attempt: Callable[[object], T]) -> tuple[object, T]:
    """``attempt(call)``; on a device out-of-memory, refine the graph's partition and attempt again.

    ``call`` is a ``_LayerCall``; returns the call that succeeded (it may run
    on a finer partition than the one given) and what ``attempt`` returned.
    """
    if not hasattr(call, "on_partition"):  # ranks of a process group: one rank cannot re-plan alone
        return call, attempt(call)
    g = call.g
    first_p, first_sub = call.p.num_chunks, call.p.sub_chunk_nnz
    tries = 0
    while True:
        try:
            return call, attempt(call)
        except Exception as exc:
            oom = device_oom(exc)
            if oom is None:
                raise
            device = getattr(exc, "sagann_device", None) or call.device  # several devices: the one that failed
            if tries >= g.schedule.max_replans:
                if tries == 0:
                    raise
                raise BudgetTooSmall(
                    f"{device.name} ran out of memory in the {phase} of {call.name} even after {tries} re-plans "
                    f"(P {first_p} -> {call.p.num_chunks}, sub-chunks of at most {first_sub:,} -> {call.p.sub_chunk_nnz:,} edges; "
                    f"{_first_line(oom)}); raise the memory budget ({format_bytes(device.memory_budget)}) or ScheduleConfig(max_replans=...)"
                ) from exc
            finer = g.planner.refine(call.shape, call.fused)
            if finer is None:
                exc.add_note(
                    f"sagann could not re-plan: "
                    + ("num_chunks is fixed; pass num_chunks=None to let sagann choose more chunks" if g.planner.fixed_chunks is not None else f"P={call.p.num_chunks} with sub-chunks of {call.p.sub_chunk_nnz} edges is the finest partition")
                )
                raise
            tries += 1
            if _CUDA_OOM is not None and isinstance(oom, _CUDA_OOM) and torch.cuda.is_available():
                torch.cuda.empty_cache()  # give the failed pass's cached blocks back before the retry
            record = _record(call, phase, finer, oom)
            g.replans.append(record)
            log.warning(
                "sagann: %s ran out of memory in the %s of %s with P=%d (%s); re-planning with P=%d and sub-chunks of at most %d edges (re-plan %d of at most %d)",
                device.name, phase, call.name, record.chunks[0], record.reason, finer.num_chunks, finer.sub_chunk_nnz, tries, g.schedule.max_replans,
            )
            call = call.on_partition(finer)


def _record(call, phase: str, finer, oom: BaseException) -> Replan:
    reason = _first_line(oom)
    return Replan(call.name, phase, (call.p.num_chunks, finer.num_chunks), (call.p.sub_chunk_nnz, finer.sub_chunk_nnz), reason[:200])
