"""Progress inside a pass: every chunk step reaches the watcher, as a bar on a terminal or as periodic lines."""
from __future__ import annotations

import io
import re
import threading

import torch

import sagann
from sagann.scheduler.progress import PassProgress, watch

LINE = re.compile(r"^GCNConv (forward|backward): (\d+)/(\d+) chunks \(\d+%\), [\d.]+ \w+ moved, [\d.]+ s(, ETA \d+ s)?$")


def _graph(budget="40KB"):
    torch.manual_seed(0)
    edge_index = torch.randint(0, 300, (2, 3000))
    return sagann.ChunkedGraph(edge_index, 300, device=sagann.CpuDevice(budget))


class _Counter:
    """A watcher that keeps what the executor told it."""

    def __init__(self):
        self.passes, self.steps, self.counts, self.closed, self.lock = [], {}, [], [], threading.Lock()

    def began(self, key, name, phase, steps):
        self.passes.append((key, name, phase, steps))
        self.steps[key] = [0, 0]  # one executor runs its call's passes one after another
        self.counts.append(self.steps[key])

    def stepped(self, key, nbytes):
        with self.lock:
            self.steps[key][0] += 1
            self.steps[key][1] += nbytes

    def ended(self, key):
        self.closed.append(key)


def test_every_step_of_every_pass_is_reported():
    g = _graph()
    x = torch.randn(300, 32, requires_grad=True)
    with watch(_Counter()) as w:
        sagann.nn.GCNConv(32, 32)(g, x).sum().backward()
    assert g.num_chunks > 1
    assert [(p, s) for _, _, p, s in w.passes] == [(r.phase, r.chunks) for r in g.pass_log]
    assert len(w.closed) == len(w.passes)  # every pass closed
    forward, record = w.counts[0], g.pass_log[0]
    assert record.phase == "forward" and forward == [record.chunks, record.bytes_moved]  # forward moves rows only in its steps
    assert [c for c, _ in w.counts] == [r.chunks for r in g.pass_log]


def test_lines_every_interval_and_the_last_line_of_a_pass():
    g = _graph()
    out = io.StringIO()
    with watch(PassProgress(tty=False, every=0.0, stream=out)):
        sagann.nn.GCNConv(32, 32)(g, torch.randn(300, 32)).sum()
    lines = out.getvalue().splitlines()
    assert lines and all(LINE.match(line) for line in lines), lines
    done = [LINE.match(line).group(2, 3) for line in lines]
    assert done[0] == ("1", str(g.pass_log[0].chunks)) and done[-1] == (str(g.pass_log[0].chunks),) * 2
    assert "ETA" in lines[0]


def test_no_line_within_the_interval():
    out = io.StringIO()
    with watch(PassProgress(tty=False, every=3600.0, stream=out)):
        sagann.nn.GCNConv(32, 32)(_graph(), torch.randn(300, 32))
    assert out.getvalue() == ""


def test_a_bar_on_a_terminal():
    out = io.StringIO()
    g = _graph()
    with watch(PassProgress(tty=True, stream=out)):
        sagann.nn.GCNConv(32, 32)(g, torch.randn(300, 32))
    text = out.getvalue()
    assert "GCNConv forward" in text and f"/{g.pass_log[0].chunks}" in text and "moved" in text


def test_devices_of_one_pass_count_into_one_line():
    """Two devices' passes in flight at once are one line (driven by hand: threads may or may not overlap)."""
    out = io.StringIO()
    w = PassProgress(tty=False, every=0.0, stream=out)
    w.began(1, "GCNConv", "forward", 10)
    w.began(2, "GCNConv", "forward", 6)
    w.stepped(1, 100)
    w.stepped(2, 50)
    assert out.getvalue().splitlines()[-1].startswith("GCNConv forward on 2 devices: 2/16 chunks")
    w.ended(1)
    w.ended(2)


def test_every_step_of_a_two_device_pass_is_counted():
    devices = [sagann.CpuDevice("60KB", name=f"cpu{k}") for k in range(2)]
    g = sagann.ChunkedGraph(torch.randint(0, 300, (2, 3000)), 300, device=devices)
    out = io.StringIO()
    with watch(PassProgress(tty=False, every=0.0, stream=out)):
        sagann.nn.GCNConv(32, 32)(g, torch.randn(300, 32))
    steps = sum(r.steps for r in g.pass_log)
    counts = [tuple(int(n.replace(",", "")) for n in line.split(": ")[1].split(" chunks")[0].split("/")) for line in out.getvalue().splitlines()]
    assert max(t for _, t in counts) in (steps, max(r.steps for r in g.pass_log))  # joint when the passes overlapped
    assert counts[-1][0] == counts[-1][1]  # the last line: a finished pass
