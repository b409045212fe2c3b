"""NVTX ranges mirror spans when CUDA is present (checked here with a recording stand-in for torch.cuda.nvtx)."""
import threading

import pytest
import torch

from sagann.profiler import profile, span
from sagann.profiler import recorder


class FakeNvtx:
    """Records range_push/range_pop per thread, as NVTX keeps one stack per thread."""

    def __init__(self):
        self.events = []
        self.depth = {}

    def range_push(self, name):
        t = threading.get_ident()
        self.depth[t] = self.depth.get(t, 0) + 1
        self.events.append(("push", name))

    def range_pop(self):
        t = threading.get_ident()
        assert self.depth.get(t, 0) > 0, "range_pop without a push on this thread"
        self.depth[t] -= 1
        self.events.append(("pop", None))


@pytest.fixture
def cuda_nvtx(monkeypatch):
    fake = FakeNvtx()
    monkeypatch.setattr(recorder, "_cuda_nvtx", lambda: fake)
    return fake


def test_spans_open_and_close_named_nvtx_ranges(cuda_nvtx):
    with profile():
        with span("h2d", "cuda0", "copy", chunk=(2, 0, 1)):
            with span("kernel", "cuda0", "compute"):
                pass
    assert cuda_nvtx.events == [("push", "h2d 2,0,1"), ("push", "kernel"), ("pop", None), ("pop", None)]


def test_nvtx_range_closes_when_the_body_raises(cuda_nvtx):
    with profile() as prof:
        with pytest.raises(ValueError):
            with span("kernel", "cuda0", "compute", chunk=(0, 0, 0)):
                raise ValueError("boom")
    assert [e[0] for e in cuda_nvtx.events] == ["push", "pop"]
    assert len(prof) == 1


def test_ranges_balance_per_thread(cuda_nvtx):
    def work(k):
        for _ in range(50):
            with span("kernel", f"cuda{k}", "compute", chunk=(k, 0, 0)):
                pass

    with profile() as prof:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(prof) == 150
    assert all(d == 0 for d in cuda_nvtx.depth.values())
    assert sum(e[0] == "push" for e in cuda_nvtx.events) == 150


def test_nvtx_false_and_profiling_off_emit_nothing(cuda_nvtx):
    with span("kernel", "cuda0", "compute"):
        pass
    with profile(nvtx=False):
        with span("kernel", "cuda0", "compute"):
            pass
    assert cuda_nvtx.events == []


def test_nested_recorders_restore_the_outer_nvtx_setting(cuda_nvtx):
    with profile():
        with profile(nvtx=False):
            with span("kernel", "cuda0", "compute"):
                pass
        with span("d2h", "cuda0", "copy"):
            pass
    assert cuda_nvtx.events == [("push", "d2h"), ("pop", None)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_nvtx_true_without_cuda_says_why():
    with pytest.raises(RuntimeError, match="NVTX needs CUDA"):
        profile(nvtx=True).start()


def test_nvtx_option_is_validated():
    with pytest.raises(ValueError, match="nvtx"):
        profile(nvtx="yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a real GPU")
def test_real_nvtx_ranges_run_on_a_gpu():
    with profile() as prof:
        with span("kernel", "cuda0", "compute", chunk=(0, 0, 0)):
            torch.ones(4, device="cuda").sum().item()
    assert len(prof) == 1


def test_every_nvtx_range_in_the_package_is_named_like_its_span():
    """Nsight and the profiler show one name per span: every ``range_push`` in sagann takes ``nvtx_name(kind, chunk)``.

    (The GPU's event-timed compute spans push their own ranges; a hand-made
    name there would differ from the profiler's, as one once did.)
    """
    import ast
    from pathlib import Path

    import sagann

    pushes = []
    for path in Path(sagann.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "range_push":
                pushes.append((path.name, node))
    assert len(pushes) >= 2, "the profiler's and the CUDA device's ranges"
    for name, call in pushes:
        arg = call.args[0] if call.args else None
        called = arg.func if isinstance(arg, ast.Call) else None
        fn = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", None)
        assert fn == "nvtx_name", f"{name}:{call.lineno}: range_push must be given nvtx_name(kind, chunk), got {ast.unparse(arg) if arg else None}"


def test_nvtx_name_is_public_and_shared():
    from sagann import profiler

    assert profiler.nvtx_name is recorder.nvtx_name
    assert profiler.nvtx_name("scatter", (1, 2, 0)) == "scatter 1,2,0" and profiler.nvtx_name("kernel", None) == "kernel"


def test_nvtx_call_runs_the_work_inside_a_named_range(cuda_nvtx):
    from sagann.profiler import nvtx_call

    assert nvtx_call("h2d", (0, 1, 2), lambda: 7) == 7  # profiling off: no range
    assert cuda_nvtx.events == []
    with profile():
        assert nvtx_call("h2d", (0, 1, 2), lambda: 8) == 8
        with pytest.raises(KeyError):
            nvtx_call("h2d", None, lambda: {}["x"])
    assert cuda_nvtx.events == [("push", "h2d 0,1,2"), ("pop", None), ("push", "h2d"), ("pop", None)]


@pytest.mark.parametrize("layer", ["gcn", "gat"])
def test_every_span_of_an_out_of_core_pass_has_its_nvtx_range(cuda_nvtx, layer):
    """Forward and backward under a small budget: each span's name was pushed at least as often as spans carry it."""
    from collections import Counter

    import numpy as np

    import sagann
    from sagann.profiler import nvtx_name

    n, rng = 200, np.random.default_rng(0)
    ei = rng.integers(0, n, size=(2, 1500))
    g = sagann.ChunkedGraph(ei, n, device=sagann.CpuDevice("120KB"))
    torch.manual_seed(0)
    conv = sagann.nn.GCNConv(16, 8) if layer == "gcn" else sagann.nn.GATConv(16, 4, heads=2)
    x = torch.randn(n, 16, requires_grad=True)
    with profile() as prof:
        conv(g, x).sum().backward()
    spans = Counter(nvtx_name(s.kind, s.chunk) for s in prof.spans())
    assert any(name.startswith("h2d ") for name in spans), "an out-of-core pass loads chunks"
    pushes = Counter(name for event, name in cuda_nvtx.events if event == "push")
    missing = {name: count - pushes[name] for name, count in spans.items() if pushes[name] < count}
    assert not missing, f"spans without an NVTX range of their name: {missing}"
    assert all(d == 0 for d in cuda_nvtx.depth.values())
