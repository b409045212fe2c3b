"""HostMemory: RAM within the budget, memory-mapped spill files past it, nothing left on disk."""
import gc
import os
import sys
from pathlib import Path

import pytest
import torch

import sagann
from sagann import profiler
from sagann.scheduler.host import HostMemory, is_spilled, stage, stage_rows


def test_within_budget_stays_in_ram_and_past_it_spills(tmp_path):
    h = HostMemory("1MB", tmp_path)
    a = h.empty((100, 100))  # 40 kB
    b = h.empty((1000, 1000))  # 4 MB: over budget
    assert not is_spilled(a) and is_spilled(b) and is_spilled(b[10:20])
    assert h.resident_bytes == 40_000 and h.spilled_bytes == 4_000_000
    assert os.listdir(tmp_path) == [], "spill files are unlinked once mapped"
    b[:] = 2.5
    assert b.sum().item() == 2.5e6
    del b
    gc.collect()
    assert h.spilled_bytes == 0 and h.stats()["spilled_bytes_total"] == 4_000_000
    del a
    gc.collect()
    assert h.resident_bytes == 0


def test_a_spill_directory_it_made_itself_goes_with_the_budget():
    h = HostMemory("1MB")
    b = h.empty((1000, 1000))  # spilled into a temporary directory of its own
    where = h.spill_dir
    assert is_spilled(b) and where.is_dir()
    b[:] = 1.0
    del h  # its tensors keep it alive: the directory goes with the last of them
    gc.collect()
    assert b.sum().item() == 1e6 and where.is_dir()
    del b
    gc.collect()
    assert not where.exists()


def test_spilled_zeros_and_copies_hold_their_values(tmp_path):
    h = HostMemory(1, tmp_path)  # everything spills
    z = h.zeros((50, 7), torch.float32)
    assert is_spilled(z) and z.abs().sum().item() == 0
    src = torch.randn(30, 4)
    c = h.copy(src)
    assert is_spilled(c) and torch.equal(c, src)
    w = h.empty((5, 3), torch.long)
    w.fill_(-1)
    assert w.dtype == torch.long and (w == -1).all()


def test_unlimited_never_spills():
    h = HostMemory(None)
    t = h.empty((1000, 1000))
    assert not is_spilled(t) and not h.enabled and h.stats()["spill_files"] == 0


def test_staging_reads_spilled_rows_into_ram_with_a_disk_span(tmp_path):
    h = HostMemory(1, tmp_path)
    t = h.copy(torch.arange(40.0).view(10, 4))
    idx = torch.tensor([1, 7])
    with profiler.profile() as prof:
        rows = stage_rows(t, idx, chunk=(0, 1, 0))
        block = stage(t[2:5])
    assert not is_spilled(rows) and torch.equal(rows, t[idx])
    assert not is_spilled(block) and torch.equal(block, t[2:5])
    spans = prof.spans()
    assert [s.kind for s in spans] == ["disk", "disk"] and {s.track for s in spans} == {"disk"}
    assert spans[0].nbytes == 2 * 4 * 4 and spans[0].chunk == (0, 1, 0)
    ram = torch.ones(3)
    assert stage(ram) is ram and stage_rows(ram, torch.tensor([0])) is None


def test_saved_tensors_past_the_budget_are_spilled(tmp_path):
    h = HostMemory(1, tmp_path)
    x = torch.randn(600, 600, requires_grad=True)  # 1.4 MB >= the 1 MiB threshold
    with h.saved_tensors():
        y = torch.relu(x)
        loss = (y * y).sum()
    loss.backward()
    assert torch.allclose(x.grad, 2 * torch.relu(x))
    assert h.stats()["spilled_bytes_total"] >= 600 * 600 * 4


def test_bad_budget_and_spill_dir_are_refused(tmp_path):
    with pytest.raises(ValueError, match="memory size"):
        HostMemory("lots")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        HostMemory("1MB", f)


def test_exported_at_top_level():
    assert sagann.HostMemory is HostMemory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's thresholds: Linux only")
def test_a_passes_buffers_are_reused_inside_it_and_handed_back_at_its_end():
    """A sub-chunk-sized buffer freed and allocated again at every step is not page-faulted in every time; the pass's end returns it."""
    import resource

    from sagann.scheduler.host import HEAP_BLOCK_MAX, anon_rss_bytes, trim_freed_memory

    HostMemory()  # fixes glibc's thresholds for the process
    rows = (HEAP_BLOCK_MAX // 2) // (64 * 4)  # half the largest heap block: [rows, 64] float32
    pages = rows * 64 * 4 // 4096

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    trim_freed_memory()
    before = faults()
    for _ in range(20):  # a pass's steps
        t = torch.empty(rows, 64)
        t.fill_(1.0)
        del t
    # a fresh mapping per step faults all its pages 20 times; heap blocks fault once each (a fragmented heap may hand out a few)
    assert faults() - before < 10 * pages, "each step's buffer was page-faulted in afresh"
    held = anon_rss_bytes()
    trim_freed_memory()  # the pass's end
    assert anon_rss_bytes() <= held


def test_only_passes_of_many_steps_trim_the_heap(monkeypatch):
    """A pass of a few large steps leaves nothing for malloc_trim to return; one of many small sub-chunks does."""
    from sagann.chunks.synthetic import rmat
    from sagann.scheduler import executor
    from sagann.scheduler.devices import CpuDevice

    trims = []
    monkeypatch.setattr(executor, "trim_after_pass", lambda always=False: trims.append(1))
    n = 256
    ei, x = rmat(n, 8 * n, seed=1), torch.randn(n, 8)
    layer = sagann.nn.GCNConv(8, 8)
    for num_chunks, trimmed in ((1, False), (8, True)):
        trims.clear()
        g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, device=CpuDevice(copy_transfers=True))
        layer(g, x).sum().backward()
        steps = [r.steps for r in g.pass_log]
        assert bool(trims) == trimmed, (num_chunks, steps)
        assert len(trims) == sum(s >= executor.TRIM_MIN_STEPS for s in steps)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read RssAnon")
def test_a_pass_end_trims_only_where_rss_grew(monkeypatch):
    """Without a host budget the heaps are trimmed where anonymous RSS grew past the last trim's level by
    TRIM_RSS_GROWTH, and the level follows RSS down; with one (``always``) at every pass's end."""
    from sagann.scheduler import host

    rss, trims = {"now": 100 << 20}, []
    monkeypatch.setattr(host, "anon_rss_bytes", lambda: rss["now"])
    monkeypatch.setattr(host, "trim_freed_memory", lambda: trims.append(rss["now"]))
    monkeypatch.setattr(host, "_trim_floor", None)
    grow = host.TRIM_RSS_GROWTH
    assert host.trim_after_pass() and len(trims) == 1, "the first pass's end sets the level"
    rss["now"] += grow  # a pass that reused what the one before left
    assert not host.trim_after_pass()
    rss["now"] -= grow + grow // 2  # a pass ending below the level lowers it
    assert not host.trim_after_pass()
    rss["now"] += grow  # above the lowered level by the growth allowed, no more
    assert not host.trim_after_pass()
    rss["now"] += 1
    assert host.trim_after_pass() and len(trims) == 2
    assert host.trim_after_pass(always=True) and len(trims) == 3


def test_a_kept_heaps_pass_ends_trim_only_past_its_high_water_mark(fake_heap, monkeypatch):
    """Asked to keep freed memory, the level is the RSS a trim found: epochs growing back to it are not trimmed,
    a heap growing past it is; switching policy forgets the level."""
    from sagann.scheduler import host

    rss, trims = {"now": 300 << 20}, []
    monkeypatch.setattr(host, "anon_rss_bytes", lambda: rss["now"])
    monkeypatch.setattr(host, "trim_freed_memory", lambda: trims.append(rss["now"]))
    monkeypatch.setattr(host, "_trim_floor", None)
    grow = host.TRIM_RSS_GROWTH
    sagann.set_host_heap("keep")
    assert host.trim_after_pass() and len(trims) == 1, "the first pass's end sets the level: 300 MiB"
    rss["now"] = 100 << 20  # the trim handed most back ...
    assert not host.trim_after_pass()
    rss["now"] = (300 << 20) + grow  # ... and the next epoch grew back to the high-water mark: kept
    assert not host.trim_after_pass() and len(trims) == 1
    rss["now"] += 1
    assert host.trim_after_pass() and len(trims) == 2, "past the high-water mark by the growth allowed: trimmed"
    sagann.set_host_heap("return")
    assert host._trim_floor is None and len(trims) == 3, "switching to returning trims at once"
    rss["now"] = 100 << 20
    assert host.trim_after_pass() and len(trims) == 4
    rss["now"] += grow + 1  # a returning heap's level is where the trim left RSS
    assert host.trim_after_pass() and len(trims) == 5
    sagann.set_host_heap(None)


def test_a_host_budget_trims_after_every_pass_of_many_steps_and_checks_after_every_step(monkeypatch):
    """The host budget bounds RSS: its graph's passes of many steps trim whatever RSS says, and each step checks
    whether RSS grew (``trim_if_grown``); without a budget neither."""
    from sagann.chunks.synthetic import rmat
    from sagann.scheduler import executor
    from sagann.scheduler.devices import CpuDevice

    calls, checks = [], []
    monkeypatch.setattr(executor, "trim_after_pass", lambda always=False: calls.append(always))
    monkeypatch.setattr(executor, "trim_if_grown", lambda: checks.append(1))
    n = 256
    ei, x = rmat(n, 8 * n, seed=1), torch.randn(n, 8)
    layer = sagann.nn.GCNConv(8, 8)
    for host_memory, budgeted in ((None, False), ("1GB", True)):
        calls.clear()
        checks.clear()
        g = sagann.ChunkedGraph(ei, n, num_chunks=8, device=CpuDevice(copy_transfers=True), host_memory=host_memory)
        layer(g, x).sum().backward()
        assert calls and set(calls) == {budgeted}, (host_memory, calls)
        assert len(checks) == budgeted * sum(r.chunks for r in g.pass_log), "once a step, under a budget only"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read RssAnon")
def test_within_a_pass_the_heap_is_trimmed_where_rss_grew(monkeypatch):
    """Under a host budget a pass trims as it goes, where RSS grew TRIM_IN_PASS_GROWTH past the last trim's level,
    reading RSS at most every TRIM_CHECK_SECONDS; the level is what the trim left."""
    from sagann.scheduler import host

    rss, trims, clock, reads = {"now": 100 << 20}, [], {"t": 1000.0}, []
    monkeypatch.setattr(host, "anon_rss_bytes", lambda: reads.append(1) or rss["now"])
    monkeypatch.setattr(host, "trim_freed_memory", lambda: trims.append(rss["now"]))
    monkeypatch.setattr(host.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(host, "_trim_floor", None)
    monkeypatch.setattr(host, "_next_trim_check", 0.0)
    grow, every = host.TRIM_IN_PASS_GROWTH, host.TRIM_CHECK_SECONDS
    assert not host.trim_if_grown() and host._trim_floor == 100 << 20, "the first check sets the level"
    rss["now"] += grow + 1
    assert not host.trim_if_grown() and len(reads) == 1, "checked again only after TRIM_CHECK_SECONDS"
    clock["t"] += every
    assert host.trim_if_grown() and len(trims) == 1
    assert host._trim_floor == rss["now"], "the level is what the pass holds after the trim"
    clock["t"] += every
    rss["now"] += grow
    assert not host.trim_if_grown() and len(trims) == 1
    clock["t"] += every
    rss["now"] += 1
    assert host.trim_if_grown() and len(trims) == 2


class _FakeLibc:
    """glibc's malloc knobs, recorded: the policy's calls without changing this process's heap."""

    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def fake_heap(monkeypatch):
    import weakref

    from sagann.scheduler import host

    libc = _FakeLibc()
    monkeypatch.setattr(host, "_libc", lambda: libc)
    monkeypatch.setattr(host, "_heap_applied", None)
    monkeypatch.setattr(host, "_heap_chosen", None)
    monkeypatch.setattr(host, "_budgeted", weakref.WeakSet())
    monkeypatch.delenv(host.HEAP_ENV, raising=False)
    return libc


def test_the_heap_keeps_freed_memory_on_request_unless_a_host_budget_bounds_rss(fake_heap):
    import gc

    from sagann.scheduler import host

    HostMemory()
    assert sagann.host_heap() == "return", "returning is the default"
    assert sagann.set_host_heap("keep") == "keep"
    assert ("mallopt", -3, host.KEPT_BLOCK_MAX) in fake_heap.calls
    fake_heap.calls.clear()
    budgeted = HostMemory("1GB")
    assert sagann.host_heap() == "return"
    assert fake_heap.calls == [("mallopt", -3, host.HEAP_BLOCK_MAX), ("mallopt", -1, host.HEAP_TOP_KEPT), ("malloc_trim", 0)]
    assert sagann.set_host_heap("keep") == "return", "a live host budget keeps the heap returning memory"
    del budgeted
    gc.collect()
    HostMemory()
    assert sagann.host_heap() == "keep", "the user's choice is back for graphs made once no budget lives"
    assert sagann.set_host_heap(None) == "return"


def test_the_heap_policy_is_validated(fake_heap, monkeypatch):
    from sagann.scheduler import host

    with pytest.raises(ValueError, match="one of"):
        sagann.set_host_heap("cache")
    monkeypatch.setenv(host.HEAP_ENV, "return")
    HostMemory()
    assert sagann.host_heap() == "return"
    monkeypatch.setenv(host.HEAP_ENV, "sometimes")
    with pytest.raises(ValueError, match=host.HEAP_ENV):
        HostMemory()


_FAULTS_PER_EPOCH = """
import resource, sys, torch, sagann
from sagann.chunks.synthetic import rmat
from sagann.engine.models import GraphSAGE
n = 20_000  # vertex-sized temporaries of 5 MiB: above the returning heap's largest block
ei, x, y = rmat(n, 8 * n, seed=2), torch.randn(n, 64), torch.randint(0, 4, (n,))
g = sagann.ChunkedGraph(ei, n)
model = GraphSAGE(64, 64, 4)
opt = torch.optim.Adam(model.parameters())
counts = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(g, x), y).backward()
    opt.step()
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sagann.host_heap(), min(counts[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's thresholds: Linux only")
def test_a_kept_heap_does_not_fault_an_epochs_temporaries_in_again():
    """Measured by the kernel's fault count: in memory, an epoch after the first page-faults a fraction of what it does
    when freed temporaries go back to the OS."""
    import os
    import subprocess

    faults = {}
    for policy in ("keep", "return"):
        env = {**os.environ, "SAGANN_HOST_HEAP": policy}
        out = subprocess.run([sys.executable, "-c", _FAULTS_PER_EPOCH], env=env, capture_output=True, text=True, timeout=300, check=True)
        applied, count = out.stdout.split()
        assert applied == policy
        faults[policy] = int(count)
    assert faults["return"] > 1000, f"the returning heap should fault its temporaries in at every epoch: {faults}"
    assert faults["keep"] * 4 < faults["return"], faults
