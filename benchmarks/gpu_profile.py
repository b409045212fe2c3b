"""Where an out-of-core GPU epoch's time and device memory go: the figures behind a missed gpu_check target.

One command on a machine with an NVIDIA GPU (about a minute)::

    python benchmarks/gpu_profile.py --out results/

It measures, each printed and written to ``gpu_profile.json``:

1. **host gather**: rows gathered into a pinned block with
   ``torch.index_select(out=...)`` (what every selective load does on the
   host before its copy), a plain copy into pinned memory, and the pinned
   copy to the GPU, in GB/s. The first bounds the H2D stage when it is
   slower than the link.
2. **launch cost**: one fused ``gspmm`` call on a 16-vertex sub-chunk, per
   backend, in microseconds: the fixed cost every streamed step pays at least once.
3. **allocation sites**: the out-of-core layer runs of
   ``tests/scheduler/test_cuda_device.py`` and the gpu_check GCN, each
   under torch's allocation history; at the allocator's peak, the live
   blocks grouped by the Python line that allocated them, and the same
   within the pass whose measured peak was highest. Memory that the
   ledger does not count shows up here with its cause.
4. **cProfile** of one out-of-core GCN epoch: the host's time per function.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_SKIP_FRAMES = ("torch/cuda/memory.py", "torch/utils/_contextlib.py", "contextlib.py")


def site_of(frames: list[dict]) -> str:
    """The allocating line a person would look at: the innermost sagann frame, else the innermost frame."""
    frames = [f for f in frames if not any(s in f.get("filename", "") for s in _SKIP_FRAMES)]
    if not frames:
        return "(no Python frame: a C++ allocation, or a thread without Python such as autograd's)"
    pick = next((f for f in frames if "/sagann/" in f.get("filename", "")), frames[0])
    inner = frames[0]
    where = f"{pick['filename'].split('/sagann/')[-1]}:{pick['line']} {pick['name']}"
    return where if inner is pick else f"{where} -> {inner['name']}"


def live_at_peak(trace: list[dict]) -> tuple[int, dict[str, int]]:
    """The allocation trace's peak of live bytes (blocks allocated while it recorded) and those bytes by site.

    ``trace`` is one device's ``torch.cuda.memory._snapshot()["device_traces"]``:
    ``alloc`` adds a block; ``free_requested`` (or ``free_completed`` when
    no request was recorded) removes it, as torch's allocated-bytes statistic does.
    """
    live: dict[int, tuple[int, str]] = {}
    total = peak = 0
    at_peak: dict[int, tuple[int, str]] = {}
    for entry in trace:
        action, addr = entry.get("action"), entry.get("addr")
        if action == "alloc":
            live[addr] = (int(entry["size"]), site_of(entry.get("frames", [])))
            total += int(entry["size"])
            if total > peak:
                peak, at_peak = total, dict(live)
        elif action in ("free_requested", "free_completed") and addr in live:
            total -= live.pop(addr)[0]
    sites: dict[str, int] = defaultdict(int)
    for size, site in at_peak.values():
        sites[site] += size
    return peak, dict(sorted(sites.items(), key=lambda kv: -kv[1]))


def allocation_sites(fn, top: int = 12) -> dict:
    """Run ``fn`` under torch's CUDA allocation history: bytes live before, the peak it adds, and the top sites at that peak."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=500_000, stacks="python")
    try:
        fn()
        torch.cuda.synchronize()
        snap = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    dev = torch.cuda.current_device()
    peak, sites = live_at_peak(snap["device_traces"][dev])
    return {"allocated_before": before, "max_allocated": torch.cuda.max_memory_allocated(), "trace_peak": peak,
            "sites": dict(list(sites.items())[:top])}


@contextlib.contextmanager
def pass_windows():
    """Inside: each pass a CUDA meter measures adds (its peak, its live blocks by site) over that pass's own allocations.

    The allocation history must be recording. A site here is what the meter
    counted in that pass; :func:`allocation_sites` sees the whole run.
    """
    from sagann.scheduler import meter

    windows: list[tuple[int, dict[str, int]]] = []
    original = meter.CudaMeter._pass
    dev = torch.cuda.current_device()

    @contextlib.contextmanager
    def watched_pass(self):
        start = len(torch.cuda.memory._snapshot()["device_traces"][dev])
        with original(self):
            yield
        windows.append(live_at_peak(torch.cuda.memory._snapshot()["device_traces"][dev][start:]))

    meter.CudaMeter._pass = watched_pass
    try:
        yield windows
    finally:
        meter.CudaMeter._pass = original


def _profile_text(prof: cProfile.Profile, by_own_time: int, by_cumulative: int) -> dict:
    """The profile's top functions by their own time and by cumulative time, as text."""
    out = {}
    for key, order, count in (("cprofile_tottime", "tottime", by_own_time), ("cprofile_cumulative", "cumulative", by_cumulative)):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(order).print_stats(count)
        out[key] = buf.getvalue()
    return out


def _gbps(fn, nbytes: int, reps: int = 5, cuda: bool = False) -> float:
    fn()
    times = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return nbytes / min(times) / 1e9


def host_gather(rows: int = 1 << 18, width: int = 128, picked: int = 1 << 16) -> dict:
    host = torch.randn(rows, width)
    idx = torch.sort(torch.randint(0, rows, (picked,))).values
    nbytes = picked * width * 4
    pinned = torch.empty(picked, width, pin_memory=torch.cuda.is_available())
    dev = torch.empty(picked, width, device="cuda") if torch.cuda.is_available() else None
    out = {"threads": torch.get_num_threads(), "bytes": nbytes,
           "gather_gbps": _gbps(lambda: torch.index_select(host, 0, idx, out=pinned), nbytes),
           "copy_gbps": _gbps(lambda: pinned.copy_(host[:picked]), nbytes)}
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    out["gather_gbps_one_thread"] = _gbps(lambda: torch.index_select(host, 0, idx, out=pinned), nbytes)
    torch.set_num_threads(old)
    if dev is not None:
        out["h2d_gbps"] = _gbps(lambda: dev.copy_(pinned, non_blocking=True), nbytes, cuda=True)
    return out


def _us_per_call(fn, calls: int) -> float:
    """Host microseconds per call of ``fn`` after one warm-up call, the GPU drained before and after."""
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / calls * 1e6


def _tiny_chunk():
    """A 16-vertex, 32-edge sub-chunk on the GPU: a call on it costs its fixed cost only."""
    from sagann.kernels import ChunkTensors

    src = torch.arange(32) % 16
    dst = (torch.arange(32) * 7) % 16
    return ChunkTensors.from_coo(src, dst, 16, 16, device="cuda")[0]


@contextlib.contextmanager
def backend_setting(name: str, value):
    """Set the cuda backend's module constant ``name`` to ``value`` for the block (an A/B), and put it back after."""
    from sagann.kernels import cuda as backend

    old = getattr(backend, name)
    setattr(backend, name, value)
    try:
        yield
    finally:
        setattr(backend, name, old)


def csr_product(on: bool):
    """Run the cuda backend's sums as torch's sparse CSR product (``on``, the default) or with the numba kernels (an A/B)."""
    return backend_setting("CSR_PRODUCT", on)


def launch_cost(backends=("cuda", "reference"), calls: int = 300) -> dict:
    """Host µs of one gspmm call on a 16-vertex sub-chunk per backend; ``cuda_numba``: the cuda backend without the CSR product."""
    from sagann.kernels import gspmm

    g, x = _tiny_chunk(), torch.randn(16, 64, device="cuda")
    out = {f"{b}_us_per_call": _us_per_call(lambda b=b: gspmm(g, "copy_src", "sum", src=x, backend=b), calls) for b in backends}
    with csr_product(False):
        out["cuda_numba_us_per_call"] = _us_per_call(lambda: gspmm(g, "copy_src", "sum", src=x, backend="cuda"), calls)
    return out


def launch_breakdown(calls: int = 200) -> dict:
    """Microseconds per piece of one numba launch from torch tensors, and a cProfile of ``calls`` gspmm calls."""
    from numba import cuda

    from sagann.kernels import cuda as backend
    from sagann.kernels import gspmm
    from sagann.kernels._common import op_code

    t = torch.randn(16, 64, device="cuda")
    ptr = torch.cuda.current_stream().cuda_stream

    def us(fn):
        return _us_per_call(fn, calls)

    def enter_gpu():
        with cuda.gpus[0]:
            pass

    out = {"as_cuda_array_us": us(lambda: cuda.as_cuda_array(t, sync=False)),
           "external_stream_us": us(lambda: cuda.external_stream(ptr)),
           "gpus_enter_us": us(enter_gpu),
           "current_context_us": us(lambda: cuda.current_context()),
           "cuda_array_interface_us": us(lambda: t.__cuda_array_interface__),
           "zeros_us": us(lambda: torch.zeros(16, 64, device="cuda"))}
    g = _tiny_chunk()
    out["gspmm_us"] = us(lambda: gspmm(g, "copy_src", "sum", src=t, backend="cuda"))  # the CSR product
    with csr_product(False):
        out["gspmm_numba_us"] = us(lambda: gspmm(g, "copy_src", "sum", src=t, backend="cuda"))
    seg_ptr, seg_row, bound = backend._segments(g.dst_ptr, g.nnz, backend._SEGMENT)
    out["segments_us"] = us(lambda: backend._segments(g.dst_ptr, g.nnz, backend._SEGMENT))
    kernel = backend.K.spmm_sum(op_code("copy_src", None, 64), False, np.float32)
    S, E, D = backend._operands(t, None, None, torch.float32, t.device)
    res = torch.zeros(16, 64, device="cuda")
    args = (S, E, D, g.src_idx, g.dst_ptr, seg_ptr, seg_row, backend._SEGMENT, res)
    out["launch_us"] = us(lambda: backend._launch(kernel, bound, 64, t.device, *args))
    arrays = [backend._array(a) if isinstance(a, torch.Tensor) else a for a in args]
    stream = cuda.external_stream(ptr)
    tx, ty = backend._block(64)
    grid = (-(-bound // ty), -(-64 // tx))
    out["launch_numba_arrays_us"] = us(lambda: kernel[grid, (tx, ty), stream](*arrays))
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        gspmm(g, "copy_src", "sum", src=t, backend="cuda")
    prof.disable()
    torch.cuda.synchronize()
    out.update(_profile_text(prof, 25, 40))
    print({k: round(v, 1) for k, v in out.items() if k.endswith("_us")}, flush=True)
    print(out["cprofile_tottime"][-6000:], flush=True)
    print(out["cprofile_cumulative"][-7000:], flush=True)
    return out


def plan_facts(g) -> dict:
    """What a layer's run was planned as: its partition, re-plans, and each pass's depth, tile, held rows and steps.

    A measured excess that comes with some plans and not others (see the
    GAT layer in docs/benchmarks.md) is found by comparing these.
    """
    loops = g.with_remaining_self_loops()[0]
    graph = loops if loops.pass_log else g  # GCN and GAT run on the self-loop graph
    return {
        "num_chunks": graph.num_chunks,
        "sub_chunk_nnz": getattr(graph.partition, "sub_chunk_nnz", None),
        "replans": len(graph.replans),
        "passes": [{"phase": r.phase, "steps": r.steps, "prefetch": r.prefetch, "tile": r.tile, "resident_bytes": r.resident_bytes,
                    "dst_rows_bytes": r.dst_rows_bytes, "bytes_moved": r.bytes_moved} for r in graph.pass_log],
    }


def test_layer_sites() -> dict:
    """The GPU device tests' out-of-core layer runs, each under the allocation history."""
    import sagann
    from sagann.scheduler.cuda import CudaDevice
    from tests.engine.graphs import awkward_graph
    from tests.scheduler.test_cuda_device import GPU_E, GPU_N, D, _budget_forcing_chunks, _layers, _run

    out = {}
    ei = awkward_graph(np.random.default_rng(1), GPU_N, GPU_E)
    x = torch.randn(GPU_N, D, generator=torch.Generator().manual_seed(2))
    for name in ("gcn", "gat", "sage-mean"):
        make = _layers()[name]
        probe = CudaDevice()
        _run(make, probe, ei, x, None)
        dev = CudaDevice(_budget_forcing_chunks(probe))
        _run(make, dev, ei, x, None)  # the first run measures transfer costs and steps (outside the meter)
        dev.reset_peak()
        ran = []
        with pass_windows() as windows:
            res = allocation_sites(lambda: ran.append(_run(make, dev, ei, x, None)))  # the second: the passes' own allocations
        res.update(budget=dev.memory_budget, ledger_peak=dev.peak_bytes, measured_peak=dev.measured_peak_bytes)
        res["plan"] = plan_facts(ran[0][2])
        if windows:  # the pass with the highest peak, as the meter saw it
            peak, sites = max(windows, key=lambda w: w[0])
            res["worst_pass"] = {"peak": peak, "passes": len(windows), "sites": dict(list(sites.items())[:12])}
        out[name] = res
        print(f"  {name}: budget {dev.memory_budget:,} B, ledger {dev.peak_bytes:,} B, measured {dev.measured_peak_bytes:,} B; plan {res['plan']}", flush=True)
        for site, b in res["sites"].items():
            print(f"      {b:>14,} B  {site}", flush=True)
        if windows:
            print(f"    its highest pass ({res['worst_pass']['peak']:,} B at its peak, of {len(windows)} passes):", flush=True)
            for site, b in res["worst_pass"]["sites"].items():
                print(f"      {b:>14,} B  {site}", flush=True)
    return out


def gcn_sites(args) -> dict:
    import torch.nn.functional as F

    import sagann
    from sagann.chunks.synthetic import rmat
    from sagann.engine.models import GCN
    from sagann.scheduler.cuda import CudaDevice

    n = args.vertices
    ei = rmat(n, args.edges, seed=0, self_loops=False)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((n, 128), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 16, n))

    def epoch_fn(device, num_chunks=None):
        g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, device=device)
        torch.manual_seed(0)
        model = GCN(128, 128, 16, dropout=0.0).to(device.torch_device)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)

        def step():
            opt.zero_grad()
            F.cross_entropy(model(g, x), y).backward()
            opt.step()
            torch.cuda.synchronize()

        return step

    mem_dev = CudaDevice()
    step = epoch_fn(mem_dev, 1)
    step()
    peak = mem_dev.peak_bytes
    del step, mem_dev
    gc.collect()
    torch.cuda.empty_cache()
    out = {"allocated_after_in_memory_run": torch.cuda.memory_allocated()}
    dev = CudaDevice(max(1, peak // args.fraction))
    step = epoch_fn(dev)
    step()  # warm-up: partition, compile, measure
    out["warm"] = allocation_sites(step)
    out.update(budget=dev.memory_budget, ledger_peak=dev.peak_bytes, measured_peak=dev.measured_peak_bytes)
    print(f"  GCN: allocated after the in-memory run {out['allocated_after_in_memory_run']:,} B; budget {dev.memory_budget:,} B, "
          f"ledger {dev.peak_bytes:,} B, measured {dev.measured_peak_bytes:,} B, max allocated {out['warm']['max_allocated']:,} B, "
          f"before {out['warm']['allocated_before']:,} B", flush=True)
    for site, b in out["warm"]["sites"].items():
        print(f"      {b:>14,} B  {site}", flush=True)
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    step()
    prof.disable()
    out["profiled_epoch_s"] = time.perf_counter() - t
    t = time.perf_counter()
    step()
    out["epoch_s"] = time.perf_counter() - t
    out.update(_profile_text(prof, 35, 45))
    print(f"  epoch {out['epoch_s']:.3f} s, under cProfile {out['profiled_epoch_s']:.3f} s", flush=True)
    print(out["cprofile_tottime"][-9000:], flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--vertices", type=int, default=1 << 18)
    p.add_argument("--edges", type=int, default=8_000_000)
    p.add_argument("--fraction", type=int, default=8)
    p.add_argument("--sections", default="host_gather,launch_cost,launch_breakdown,test_layers,gcn", help="comma-separated sections to run")
    args = p.parse_args(argv)
    os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
    if not torch.cuda.is_available():
        print("gpu_profile.py: torch sees no CUDA GPU", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    sections = {"host_gather": host_gather, "launch_cost": launch_cost, "launch_breakdown": launch_breakdown,
                "test_layers": test_layer_sites, "gcn": lambda: gcn_sites(args)}
    for name in args.sections.split(","):
        fn = sections[name]
        t = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one section's failure must not hide the others
            import traceback

            traceback.print_exc()
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        if name in ("host_gather", "launch_cost"):
            print(f"{name}: {report[name]}", flush=True)
        print(f"[{name}: {time.perf_counter() - t:.1f} s]", flush=True)
        (out_dir / "gpu_profile.json").write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
