"""The CUDA backend (:mod:`sagann.kernels.cuda`) on machines with and without a GPU.

Why a child process: numba reads ``NUMBA_ENABLE_CUDASIM`` once, when it is
first imported, and picks the simulator or the real CUDA target for the
whole process; the rest of the suite imports numba (the CPU backend) at
collection time. So the kernel tests live in ``cuda_cases.py`` (not
collected by a plain ``pytest`` run) and :func:`test_kernels_under_the_simulator`
runs that file in a fresh ``python -m pytest`` with the variable set. This
process never sees it, the failures of the child come back in the assertion
message, and the child's own report names every case. On a machine with a
GPU, :func:`test_kernels_on_the_gpu` runs the same file without the
simulator, on CUDA tensors.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numba
import numpy as np
import pytest
import torch
from numba import cuda

from sagann import kernels
from sagann.kernels import ChunkTensors

CASES = Path(__file__).with_name("cuda_cases.py")
ROOT = Path(__file__).resolve().parents[2]
SIMULATED = bool(numba.config.ENABLE_CUDASIM)  # the user ran the whole suite under the simulator
HAS_GPU = not SIMULATED and cuda.is_available() and torch.cuda.is_available()


def _run_cases(simulator: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    where = "under the CUDA simulator" if simulator else "on the GPU"
    assert proc.returncode == 0, f"{CASES.name} {where} failed (rc={proc.returncode}):\n{output[-8000:]}"
    summary = output.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, f"{CASES.name} {where}: {summary}"
    return summary


@pytest.mark.cuda_sim
def test_kernels_under_the_simulator():
    """Every op x reducer, values, winners and gradients, against the reference (see cuda_cases.py)."""
    print(_run_cases(simulator=True))


@pytest.mark.cuda_sim
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device (numba and torch)")
def test_kernels_on_the_gpu():
    print(_run_cases(simulator=False))


def test_backend_is_registered():
    assert "cuda" in kernels.available_backends()


@pytest.mark.skipif(SIMULATED or cuda.is_available(), reason="there is a CUDA device (or the simulator)")
def test_without_a_device_the_error_names_the_fixes():
    g = ChunkTensors.from_coo(np.array([0, 1]), np.array([1, 0]), 2, 2)[0]
    fix = "no CUDA device; use backend='cpu' or set NUMBA_ENABLE_CUDASIM=1 for the simulator"
    with pytest.raises(RuntimeError, match=fix):
        kernels.gspmm(g, "copy_src", "sum", src=torch.ones(2, 3), backend="cuda")
    with pytest.raises(RuntimeError, match=fix):
        kernels.gsddmm(g, "src_dot_dst", src=torch.ones(2, 3), dst=torch.ones(2, 3), backend="cuda")


def test_op_codes_are_shared_with_the_cpu_kernels():
    from sagann.kernels import _common as C
    from sagann.kernels import _cpu_kernels as K

    names = "COPY_SRC COPY_EDGE MUL_EDGE MUL_SCALAR ADD_DST SUB_DST MUL_DST DOT_DST ADD_EDGE ADD_SCALAR ROW ARG EDGE".split()
    assert [getattr(K, n) for n in names] == [getattr(C, n) for n in names]
    table = {c for spec in kernels.OPS.values() for c in spec.codes()}
    assert table == {getattr(C, n) for n in names[:-3]}, "every code of the op table has a name the kernels branch on"


def _ptx_compiler():
    """``compile(pyfunc, argtypes)`` to sm_90 PTX, or None where numba has no NVVM (or runs the simulator)."""
    if SIMULATED:
        return None

    def probe(a):
        a[0] = 1

    try:
        cuda.compile_ptx(probe, "void(float32[:])", cc=(9, 0))
    except Exception:  # no libNVVM: the built-in target without a toolkit, or numba-cuda without its cu12 extra
        return None
    return lambda fn, argtypes: cuda.compile_ptx(fn.py_func, tuple(argtypes), cc=(9, 0))


@pytest.mark.slow
def test_every_kernel_compiles_for_a_real_gpu(monkeypatch):
    """The simulator runs kernels as Python; this types and compiles each specialization to PTX.

    Needs libNVVM (``pip install "numba-cuda[cu12]"``), not a GPU; skipped elsewhere.
    """
    compile_ptx = _ptx_compiler()
    if compile_ptx is None:
        pytest.skip("numba cannot compile PTX here (no libNVVM); install numba-cuda[cu12]")
    if not cuda.is_available():  # device functions ask the current device for its compute capability
        import numba.cuda.dispatcher as dispatcher

        fake = types.SimpleNamespace(compute_capability=(9, 0))
        monkeypatch.setattr(dispatcher, "get_current_device", lambda: fake, raising=False)
    from sagann.kernels import _cuda_kernels as K

    def arr(dtype, ndim):
        return numba.typeof(np.empty((0,) * ndim, dtype))

    idx, i64 = arr(np.int32, 1), numba.int64
    codes = sorted({c for spec in kernels.OPS.values() for c in spec.codes()} - {K.DOT_DST})
    arg, part_arg = arr(np.int64, 2), arr(np.int32, 2)
    # Every op and mode in float32; float64 where the dtype is more than a type parameter (zeros, shared memory).
    compile_ptx(K.segment_rows, (idx, idx))
    for dt in (np.float32, np.float64):
        F, full = arr(dt, 2), dt == np.float32
        for op in codes if full else [K.MUL_SCALAR]:
            for mean in (False, True):
                compile_ptx(K.spmm_sum(op, mean, dt), (F, F, F, idx, idx, idx, idx, i64, F))
            for is_max in (False, True):
                compile_ptx(K.spmm_arg(op, is_max), (F, F, F, idx, idx, idx, idx, i64, idx, F, part_arg, F, arg))
            compile_ptx(K.sddmm(op), (F, F, F, idx, idx, F))
        for is_max in (False, True):
            compile_ptx(K.combine_arg(is_max), (idx, F, part_arg, F, arg))
        for tx in (1, 32) if full else (32,):
            compile_ptx(K.edge_reduce(K.DOT_DST, K.EDGE, dt, tx, 128 // tx), (F, F, F, arg, idx, idx, F))
            for mode in (K.ROW, K.ARG, K.EDGE):
                for op in (K.MUL_SCALAR, K.ADD_SCALAR):
                    compile_ptx(K.edge_reduce(op, mode, dt, tx, 128 // tx), (F, F, F, arg, idx, idx, F))
        for mode in (K.ROW, K.ARG, K.EDGE) if full else (K.ARG,):
            for op in codes + [K.DOT_DST] if full else [K.MUL_EDGE]:
                compile_ptx(K.grad_src(op, mode, dt), (F, arg, F, F, idx, idx, idx, idx, idx, i64, F))
            for op in (K.ADD_DST, K.SUB_DST, K.MUL_DST, K.DOT_DST) if full else (K.MUL_DST,):
                compile_ptx(K.grad_dst(op, mode, dt), (F, arg, F, idx, idx, idx, idx, i64, F))
            for op in (K.COPY_EDGE, K.MUL_EDGE, K.ADD_EDGE):
                compile_ptx(K.grad_edge(op, mode, dt), (F, arg, F, idx, idx, F))


@pytest.mark.slow
def test_attention_kernels_compile_for_a_real_gpu(monkeypatch):
    """The fused attention kernels type and compile to sm_90 PTX with the argument types the launcher passes."""
    compile_ptx = _ptx_compiler()
    if compile_ptx is None:
        pytest.skip("numba cannot compile PTX here (no libNVVM); install numba-cuda[cu12]")
    if not cuda.is_available():
        import numba.cuda.dispatcher as dispatcher

        fake = types.SimpleNamespace(compute_capability=(9, 0))
        monkeypatch.setattr(dispatcher, "get_current_device", lambda: fake, raising=False)
    from sagann.kernels import _cuda_attention as KA

    def arr(dtype, ndim):
        return numba.typeof(np.empty((0,) * ndim, dtype))

    F, F64, idx = arr(np.float32, 2), arr(np.float64, 2), arr(np.int32, 1)
    ptx = {
        "partials": compile_ptx(KA.partials, (F, F, idx, idx, numba.int64, numba.float32, idx, F, F, F)),
        "edge_terms": compile_ptx(KA.edge_terms, (F, F, F, F64, F, F, idx, idx, numba.float64, F, F)),
        "grad_src": compile_ptx(KA.grad_src, (F, F, F, idx, idx, idx, idx, F)),
        "grad_dst": compile_ptx(KA.grad_dst, (F, F, F, idx, idx, numba.float64, F)),
    }
    # forward runs in float32: its exp is the single-precision one, and no double arithmetic is issued
    forward = ptx["partials"][0]
    assert "ex2.approx" in forward and re.search(r"\bex2\S*\.f32", forward)
    assert not re.search(r"\b(add|sub|mul|fma|div|ex2)\S*\.f64\b", forward), "the forward kernel computes in float64"
