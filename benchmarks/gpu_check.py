"""Acceptance check of sagann's GPU path on one CUDA GPU: the figures with their checks, then the tests. Fails loudly.

One command, from the repository root, on a machine with an NVIDIA GPU::

    python benchmarks/gpu_check.py --out results/            # about 5 minutes on an H100/H200

Needs torch with CUDA, numba-cuda, pytest and hypothesis (``pip install -e
".[test,cuda]"`` where a package registry is reachable). On a machine that
has them preinstalled but no network, nothing needs installing: the script
puts the repository on ``sys.path``; missing wheels carried in a folder are
installed first with ``--wheels DIR`` (``pip install --no-index --no-deps``).

What it runs, in order, each with its time (the figures first; the tests
get the time that is left, spread over pytest-xdist workers where it is
installed):

1. **backend**: the GPU kernel backend must be ``cuda`` (numba-cuda on the
   GPU); a fallback to torch's ops (``reference``) is a failure, with its
   cause.
2. **ceilings**: device-to-device ``copy_`` bandwidth (bytes read + written)
   and pinned host-to-device bandwidth, with CUDA events.
3. **GCN epochs**: the 2-layer GCN (128 -> 128 -> 16) in memory (P = 1) and
   out of core (a budget of 1/``--fraction`` of the in-memory peak). The
   out-of-core epoch is held against its **H2D floor**: the bytes one timed
   epoch sent host-to-device (warm-up epochs excluded) over the measured
   pinned bandwidth (the median over timed epochs of time / floor; the
   bytes can differ between epochs as the profile-guided order changes).
   ``torch.cuda.max_memory_allocated`` over the timed epochs, less what was
   allocated before them, must stay within the budget (+5%, the tests'
   margin); one more, profiled epoch must push an NVTX range of the same
   name for every span and run only ``cuda`` kernels. The same out-of-core
   run with ``ScheduleConfig(transfer_dtype=torch.bfloat16)`` must send at
   most 0.55x float32's bytes, and is held against its own floor. PyG's
   GCNConv on the GPU is timed beside it.
4. **fused gSpMM vs cuSPARSE**: ``copy_src . sum`` on an R-MAT graph against
   ``torch.sparse.mm`` (CSR), checked equal, timed; GB/s count the bytes a
   fused kernel must move (see ``benchmarks/gpu_kernels.py``) and are given
   as a share of the copy bandwidth. The fused attention is checked against
   the reference on the same graph and its extra device memory must stay
   under one ``[edges, heads * d]`` tensor.
   **launch**: the host time of one fused call on a 16-vertex sub-chunk,
   per backend (``benchmarks/gpu_profile.py`` breaks it down).
5. **kernel cases on the GPU**: ``tests/kernels/cuda_cases.py`` without the
   simulator (every op x reducer, gradients, winners, fused attention,
   against the reference); any failure or skip fails.
6. **device and pipeline tests**: ``tests/scheduler/test_cuda_device.py``,
   the pipeline and stream tests of ``tests/scheduler``, the NVTX and CUDA
   RNG checkpoint tests; a test skipped for want of a GPU fails.

Writes ``gpu_check.json`` (every figure), ``gpu_check.md`` (a section ready
for ``docs/benchmarks.md``), ``gpu_check_tests.log`` (the pytest output) and
``gpu_check_trace.json`` (the profiled epoch) into ``--out`` (default
``$OUT`` or ``.``). Exit status: 0 all checks passed and all targets met;
1 a check failed; 3 checks passed but a performance target was missed
(fused kernel >= cuSPARSE and >= 50% of the copy bandwidth; out-of-core
epoch <= 1.15x its H2D floor; bf16 bytes <= 0.55x float32's); 2 no usable GPU.
"""
from __future__ import annotations

import argparse
import datetime
import faulthandler
import gc
import glob
import json
import os
import platform
import re
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# torch's allocator may exceed the budget by the tests' margin: what the memory model leaves out
from tests.measured import MARGIN as MEMORY_MARGIN  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_profile  # noqa: E402  (its launch timing and the backend A/B switches)

TARGETS = {"fused_vs_cusparse": 1.0, "fused_share_of_copy": 0.5, "epoch_over_h2d_floor": 1.15, "bf16_bytes_share": 0.55}
DEVICE_TESTS = (
    "tests/scheduler/test_cuda_device.py",
    "tests/scheduler/test_pipeline*.py",
    "tests/scheduler/test_stream*.py",
    "tests/scheduler/test_cuda_*.py",
    "tests/profiler/test_profiler_nvtx.py",
    "tests/engine/test_checkpoint_cuda_rng.py",
)
# skips that are right on a GPU: checks of CPU-only machines and of the simulator; any other skip fails
ALLOWED_SKIP = re.compile(r"on a machine without CUDA|the simulator's placement rule|there is a CUDA device")
SUMMARY_LINE = re.compile(r"\d+ (passed|failed|errors?|skipped)\b.* in [\d.]+s")
SKIP_LINE = re.compile(r"^SKIPPED \[\d+\] [^:]+(?::\d+)?: (.*)$")


class Check:
    """The report: checks (hard), targets (figures), timings; printed as they come."""

    def __init__(self, deadline_s: float):
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + deadline_s
        self.checks: list[dict] = []
        self.targets: list[dict] = []
        self.data: dict = {}

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
        return bool(ok)

    def target(self, name: str, measured: float | None, limit: float, better: str, detail: str) -> None:
        met = measured is not None and (measured >= limit if better == "higher" else measured <= limit)
        self.targets.append({"name": name, "measured": measured, "limit": limit, "better": better, "met": met, "detail": detail})
        print(f"[{'MET' if met else 'TARGET MISSED'}] {name}: {detail}", flush=True)

    def time_left(self) -> float:
        return self.deadline - time.perf_counter()

    def status(self) -> int:
        if not all(c["ok"] for c in self.checks):
            return 1
        return 0 if all(t["met"] for t in self.targets) else 3


# ---------------------------------------------------------------- helpers


def _sync() -> None:
    torch.cuda.synchronize()


def time_ms(fn, reps: int) -> tuple[float, float]:
    """(best, median) of ``fn()`` in ms from CUDA events on the current stream, after one warm-up call."""
    fn()
    _sync()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return min(times), float(np.median(times))


def copy_gbps(nbytes: int = 1 << 30, reps: int = 10) -> float:
    """Device-to-device ``copy_`` in GB/s, counting the bytes read and the bytes written."""
    a = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").normal_()
    b = torch.empty_like(a)
    best, _ = time_ms(lambda: b.copy_(a), reps)
    del a, b
    torch.cuda.empty_cache()
    return 2 * nbytes / (best * 1e-3) / 1e9


def pinned_h2d_gbps(nbytes: int = 512 << 20, reps: int = 5) -> float:
    """Pinned host-to-device ``copy_`` in GB/s (best of ``reps``): the link's practical ceiling."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    host.random_(0, 255)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    best, _ = time_ms(lambda: dev.copy_(host, non_blocking=True), reps)
    del host, dev
    torch.cuda.empty_cache()
    return nbytes / (best * 1e-3) / 1e9


def run_pytest(paths: list[str], log: Path, timeout_s: float, simulator: bool = False, workers: int = 0) -> tuple[int | None, str, list[str]]:
    """(returncode or None on timeout, last summary line, skip reasons) of pytest over ``paths``; output appended to ``log``.

    ``workers`` > 0 spreads the tests over that many pytest-xdist processes:
    on a GPU most of the kernel cases' time is numba compiling kernels, one
    CPU core each.
    """
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *(["-n", str(workers)] if workers else []), *paths]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout_s, 1))
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = None, (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out += f"\n(timed out after {timeout_s:.0f} s)"
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n{out}\n")
    lines = [line for line in out.strip().splitlines() if line.strip()]
    summaries = [line for line in lines if SUMMARY_LINE.search(line)]  # warnings can follow pytest's summary
    skips = [(SKIP_LINE.match(line) or re.match(r"(.*)", line)).group(1).strip() for line in lines if line.startswith("SKIPPED")]
    return rc, (summaries or lines or ["(no output)"])[-1], skips


def default_workers() -> int:
    """Half the cores, up to 8, where pytest-xdist is installed; else 0 (one process)."""
    try:
        import xdist  # noqa: F401
    except ImportError:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("numba", "numba_cuda", "torch_geometric"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or without a version: say so
            out[name] = None
    return out


# ---------------------------------------------------------------- sections


def check_backend(rep: Check) -> bool:
    from sagann import kernels

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kernels.BackendFallbackWarning)
        backend = kernels.gpu_kernel_backend()
    rep.data["kernel_backend"] = backend
    why = kernels.gpu_fallback_reason()
    return rep.check("backend", backend == "cuda", "the GPU runs the fused 'cuda' kernels" if why is None else f"fell back to '{backend}': {why}")


def check_tests(rep: Check, log: Path, workers: int) -> None:
    budget = rep.time_left() - 10  # the figures ran first; keep a little for the report
    t = time.perf_counter()
    rc, summary, skips = run_pytest(["tests/kernels/cuda_cases.py"], log, budget * 0.6, workers=workers)
    bad = [s for s in skips if not ALLOWED_SKIP.search(s)]
    ok = rc == 0 and " passed" in summary and not bad
    rep.check("kernel cases on the GPU", ok, f"{summary} ({time.perf_counter() - t:.0f} s)" + (f"; skipped on a GPU: {bad[:3]}" if bad else ""))
    paths = sorted({p for pattern in DEVICE_TESTS for p in glob.glob(str(ROOT / pattern))})
    t = time.perf_counter()
    rc, summary, skips = run_pytest([str(Path(p).relative_to(ROOT)) for p in paths], log, rep.time_left() - 10, workers=workers)
    bad = [s for s in skips if not ALLOWED_SKIP.search(s)]
    detail = f"{summary} ({time.perf_counter() - t:.0f} s; {len(paths)} files)"
    rep.check("device and pipeline tests", rc == 0 and not bad and " passed" in summary, detail + (f"; skipped on a GPU: {bad[:3]}" if bad else ""))


def launch_costs(rep: Check) -> None:
    """Microseconds of one fused call on a 16-vertex sub-chunk, per backend: the fixed cost a streamed step pays per kernel call."""
    rep.data["launch_us"] = gpu_profile.launch_cost()
    print(f"  one gspmm call on 16 vertices: {rep.data['launch_us']}", flush=True)


def check_kernels(rep: Check, args) -> None:
    """Fused copy_src . sum against cuSPARSE, and the fused attention against the reference, on one R-MAT graph."""
    from sagann.chunks.synthetic import rmat
    from sagann.kernels import ChunkTensors, gspmm

    n, copy = args.kernel_vertices, rep.data["copy_gbps"]
    ei = rmat(n, args.kernel_edges, seed=0)
    g, _ = ChunkTensors.from_coo(ei[0], ei[1], n, n, device="cuda")
    del ei
    nnz = g.nnz
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        csr = torch.sparse_csr_tensor(g.dst_ptr.long(), g.src_idx.long(), torch.ones(nnz, device="cuda"), size=(n, n), check_invariants=False)
    rows = []
    for d in args.dims:
        x = torch.randn(n, d, device="cuda")
        want = torch.sparse.mm(csr, x)
        sagann_call = lambda: gspmm(g, "copy_src", "sum", src=x, backend="cuda")  # noqa: E731
        fused_call = _numba(sagann_call)  # the numba Gather itself, not the CSR product the backend runs by default
        got, _ = fused_call()
        err = float(((got - want).abs() - 1e-4 * torch.sparse.mm(csr, x.abs())).max())
        if not rep.check(f"gspmm d={d} equals cuSPARSE", err <= 1e-5, f"max excess error {err:.3g}"):
            continue
        nbytes = nnz * 8 + nnz * d * 4 + n * d * 4
        fused, fused_med = time_ms(fused_call, args.reps)
        with _row_array_from(1 << 62):  # the same kernel with every work item searching its row (as small sub-chunks do)
            searched, _ = time_ms(fused_call, args.reps)
        sparse, sparse_med = time_ms(lambda: torch.sparse.mm(csr, x), args.reps)
        product, _ = time_ms(sagann_call, args.reps)
        gbps = nbytes / (fused * 1e-3) / 1e9
        rows.append({"d": d, "nnz": nnz, "n": n, "bytes": nbytes, "fused_ms": fused, "fused_ms_median": fused_med,
                     "cusparse_ms": sparse, "cusparse_ms_median": sparse_med, "fused_gbps": gbps, "share_of_copy": gbps / copy,
                     "fused_row_search_ms": searched, "sagann_csr_product_ms": product})
        print(f"  gspmm d={d}: numba, rows from the run-row array {fused:.3f} ms, searched {searched:.3f} ms; "
              f"sagann's call (CSR product) {product:.3f} ms; cuSPARSE {sparse:.3f} ms", flush=True)
        rep.target(f"gspmm d={d} vs cuSPARSE", sparse / fused, TARGETS["fused_vs_cusparse"], "higher",
                   f"fused {fused:.3f} ms, cuSPARSE {sparse:.3f} ms ({sparse / fused:.2f}x)")
        rep.target(f"gspmm d={d} share of copy bandwidth", gbps / copy, TARGETS["fused_share_of_copy"], "higher",
                   f"{gbps:.0f} GB/s = {gbps / copy:.0%} of {copy:.0f} GB/s")
        del x, want, got
    rep.data["gspmm"] = rows
    del csr
    torch.cuda.empty_cache()
    rep.data["attention"] = _attention(rep, g, args)


def _numba(call):
    """``call`` with the cuda backend's numba kernels instead of its CSR product."""

    def run():
        with gpu_profile.csr_product(False):
            return call()

    return run


def _row_array_from(rows: int):
    """Set the CUDA backend's ``ROW_ARRAY_MIN_ROWS`` for the block (an A/B of the run-row array against the search)."""
    return gpu_profile.backend_setting("ROW_ARRAY_MIN_ROWS", rows)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _attention(rep: Check, g, args) -> dict:
    from sagann.kernels.attention import attention_backward, attention_partials

    heads, d = args.heads, args.head_dim
    width = heads * d
    gen = torch.Generator(device="cuda").manual_seed(0)
    src = torch.randn(g.num_src, width + heads, device="cuda", generator=gen)
    dst = torch.randn(g.num_dst, heads, device="cuda", generator=gen)
    one_edge_tensor = g.nnz * width * 4
    _sync()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    m, l, a = attention_partials(g, src, dst, heads, 0.2, backend="cuda")
    _sync()
    fwd_extra = torch.cuda.max_memory_allocated() - base
    ref = attention_partials(g, src, dst, heads, 0.2, backend="reference")
    finite = ~torch.isinf(ref[0])
    errs = {"m": _rel(m[finite], ref[0][finite]), "l": _rel(l, ref[1]), "a": _rel(a, ref[2])}
    out = (a.view(-1, heads, d) / l.clamp(min=1e-30).unsqueeze(-1)).view(a.shape)
    mm = m.masked_fill(torch.isinf(m), 0.0)
    grad = torch.randn(g.num_dst, width, device="cuda", generator=gen)
    _sync()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    got = attention_backward(g, grad, out, mm, l, src, dst, heads, backend="cuda")
    _sync()
    bwd_extra = torch.cuda.max_memory_allocated() - base - got[0].numel() * 4 - got[1].numel() * 4
    want = attention_backward(g, grad, out, mm, l, src, dst, heads, backend="reference")
    # a row's score gradients nearly cancel (softmax is shift-invariant): judge them on the score columns' scale
    scale = float(want[1].double().norm() + want[0][:, width:].double().norm())
    errs.update(d_src=_rel(got[0], want[0]), d_dst=float((got[1] - want[1]).double().norm()) / max(scale, 1e-30))
    worst = max(errs.values())
    rep.check("fused attention equals the reference", worst <= 1e-3,
              "relative errors (float32 reference) " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    rep.check("fused attention makes no [edges, heads*d] tensor", max(fwd_extra, bwd_extra) < one_edge_tensor,
              f"extra device memory forward {fwd_extra / 2**20:.0f} MiB, backward {bwd_extra / 2**20:.0f} MiB; one such tensor {one_edge_tensor / 2**20:.0f} MiB")
    fused_f, _ = time_ms(lambda: attention_partials(g, src, dst, heads, 0.2, backend="cuda"), args.reps)
    ref_f, _ = time_ms(lambda: attention_partials(g, src, dst, heads, 0.2, backend="reference"), max(3, args.reps // 4))
    fused_b, _ = time_ms(lambda: attention_backward(g, grad, out, mm, l, src, dst, heads, backend="cuda"), args.reps)
    ref_b, _ = time_ms(lambda: attention_backward(g, grad, out, mm, l, src, dst, heads, backend="reference"), max(3, args.reps // 4))
    print(f"  attention heads={heads} d={d}: forward fused {fused_f:.3f} ms vs torch ops {ref_f:.3f} ms; backward {fused_b:.3f} vs {ref_b:.3f} ms", flush=True)
    return {"heads": heads, "d": d, "nnz": g.nnz, "errors": errs, "forward_extra_bytes": fwd_extra, "backward_extra_bytes": bwd_extra,
            "edge_tensor_bytes": one_edge_tensor, "forward_ms": fused_f, "forward_reference_ms": ref_f,
            "backward_ms": fused_b, "backward_reference_ms": ref_b}


class CountingNvtx:
    """Counts the names pushed through ``torch.cuda.nvtx`` (the calls still reach NVTX) while active."""

    def __init__(self):
        self.pushes: Counter = Counter()

    def __enter__(self):
        mod = torch.cuda.nvtx
        self._orig = mod.range_push
        mod.range_push = lambda name: (self.pushes.update([name]), self._orig(name))[1]
        return self

    def __exit__(self, *exc):
        torch.cuda.nvtx.range_push = self._orig


def gcn_run(ei, n, x, y, device, *, reps: int, sync, num_chunks=None, schedule=None) -> tuple[dict, object]:
    """Warm-up epoch, then ``reps`` timed epochs of the 2-layer GCN on ``device``; the step for later use.

    ``h2d_bytes_per_epoch`` counts the timed epochs only (the warm-up also
    partitions, compiles and measures).
    """
    import sagann
    from sagann.engine.models import GCN

    g = sagann.ChunkedGraph(ei, n, num_chunks=num_chunks, device=device, schedule=schedule)
    torch.manual_seed(0)
    model = GCN(x.shape[1], 128, int(y.max()) + 1, dropout=0.0).to(device.torch_device)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(g, x), y).backward()
        opt.step()

    step()  # warm-up
    sync()
    start = len(g.pass_log)
    cuda = device.torch_device.type == "cuda"
    if cuda:  # the allocator's peak over the timed epochs, everything included, less what was live before them
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times, moved = [], []
    for _ in range(reps):
        before = device.bytes_in
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        moved.append(device.bytes_in - before)
    loops = g.with_remaining_self_loops()[0]
    records = g.pass_log[start:]
    known = [r for r in records if r.model_seconds == r.model_seconds]  # passes the time model could predict (not NaN)
    return {"epoch_s": float(np.median(times)), "epochs_s": times, "num_chunks": loops.num_chunks,
            "h2d_bytes_epochs": moved, "h2d_bytes_per_epoch": float(np.mean(moved)), "ledger_peak_bytes": device.peak_bytes,
            "budget_bytes": device.memory_budget, "measured_peak_bytes": device.measured_peak_bytes,
            "allocated_peak_bytes": torch.cuda.max_memory_allocated() - base if cuda else None,
            # the streamed edge stages as g.pass_log saw them: steps (the unit of the fixed cost) and the time model against the wall time
            "steps_per_epoch": sum(r.steps for r in records) / reps,
            "pass_seconds_per_epoch": sum(r.seconds for r in records) / reps,
            "pass_model_seconds_per_epoch": sum(r.model_seconds for r in known) / reps if known else None,
            "pass_achieved_seconds_per_epoch": sum(r.seconds for r in known) / reps if known else None,
            # the last epoch's passes as planned and run: depth 0 means loads and compute took turns
            "last_epoch_passes": [{"layer": r.layer, "phase": r.phase, "steps": r.steps, "prefetch": r.prefetch, "tile": r.tile,
                                   "seconds": r.seconds, "model_seconds": r.model_seconds, "bytes_moved": r.bytes_moved}
                                  for r in records[len(records) - len(records) // reps:]] if records else []}, step


def over_floor(run: dict, gbps: float) -> tuple[float, float | None]:
    """The H2D floor of a run's mean epoch, and the median over timed epochs of (epoch time / that epoch's floor)."""
    floor = run["h2d_bytes_per_epoch"] / (gbps * 1e9)
    ratios = [t / (b / (gbps * 1e9)) for t, b in zip(run["epochs_s"], run["h2d_bytes_epochs"]) if b > 0]
    return floor, float(np.median(ratios)) if ratios else None


def profiled_epoch(step, rep: Check, out_dir: Path, nvtx: bool = True) -> None:
    """One more epoch under the profiler: every span has an NVTX range of its name, and only 'cuda' kernels ran."""
    from sagann import kernels, profiler

    counting = CountingNvtx()
    with counting, profiler.profile(nvtx=nvtx) as prof:
        step()
    profiler.write_chrome_trace(prof, out_dir / "gpu_check_trace.json")
    spans = Counter(profiler.nvtx_name(s.kind, s.chunk) for s in prof.spans())
    missing = {k: v - counting.pushes[k] for k, v in spans.items() if counting.pushes[k] < v}
    rep.check("an NVTX range per span", bool(spans) and not missing,
              f"{sum(spans.values())} spans, {sum(counting.pushes.values())} ranges" + (f"; without a range: {dict(list(missing.items())[:5])}" if missing else ""))
    calls = {b: sum(prof.counters(kernels.CALL_COUNTER + b).values()) for b in kernels.available_backends()}
    calls = {b: c for b, c in calls.items() if c}
    rep.data["kernel_calls"] = calls
    rep.check("the GCN ran the cuda kernels only", set(calls) == {"cuda"}, f"kernel calls per backend: {calls}")


def check_gcn(rep: Check, args, out_dir: Path) -> None:
    from sagann.chunks.synthetic import rmat
    from sagann.scheduler.cuda import CudaDevice

    n = args.vertices
    ei = rmat(n, args.edges, seed=0, self_loops=False)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((n, 128), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 16, n))
    mem, step = gcn_run(ei, n, x, y, CudaDevice(), reps=args.epochs, sync=_sync, num_chunks=1)
    rep.data["gcn_in_memory"] = mem
    print(f"  GCN in memory: {mem['epoch_s']:.3f} s/epoch, P = {mem['num_chunks']}", flush=True)
    del step  # its graph, model and device memory go before the out-of-core peak is measured
    _free_device_memory()
    budget = max(1, mem["ledger_peak_bytes"] // args.fraction)
    rep.data["gcn_numba_kernels"] = _numba_epochs(ei, n, x, y, budget, args)
    dev = CudaDevice(budget)
    ooc, step = gcn_run(ei, n, x, y, dev, reps=args.epochs, sync=_sync)
    floor, ooc["epoch_over_floor"] = over_floor(ooc, rep.data["pinned_h2d_gbps"])
    ooc["h2d_floor_s"] = floor
    ooc["over_in_memory"] = ooc["epoch_s"] / mem["epoch_s"]
    rep.data["gcn_out_of_core"] = ooc
    print(f"  GCN out of core: {ooc['epoch_s']:.3f} s/epoch ({ooc['over_in_memory']:.2f}x in memory), P = {ooc['num_chunks']}, "
          f"{ooc['steps_per_epoch']:.0f} steps, {ooc['h2d_bytes_per_epoch'] / 1e9:.2f} GB, floor {floor:.3f} s", flush=True)
    rep.check("out of core: P > 1", ooc["num_chunks"] > 1, f"P = {ooc['num_chunks']} under a {ooc['budget_bytes'] / 2**20:.1f} MiB budget")
    limit = ooc["budget_bytes"] * (1 + MEMORY_MARGIN)
    rep.check("max_memory_allocated <= budget", ooc["allocated_peak_bytes"] <= limit,
              f"torch's allocator over the timed epochs: {ooc['allocated_peak_bytes'] / 2**20:.1f} MiB beyond what was live before them; "
              f"in passes (meter) {ooc['measured_peak_bytes'] / 2**20:.1f} MiB; sagann's ledger {ooc['ledger_peak_bytes'] / 2**20:.1f} MiB; "
              f"budget {ooc['budget_bytes'] / 2**20:.1f} MiB (+{MEMORY_MARGIN:.0%})")
    rep.target("out-of-core epoch over its H2D floor", ooc["epoch_over_floor"], TARGETS["epoch_over_h2d_floor"], "lower",
               f"{ooc['epoch_s']:.3f} s/epoch vs floor {floor:.3f} s ({ooc['h2d_bytes_per_epoch'] / 1e9:.2f} GB at {rep.data['pinned_h2d_gbps']:.1f} GB/s)"
               + (f" = {ooc['epoch_over_floor']:.2f}x" if ooc["epoch_over_floor"] else ""))
    profiled_epoch(step, rep, out_dir)
    del step, dev
    _free_device_memory()
    rep.data["gcn_out_of_core_bf16"] = _bf16_run(rep, ei, n, x, y, ooc, args)
    rep.data["pyg"] = _pyg_gcn(ei, n, x, y, args.epochs)


def _numba_epochs(ei, n, x, y, budget: int, args) -> dict:
    """The A/B: the GCN epoch in memory and out of core with the numba kernels instead of the CSR product."""
    from sagann.scheduler.cuda import CudaDevice

    out = {}
    with gpu_profile.csr_product(False):
        for name, device in (("in_memory", lambda: CudaDevice()), ("out_of_core", lambda: CudaDevice(budget))):
            run, step = gcn_run(ei, n, x, y, device(), reps=args.epochs, sync=_sync, num_chunks=1 if name == "in_memory" else None)
            out[name] = {k: run[k] for k in ("epoch_s", "epochs_s", "num_chunks", "steps_per_epoch", "h2d_bytes_per_epoch", "allocated_peak_bytes")}
            print(f"  GCN {name.replace('_', ' ')}, numba kernels: {run['epoch_s']:.3f} s/epoch, P = {run['num_chunks']}", flush=True)
            del step
            _free_device_memory()
    return out


def _free_device_memory() -> None:
    """Collect the dropped graphs and models and give their cached blocks back to the GPU (no-op without one)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _bf16_run(rep: Check, ei, n, x, y, fp32: dict, args, make_device=None, sync=_sync) -> dict:
    """The same out-of-core GCN with vertex rows sent in bfloat16: bytes against float32's, epoch against its own floor."""
    import sagann
    from sagann.scheduler.cuda import CudaDevice

    dev = (make_device or CudaDevice)(fp32["budget_bytes"])
    run, step = gcn_run(ei, n, x, y, dev, reps=args.epochs, sync=sync, schedule=sagann.ScheduleConfig(transfer_dtype=torch.bfloat16))
    del step, dev
    _free_device_memory()
    floor, run["epoch_over_floor"] = over_floor(run, rep.data["pinned_h2d_gbps"])
    run["h2d_floor_s"] = floor
    share = run["h2d_bytes_per_epoch"] / fp32["h2d_bytes_per_epoch"]
    rep.target("bf16 transfers: bytes over float32's", share, TARGETS["bf16_bytes_share"], "lower",
               f"{run['h2d_bytes_per_epoch'] / 1e9:.2f} GB against {fp32['h2d_bytes_per_epoch'] / 1e9:.2f} GB an epoch ({share:.2f}x); "
               f"epoch {run['epoch_s']:.3f} s against {fp32['epoch_s']:.3f} s, P = {run['num_chunks']}")
    rep.target("bf16 out-of-core epoch over its H2D floor", run["epoch_over_floor"], TARGETS["epoch_over_h2d_floor"], "lower",
               f"{run['epoch_s']:.3f} s/epoch vs floor {floor:.3f} s" + (f" = {run['epoch_over_floor']:.2f}x" if run["epoch_over_floor"] else ""))
    return run


def _pyg_gcn(ei, n, x, y, reps: int) -> dict:
    try:
        from torch_geometric.nn import GCNConv
    except ImportError as exc:
        return {"error": f"torch_geometric is not installed ({exc})"}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = GCNConv(x.shape[1], 128, cached=True), GCNConv(128, int(y.max()) + 1, cached=True)

        def forward(self, xx, e):
            return self.c2(F.relu(self.c1(xx, e)), e)

    torch.manual_seed(0)
    model = Net().cuda()
    e, xd, yd = torch.from_numpy(ei).cuda(), x.cuda(), y.cuda()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(xd, e), yd).backward()
        opt.step()

    try:
        step()
        times = []
        for _ in range(reps):
            _sync()
            t0 = time.perf_counter()
            step()
            _sync()
            times.append(time.perf_counter() - t0)
    except torch.cuda.OutOfMemoryError as exc:
        return {"error": f"out of memory: {str(exc).splitlines()[0]}"}
    return {"epoch_s": float(np.median(times)), "epochs_s": times}


# ---------------------------------------------------------------- the report


def _f(v, fmt: str, scale: float = 1.0) -> str:
    return "n/a" if v is None else format(v / scale, fmt)


def markdown(report: dict) -> str:
    """The section for docs/benchmarks.md, from the JSON report (figures only as measured)."""
    env, data = report["environment"], report["data"]
    lines = [
        "## GPU acceptance run (`benchmarks/gpu_check.py`)",
        "",
        f"{env.get('gpu')}, torch {env.get('torch')} (CUDA {env.get('cuda')}), numba {env.get('numba')}, "
        f"numba-cuda {env.get('numba_cuda')}; kernel backend `{data.get('kernel_backend')}`; {report['date']}; "
        f"{report['seconds']:.0f} s in all. Command: `{report['command']}`.",
        "",
        "| check | result | detail |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {c['name']} | {'pass' if c['ok'] else '**FAIL**'} | {c['detail']} |" for c in report["checks"]]
    lines += ["", "| target | limit | measured | met |", "| --- | --- | --- | --- |"]
    lines += [f"| {t['name']} | {'>=' if t['better'] == 'higher' else '<='} {t['limit']} | {t['detail']} | {'yes' if t['met'] else '**no**'} |" for t in report["targets"]]
    if "copy_gbps" in data:
        lines += ["", f"Ceilings: device-to-device `copy_` {data['copy_gbps']:.0f} GB/s (read + write); "
                  f"pinned host-to-device {data['pinned_h2d_gbps']:.1f} GB/s."]
    if data.get("gspmm"):
        r0 = data["gspmm"][0]
        lines += ["", f"Fused `copy_src . sum` vs `torch.sparse.mm` (cuSPARSE CSR), R-MAT N = {r0['n']:,}, nnz = {r0['nnz']:,}, best of the timed runs:", "",
                  "| d | fused ms | fused ms, rows searched | cuSPARSE ms | cuSPARSE / fused | fused GB/s | share of copy |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['d']} | {r['fused_ms']:.3f} | {_f(r.get('fused_row_search_ms'), '.3f')} | {r['cusparse_ms']:.3f} | {r['cusparse_ms'] / r['fused_ms']:.2f} | {r['fused_gbps']:.0f} | {r['share_of_copy']:.0%} |" for r in data["gspmm"]]
    att = data.get("attention")
    if att:
        lines += ["", f"Fused attention ({att['heads']} heads x {att['d']}, nnz = {att['nnz']:,}): forward {att['forward_ms']:.3f} ms "
                  f"(torch ops {att['forward_reference_ms']:.3f} ms), backward {att['backward_ms']:.3f} ms (torch ops {att['backward_reference_ms']:.3f} ms); "
                  f"extra device memory {att['forward_extra_bytes'] / 2**20:.0f} / {att['backward_extra_bytes'] / 2**20:.0f} MiB against "
                  f"{att['edge_tensor_bytes'] / 2**20:.0f} MiB for one `[edges, heads * d]` tensor."]
    launch = data.get("launch_us")
    if launch:
        lines += ["", "One `gspmm` call on a 16-vertex sub-chunk (host time, the fixed cost per kernel call): "
                  + ", ".join(f"{k.replace('_us_per_call', '')} {v:.0f} µs" for k, v in launch.items()) + "."]
    mem, ooc, pyg = data.get("gcn_in_memory"), data.get("gcn_out_of_core"), data.get("pyg") or {}
    if mem and ooc:
        lines += ["", "2-layer GCN (128 -> 128 -> 16), median epoch after one warm-up:", "",
                  "| run | P | steps / epoch | epoch s | H2D GB / epoch | H2D floor s | epoch / floor | peak allocated MiB | budget MiB |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
                  f"| sagann in memory | {mem['num_chunks']} | {_f(mem.get('steps_per_epoch'), '.0f')} | {mem['epoch_s']:.3f} | {mem['h2d_bytes_per_epoch'] / 1e9:.2f} | | | | {_f(mem['budget_bytes'], '.0f', 2**20)} |",
                  f"| sagann out of core | {ooc['num_chunks']} | {_f(ooc.get('steps_per_epoch'), '.0f')} | {ooc['epoch_s']:.3f} | {ooc['h2d_bytes_per_epoch'] / 1e9:.2f} | {ooc['h2d_floor_s']:.3f} | "
                  f"{_f(ooc['epoch_over_floor'], '.2f')} | {_f(ooc.get('allocated_peak_bytes'), '.1f', 2**20)} | {_f(ooc['budget_bytes'], '.1f', 2**20)} |"]
        bf = data.get("gcn_out_of_core_bf16")
        if bf:
            lines.append(f"| sagann out of core, bf16 transfers | {bf['num_chunks']} | {_f(bf.get('steps_per_epoch'), '.0f')} | {bf['epoch_s']:.3f} | {bf['h2d_bytes_per_epoch'] / 1e9:.2f} | {bf['h2d_floor_s']:.3f} | "
                         f"{_f(bf['epoch_over_floor'], '.2f')} | | {_f(bf['budget_bytes'], '.1f', 2**20)} |")
        for name, run in (data.get("gcn_numba_kernels") or {}).items():
            lines.append(f"| sagann {name.replace('_', ' ')}, numba kernels (no CSR product) | {run['num_chunks']} | {_f(run.get('steps_per_epoch'), '.0f')} | {run['epoch_s']:.3f} | "
                         f"{run['h2d_bytes_per_epoch'] / 1e9:.2f} | | | {_f(run.get('allocated_peak_bytes'), '.1f', 2**20)} | |")
        lines.append(f"| PyG GCNConv | 1 | | {pyg['epoch_s']:.3f} | | | | | |" if "epoch_s" in pyg else f"| PyG GCNConv | | | {pyg.get('error', 'not run')} | | | | | |")
    return "\n".join(lines) + "\n"


def write_report(rep: Check, env: dict, out_dir: Path, command: str) -> dict:
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command, "seconds": time.perf_counter() - rep.t0, "environment": env,
        "checks": rep.checks, "targets": rep.targets, "data": rep.data, "status": rep.status(),
    }
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2, default=float))
    try:
        text = markdown(report)
    except Exception as exc:  # noqa: BLE001 - the JSON holds the figures; say why the section is missing
        text = f"gpu_check.py could not write the markdown section ({type(exc).__name__}: {exc}); see gpu_check.json\n"
        report["status"] = 1
    (out_dir / "gpu_check.md").write_text(text)
    return report


def _install_wheels(folder: str) -> None:
    wheels = sorted(glob.glob(os.path.join(folder, "*.whl")))
    if not wheels:
        sys.exit(f"gpu_check.py: --wheels {folder}: no .whl files there")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *wheels], check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu_check.json/.md and the logs")
    p.add_argument("--wheels", help="install the .whl files of this folder first (offline: --no-index --no-deps)")
    p.add_argument("--vertices", type=int, default=1 << 18, help="GCN graph vertices (R-MAT)")
    p.add_argument("--edges", type=int, default=8_000_000, help="GCN graph edges")
    p.add_argument("--fraction", type=int, default=8, help="out-of-core budget: the in-memory peak / FRACTION")
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per run, after one warm-up")
    p.add_argument("--kernel-vertices", type=int, default=1 << 20)
    p.add_argument("--kernel-edges", type=int, default=1 << 24)
    p.add_argument("--dims", type=lambda s: [int(v) for v in s.split(",")], default=[64, 128], help="gSpMM feature widths")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--reps", type=int, default=20, help="timed kernel calls")
    p.add_argument("--skip-tests", action="store_true", help="figures only (the report says the tests did not run)")
    p.add_argument("--time-limit", type=float, default=460, help="seconds; sections that would start later fail as not run")
    p.add_argument("--workers", type=int, default=default_workers(), help="pytest-xdist processes for the tests (0: one process)")
    args = p.parse_args(argv)
    if args.wheels:
        _install_wheels(args.wheels)
    os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
    if not torch.cuda.is_available():
        print("gpu_check.py: torch sees no CUDA GPU (a CPU build of torch, or no driver): nothing can be checked here", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "gpu_check_tests.log"
    log.write_text("")
    rep = Check(args.time_limit)
    env = {"gpu": torch.cuda.get_device_name(0), "host": platform.node(), **_versions()}
    print(json.dumps(env), flush=True)
    command = "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    # the figures first: the tests take whatever time is left, and a slow compile cannot starve the epochs
    sections = [
        ("backend", lambda: check_backend(rep)),
        ("ceilings", lambda: rep.data.update(copy_gbps=copy_gbps(), pinned_h2d_gbps=pinned_h2d_gbps())),
        ("gcn", lambda: check_gcn(rep, args, out_dir)),
        ("kernels", lambda: check_kernels(rep, args)),
        ("launch", lambda: launch_costs(rep)),
    ]
    if args.skip_tests:
        rep.check("tests", False, "not run (--skip-tests)")
    else:
        sections.append(("tests", lambda: check_tests(rep, log, args.workers)))
    # a hang prints every thread's stack before the caller's timeout kills the run
    faulthandler.dump_traceback_later(args.time_limit + 30, exit=False)
    try:
        for name, run in sections:
            if rep.time_left() <= 0:
                rep.check(name, False, f"not run: the {args.time_limit:.0f} s limit was spent")
                continue
            t = time.perf_counter()
            try:
                run()
            except Exception as exc:  # noqa: BLE001 - a crash is a failed check with its cause, and the report is still written
                rep.check(name, False, f"raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:400])
                import traceback

                traceback.print_exc()
            rep.data.setdefault("section_seconds", {})[name] = time.perf_counter() - t
            write_report(rep, env, out_dir, command)  # what is done survives a later kill
    finally:
        faulthandler.cancel_dump_traceback_later()
        report = write_report(rep, env, out_dir, command)
    failed = [c["name"] for c in rep.checks if not c["ok"]]
    missed = [t["name"] for t in rep.targets if not t["met"]]
    print(f"\n{len(rep.checks) - len(failed)}/{len(rep.checks)} checks passed, {len(rep.targets) - len(missed)}/{len(rep.targets)} targets met "
          f"in {report['seconds']:.0f} s; wrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'}")
    if failed:
        print("FAILED: " + "; ".join(failed), file=sys.stderr)
    if missed:
        print("TARGETS MISSED: " + "; ".join(missed), file=sys.stderr)
    return report["status"]


if __name__ == "__main__":
    raise SystemExit(main())
