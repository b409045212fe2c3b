"""The op table (:mod:`sagann.kernels.ops`): every record has a reference formula and kernels on every fused backend.

Generic over ``OPS``: a new op without its CPU or CUDA kernel branches fails
here (its fused results differ from the reference). The CUDA checks run in
this process when there is a GPU or the simulator; otherwise
:func:`test_cuda_kernels_of_every_op_under_the_simulator` runs them in a
child process with ``NUMBA_ENABLE_CUDASIM=1`` (numba reads it once, at import).
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
import torch
from numba import cuda

import sagann
from sagann import kernels
from sagann.kernels import OPS, REDUCERS, ChunkTensors, op_spec

NAMES = list(OPS)
SIMULATED = bool(numba.config.ENABLE_CUDASIM)
HAS_GPU = not SIMULATED and cuda.is_available() and torch.cuda.is_available()
DEVICE = "cuda" if HAS_GPU else "cpu"
ROOT = Path(__file__).resolve().parents[2]

# 5 destinations, 4 sources: row 0 has no edges, 2 -> 2 is a self loop, 1 -> 3 and 1 -> 4 are multi-edges
SRC = [1, 1, 0, 2, 3, 2, 1, 1, 0]
DST = [3, 3, 1, 2, 1, 4, 4, 4, 2]
D = 3


def _graph(device: str = "cpu") -> ChunkTensors:
    g = ChunkTensors.from_coo(np.asarray(SRC, np.int64), np.asarray(DST, np.int64), 4, 5)[0]
    g = dataclasses.replace(g, src_dst=g.dst_idx[g.src_perm.long()].contiguous())  # for the source-major backward
    if device == "cpu":
        return g
    return ChunkTensors(*(getattr(g, f).to(device) for f in ("dst_ptr", "dst_idx", "src_idx", "src_ptr", "src_perm")), g.num_src, g.num_dst, g.src_dst.to(device))


def _edge_shapes(name: str) -> tuple:
    """[nnz], [nnz, 1] and [nnz, d] edge rows for an op that reads them (the first two broadcast), else none."""
    return ("vec", "col", "full") if "edge" in op_spec(name).operands else (None,)


def _inputs(name: str, g: ChunkTensors, edge_shape, seed: int) -> dict:
    """The operands ``name`` reads, grid values (multiples of 1/4) so that max/min ties happen."""
    rng = np.random.default_rng(seed)
    shapes = {"src": (g.num_src, D), "dst": (g.num_dst, D), "edge": {"vec": (g.nnz,), "col": (g.nnz, 1), "full": (g.nnz, D)}.get(edge_shape)}
    return {k: torch.tensor(rng.integers(-8, 9, size=shapes[k]) / 4.0, dtype=torch.float32) for k in op_spec(name).operands}


def _run(backend: str, g, name: str, reduce, inputs: dict, device: str):
    """Forward (gspmm, or gsddmm for ``reduce=None``) and autograd backward; results on the CPU."""
    leaves = {k: v.detach().clone().to(device).requires_grad_() for k, v in inputs.items()}
    if reduce is None:
        out, arg = kernels.gsddmm(g, name, **leaves, backend=backend), None
    else:
        out, arg = kernels.gspmm(g, name, reduce, **leaves, backend=backend)
    w = torch.linspace(-1.0, 2.0, out.numel()).view(out.shape).to(device)
    (out * w).sum().backward()
    return out.detach().cpu(), None if arg is None else arg.cpu(), {k: None if v.grad is None else v.grad.cpu() for k, v in leaves.items()}


def _check_backend(backend: str, name: str, device: str = "cpu") -> None:
    """``backend`` equals the reference for op ``name``: gspmm x every reducer, gsddmm, gradients, sum backward."""
    spec = op_spec(name)
    ref_g, g = _graph(), _graph(device)
    for k, edge_shape in enumerate(_edge_shapes(name)):
        inputs = _inputs(name, ref_g, edge_shape, seed=k)
        for reduce in REDUCERS + (None,):
            what = f"{backend} {name} x {reduce or 'gsddmm'}, edge {edge_shape}"
            want = _run("reference", ref_g, name, reduce, inputs, "cpu")
            got = _run(backend, g, name, reduce, inputs, device)
            torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6, msg=lambda m: f"{what}: {m}")
            assert (got[1] is None) == (want[1] is None) and (got[1] is None or torch.equal(got[1], want[1])), f"{what}: max/min winners"
            for operand in spec.operands:
                r, c = want[2][operand], got[2][operand]
                assert (r is not None) == (operand in spec.grad_operands), f"{what}: the table's grad_operands vs the formula"
                assert (c is None) == (r is None), f"{what}: grad of {operand}"
                if r is not None:
                    torch.testing.assert_close(c, r, rtol=1e-5, atol=1e-6, msg=lambda m: f"{what}, grad of {operand}: {m}")
        if spec.sum_backward:
            _check_sum_backward(backend, name, g, ref_g, inputs, device)


def _check_sum_backward(backend: str, name: str, g, ref_g, inputs: dict, device: str) -> None:
    """``gspmm_sum_backward`` (no recompute) equals autograd on the reference, CSC and source-major edges alike."""
    spec = op_spec(name)
    out, _, _ = _run("reference", ref_g, name, "sum", inputs, "cpu")
    grad = torch.linspace(-1.0, 2.0, out.numel()).view(out.shape)
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    kernels.gspmm(ref_g, name, "sum", **leaves)[0].backward(grad)
    on = {k: v.to(device) for k, v in inputs.items()}
    got = kernels.gspmm_sum_backward(g, name, grad.to(device), **on, backend=backend)
    for operand, value in zip(("src", "edge", "dst"), got):
        want = leaves[operand].grad if operand in spec.grad_operands else None
        assert (value is None) == (want is None), f"{backend} {name} sum backward: grad of {operand}"
        if want is not None:
            torch.testing.assert_close(value.cpu(), want, rtol=1e-5, atol=1e-6, msg=lambda m: f"{backend} {name} sum backward, {operand}: {m}")
    if "src" in spec.grad_operands:
        if "edge" in on:
            on["edge"] = on["edge"][g.src_perm.long()]
        d_src = kernels.gspmm_sum_backward(g, name, grad.to(device), **on, needs=("src",), backend=backend, edge_order="source_major")[0]
        torch.testing.assert_close(d_src.cpu(), leaves["src"].grad, rtol=1e-5, atol=1e-6, msg=lambda m: f"{backend} {name} source-major: {m}")


def test_table_records_are_complete():
    codes = [c for spec in OPS.values() for c in spec.codes()]
    assert len(set(codes)) == len(codes), "every op and scalar variant needs its own kernel code"
    for name, spec in OPS.items():
        assert spec.name == name and callable(spec.reference), f"{name}: no reference formula"
        fn = getattr(sagann.fn, name, None)
        assert isinstance(fn, sagann.fn.MessageFn) and fn.op == name and name in sagann.fn.__all__, f"sagann.fn.{name} is missing"
        assert (fn.uses_src, fn.uses_edge, fn.uses_dst) == tuple(o in spec.operands for o in ("src", "edge", "dst"))
        g = _graph()
        for edge_shape in _edge_shapes(name):
            msg = kernels.reference.message(g, name, **_inputs(name, g, edge_shape, seed=0))
            d_edge = {"vec": 1, "col": 1, "full": D}.get(edge_shape, 0)
            assert tuple(msg.shape) == (g.nnz, spec.message_width(D, d_edge)), f"{name}: the width rule vs the formula"


def test_unknown_op_lists_the_known_ones():
    with pytest.raises(ValueError, match="known ops: copy_src, .*src_add_edge"):
        op_spec("src_pow_dst")
    with pytest.raises(ValueError, match="known ops"):
        kernels.gspmm(_graph(), "src_pow_dst", "sum", src=torch.ones(4, D), backend="cpu")


@pytest.mark.parametrize("name", NAMES)
def test_reference_formula(name):
    """The reference's messages are the record's formula on the gathered rows (edge rows as columns)."""
    g = _graph()
    for edge_shape in _edge_shapes(name):
        inputs = _inputs(name, g, edge_shape, seed=3)
        s, e, d = inputs.get("src"), inputs.get("edge"), inputs.get("dst")
        want = op_spec(name).reference(
            None if s is None else s[g.src_idx.long()], None if e is None else e.reshape(g.nnz, -1), None if d is None else d[g.dst_idx.long()]
        )
        torch.testing.assert_close(kernels.gsddmm(g, name, **inputs), want)


@pytest.mark.parametrize("name", NAMES)
def test_cpu_backend_covers(name):
    _check_backend("cpu", name)


@pytest.mark.cuda_sim
@pytest.mark.skipif(not (SIMULATED or HAS_GPU), reason="no GPU and no simulator here: the child process of the next test runs it")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_backend_covers(name, monkeypatch):
    from sagann.kernels import cuda as backend

    monkeypatch.setattr(backend, "_SEGMENT", 2)  # heavy rows take the split paths (atomics, partials)
    _check_backend("cuda", name, DEVICE)


@pytest.mark.cuda_sim
@pytest.mark.skipif(SIMULATED or HAS_GPU, reason="the CUDA checks run in this process")
def test_cuda_kernels_of_every_op_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)), "-k", "test_cuda_backend_covers"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the CUDA kernels under the simulator failed (rc={proc.returncode}):\n{output[-8000:]}"
    summary = output.strip().splitlines()[-1]
    assert f"{len(NAMES)} passed" in summary and "skipped" not in summary, summary
