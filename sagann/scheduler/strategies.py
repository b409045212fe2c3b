"""How one device's share of a multi-device, chained or distributed pass gets its blocks and what it records.

Each device runs the ordinary :class:`~sagann.scheduler.executor.Executor`
over the destination intervals it owns, with a :class:`SharedPass`
strategy: a device of a chain takes V_i's blocks from its
:class:`~sagann.scheduler.chains.ChainRelay` (the first device of the chain
reads them from the host, the others receive them device to device); every
device counts its host-link and peer bytes and logs one
:class:`~sagann.scheduler.records.StepRecord` per chunk, the simulator's
calibration.
"""
from __future__ import annotations

import threading

from sagann.scheduler.chains import ChainRelay, LinkCounter
from sagann.scheduler.executor import Block, Executor, Strategy
from sagann.scheduler.policy import Transfer
from sagann.scheduler.records import StepRecord
from sagann.scheduler.schedule import BACKWARD, FORWARD, ChunkStep, PassPlan

__all__ = ["SharedPass"]


class SharedPass(Strategy):
    """One device's part of a pass that several devices (or ranks) share.

    Args:
        link: the graph's counter of host-link and device-to-device bytes.
        step_log: the graph's list of :class:`StepRecord`.
        call_no: the layer call's number on the graph (for the records).
    """

    def __init__(self, link: LinkCounter, step_log: list, call_no: int):
        self.link, self.step_log, self.call_no = link, step_log, call_no
        self.relays: dict[str, tuple[ChainRelay, int]] = {}  # phase -> (relay, position in chain)
        self.edge_seconds: dict[str, float] = {}  # phase -> seconds of its edge stage
        self.prefetch: dict[str, int] = {}  # phase -> prefetch depth of its plan
        self._phase = FORWARD
        self._relay: tuple[ChainRelay, int] | None = None
        self._sync: dict[tuple[int, int], tuple] = {}  # step -> the relay's key of its block
        self._held: tuple[tuple, Block] | None = None  # the last relayed block, while the next steps may share it
        self._cancel = threading.Event()
        self._block_bytes: dict[tuple[int, int], tuple[int, int]] = {}  # step -> (host bytes, block bytes) of its V_i block

    def begin(self, ex: Executor, plan: PassPlan, host: dict, names: tuple[str, ...]) -> None:
        self._relay, self._sync, self._cancel = self.relays.get(plan.phase), {}, threading.Event()
        self._phase = plan.phase
        if self._relay is None:
            return
        relay, position = self._relay
        requests: list[tuple[tuple, int]] = []
        if names:
            for r, (_, steps) in enumerate(plan.groups):
                for step in steps:
                    if step.transfer is not Transfer.FULL:
                        continue
                    i = step.key[0]
                    key = (r, i) if plan.phase == FORWARD else (i,)
                    self._sync[step.key] = key
                    if not requests or requests[-1][0] != key:
                        requests.append((key, i))
        relay.register(position, requests, host, names)

    def block(self, ex: Executor, step: ChunkStep, host: dict, names: tuple[str, ...]) -> tuple[Block, int]:
        key = self._sync.get(step.key)
        if key is None:
            block, nbytes = ex.host_block(step, host, names)
            self.link.add(nbytes, 0)
            self._block_bytes[step.key] = (nbytes, nbytes)
            return block, nbytes
        if self._held is not None:
            if self._held[0] == key:  # another chunk of the same row: the block this device already has
                self._block_bytes[step.key] = (0, 0)
                return self._held[1].acquire(), 0
            self._release_held()
        relay, position = self._relay
        d = relay.take(position, key, self._cancel)
        block = Block(d.scope, d.tensors)  # this step's reference
        self._held = (key, block.acquire())  # kept while the next steps may share it
        self.link.add(d.host_bytes, d.peer_bytes)
        self._block_bytes[step.key] = (d.host_bytes, d.host_bytes + d.peer_bytes)
        return block, d.host_bytes

    def after_step(self, ex: Executor, step: ChunkStep, times: tuple[float, float], moved: int) -> None:
        host_block, block = self._block_bytes.pop(step.key, (0, 0))
        backward = self._phase == BACKWARD
        index = sum(c.sent_index_bytes(backward, ex.narrow_index, ex.source_major and backward, ex.native_index) for c in step.subs)
        nnz = sum(c.nnz for c in step.subs)
        self.step_log.append(StepRecord(self.call_no, self._phase, ex.device.name, step.key, nnz, block, moved - host_block - index, index, *times))

    def after_pass(self, ex: Executor, plan: PassPlan, seconds: float) -> None:
        self.edge_seconds[plan.phase] = seconds
        self.prefetch[plan.phase] = plan.prefetch

    def stop(self) -> None:
        self._cancel.set()

    def end(self) -> None:
        self._release_held()

    def _release_held(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            held[1].release()
