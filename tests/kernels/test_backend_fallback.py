"""A GPU device that cannot run the fused ``cuda`` kernels says so, and profiles count the calls per backend."""
from __future__ import annotations

import types
import warnings

import numpy as np
import pytest
import torch

from sagann import kernels, profiler
from sagann.kernels import backend as registry
from sagann.kernels import ChunkTensors


@pytest.fixture
def fresh(monkeypatch):
    """Decide the GPU backend anew in this test (it is cached per process)."""
    monkeypatch.setattr(registry, "_GPU_BACKEND", None)


def test_fallback_warns_with_the_cause_and_the_fix(fresh, monkeypatch):
    import numba.cuda

    monkeypatch.setattr(numba.cuda, "is_available", lambda: False)
    with pytest.warns(kernels.BackendFallbackWarning, match=r"backend 'reference'.*is_available\(\) is False.*pip install 'sagann\[cuda\]'"):
        assert kernels.gpu_kernel_backend() == "reference"
    assert "is_available() is False" in kernels.gpu_fallback_reason()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.gpu_kernel_backend(warn=False) == "reference"


def test_a_broken_cuda_backend_is_a_reported_fallback(fresh, monkeypatch):
    import numba.cuda

    def broken():
        raise OSError("libnvvm.so: cannot open shared object file")

    monkeypatch.setattr(numba.cuda, "is_available", lambda: True)
    monkeypatch.setattr(registry, "_LOADERS", {**registry._LOADERS, "cuda": broken})
    monkeypatch.setattr(registry, "_LOADED", {k: v for k, v in registry._LOADED.items() if k != "cuda"})
    with pytest.warns(kernels.BackendFallbackWarning, match="libnvvm.so"):
        assert kernels.gpu_kernel_backend() == "reference"


def test_the_simulator_is_never_taken_for_a_gpu(fresh, monkeypatch):
    from numba.core import config

    monkeypatch.setattr(config, "ENABLE_CUDASIM", 1)
    with pytest.warns(kernels.BackendFallbackWarning, match="NUMBA_ENABLE_CUDASIM"):
        assert kernels.gpu_kernel_backend() == "reference"


def test_a_working_gpu_runs_cuda_without_a_warning(fresh, monkeypatch):
    import numba.cuda

    monkeypatch.setattr(numba.cuda, "is_available", lambda: True)
    monkeypatch.setattr(registry, "_LOADERS", {**registry._LOADERS, "cuda": lambda: types.SimpleNamespace()})
    monkeypatch.setattr(registry, "_LOADED", {k: v for k, v in registry._LOADED.items() if k != "cuda"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.gpu_kernel_backend() == "cuda"
    assert kernels.gpu_fallback_reason() is None


def test_cuda_device_reports_its_backend_through_the_same_check():
    """CudaDevice.kernel_backend is the registry's decision (checked on the class: no GPU is needed)."""
    from sagann.scheduler.cuda import CudaDevice

    from sagann.scheduler.cuda_runtime import TorchRuntime

    fake = types.SimpleNamespace(runtime=TorchRuntime.__new__(TorchRuntime))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kernels.BackendFallbackWarning)
        assert CudaDevice.kernel_backend.fget(fake) == kernels.gpu_kernel_backend(warn=False)


def test_profiles_count_kernel_calls_per_backend():
    g = ChunkTensors.from_coo(np.array([0, 1, 1]), np.array([1, 0, 1]), 2, 2)[0]
    x = torch.randn(2, 3)
    kernels.gspmm(g, "copy_src", "sum", src=x)  # profiling off: nothing counted, nothing fails
    with profiler.profile(nvtx=False) as prof:
        kernels.gspmm(g, "copy_src", "sum", src=x, backend="reference")
        kernels.gspmm(g, "copy_src", "max", src=x, backend="cpu")
        kernels.gsddmm(g, "src_dot_dst", src=x, dst=x, backend="cpu")
        kernels.gspmm_sum_backward(g, "copy_src", torch.ones(2, 3), src=x, backend="reference")
    assert prof.counters(kernels.CALL_COUNTER + "reference") == {0: 2}
    assert prof.counters(kernels.CALL_COUNTER + "cpu") == {0: 2}
    assert prof.counters(kernels.CALL_COUNTER + "cuda") == {}


def test_attention_calls_are_counted_too():
    from sagann.kernels.attention import attention_partials

    g = ChunkTensors.from_coo(np.array([0, 1]), np.array([1, 0]), 2, 2)[0]
    with profiler.profile(nvtx=False) as prof:
        attention_partials(g, torch.randn(2, 6), torch.randn(2, 2), 2, backend="cpu")
    assert prof.counters(kernels.CALL_COUNTER + "cpu") == {0: 1}


def test_a_backend_that_loads_but_cannot_compile_is_a_reported_fallback(fresh, monkeypatch):
    import numba.cuda

    def probe():
        raise AttributeError("module 'numpy' has no attribute 'row_stack'")

    monkeypatch.setattr(numba.cuda, "is_available", lambda: True)
    monkeypatch.setattr(registry, "_LOADERS", {**registry._LOADERS, "cuda": lambda: types.SimpleNamespace(probe=probe)})
    monkeypatch.setattr(registry, "_LOADED", {k: v for k, v in registry._LOADED.items() if k != "cuda"})
    with pytest.warns(kernels.BackendFallbackWarning, match="AttributeError.*row_stack"):
        assert kernels.gpu_kernel_backend() == "reference"
