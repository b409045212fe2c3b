"""The simulator's event logic on hand-made workloads (exact), and its calibration from a real run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sagann
from sagann.scheduler import topology as T
from sagann.scheduler.simulator import SimChunk, SimPass, Workload, calibrate, scale_workload, simulate
from tests.engine.layers import GatedGCN


def box(n, switch=False, peer=100, link=100):
    names = [f"d{k}" for k in range(n)]
    if switch:
        return T.from_dict({"name": "sw", "devices": names, "switches": [{"devices": names, "uplink_bandwidth": link, "peer_bandwidth": peer}]})
    return T.from_dict({"name": "own", "devices": names, "host_bandwidth": link, "nvlink": [{"devices": [a, b], "bandwidth": peer} for a, b in zip(names, names[1:])]})


def one_pass(chunks, phase="forward", prefetch=1, bounds=(0, 10, 20), vertex=0.0, vertex_bytes=0):
    return Workload([SimPass(0, "L", phase, tuple(chunks), prefetch, 0.0, vertex, tuple(bounds), vertex_bytes)], 0.0, 0.0)


def test_one_device_two_stage_pipeline():
    # two chunks: load 1 s each (100 B at 100 B/s), compute 2 s each, prefetch 1: 1 + 2 + 2 = 5 s
    w = one_pass([SimChunk(0, 0, 10, 0, 100, 0, 2.0), SimChunk(1, 0, 10, 0, 100, 0, 2.0)], bounds=(0, 10, 20))
    p = simulate(w, box(1))
    assert p.epoch_seconds == pytest.approx(5.0) and p.kind == "simulated"
    # no prefetch: load and compute alternate: 1 + 2 + 1 + 2
    w0 = one_pass([SimChunk(0, 0, 10, 0, 100, 0, 2.0), SimChunk(1, 0, 10, 0, 100, 0, 2.0)], prefetch=0)
    assert simulate(w0, box(1)).epoch_seconds == pytest.approx(6.0)


def test_devices_split_columns_and_a_shared_uplink_serialises():
    chunks = [SimChunk(0, 0, 10, 0, 100, 0, 1.0), SimChunk(0, 1, 10, 0, 100, 0, 1.0)]  # one chunk per column
    w = one_pass(chunks)
    assert simulate(w, box(2)).epoch_seconds == pytest.approx(2.0)  # own links: both load 1 s, compute 1 s
    assert simulate(w, box(2, switch=True)).epoch_seconds == pytest.approx(3.0)  # one uplink: the second load waits
    assert simulate(w, box(1)).epoch_seconds == pytest.approx(3.0)  # one device: 1 + 1 + 1


def test_chains_send_each_block_once_per_chain():
    # 4 devices, 4 columns, 4 source intervals: every chunk needs its V_i block of 1000 B
    bounds = (0, 5, 10, 15, 20)
    chunks = [SimChunk(i, j, 5, 1000, 0, 0, 0.01) for j in range(4) for i in range(4)]
    w = one_pass(chunks, bounds=bounds)
    plain = simulate(w, box(4, switch=True, peer=1000), chains=False)
    chained = simulate(w, box(4, switch=True, peer=1000), chains=True)
    assert plain.host_bytes == 16 * 1000 and plain.peer_bytes == 0
    assert chained.host_bytes == 4 * 1000 and chained.peer_bytes == 3 * 4 * 1000
    assert chained.chains == [["d0", "d1", "d2", "d3"]]
    # on one uplink of 100 B/s, 16 blocks take 160 s; the chain sends 4 over it and forwards the rest peer to peer
    assert plain.epoch_seconds == pytest.approx(160.01)
    # per block: 10 s over the uplink, then three 1 s hops; the relay forwards one block at a time
    assert chained.epoch_seconds == pytest.approx(4 * 13 + 0.01)


def test_backward_keeps_a_block_across_a_devices_columns():
    bounds = (0, 5, 10, 15, 20)
    chunks = [SimChunk(i, j, 5, 1000, 0, 0, 0.0) for i in range(4) for j in range(4)]  # row order
    w = one_pass(chunks, phase="backward", bounds=bounds)
    p = simulate(w, box(2, switch=True), chains=True)  # each device owns two columns: one block per row, per chain
    assert p.host_bytes == 4 * 1000 and p.peer_bytes == 4 * 1000


def test_vertex_work_scales_with_owned_vertices_and_queues_on_the_link():
    w = one_pass([SimChunk(0, 0, 1, 0, 0, 0, 0.0), SimChunk(0, 1, 1, 0, 0, 0, 0.0)], vertex=4.0, vertex_bytes=200)
    assert simulate(w, box(1)).epoch_seconds == pytest.approx(2.0 + 4.0)
    assert simulate(w, box(2)).epoch_seconds == pytest.approx(1.0 + 2.0)  # halves, each on its own link
    assert simulate(w, box(2, switch=True)).epoch_seconds == pytest.approx(2.0 + 2.0)  # the two halves share the uplink
    with pytest.raises(ValueError, match="compute_scale"):
        simulate(w, box(1), compute_scale=0)


def test_calibrate_from_a_run_and_project():
    rng = np.random.default_rng(0)
    n = 48
    ei = np.stack([rng.integers(0, n, 300), rng.integers(0, n, 300)])
    x = torch.randn(n, 8)
    g = sagann.ChunkedGraph(ei, n, num_chunks=4, device=[sagann.CpuDevice(name="d0")], schedule=sagann.ScheduleConfig(transfer="full", order="natural"))
    layer = GatedGCN(8, 4)
    layer(g, x.requires_grad_(True)).sum().backward()
    w = calibrate(g, epoch_seconds=1.0)
    assert [p.phase for p in w.passes if p.chunks] == ["forward", "backward"]
    fwd = next(p for p in w.passes if p.chunks and p.phase == "forward")
    assert len(fwd.chunks) == len(g.partition.chunks) and sum(c.nnz for c in fwd.chunks) == 300
    assert all(c.block_bytes == (g.partition.interval_size(c.i)) * fwd.chunks[0].block_bytes // g.partition.interval_size(fwd.chunks[0].i) for c in fwd.chunks)
    spec = box(4, switch=True, link=10**9, peer=10**9)
    plain, chained = simulate(w, spec, chains=False), simulate(w, spec, chains=True)
    blocks = sum(c.block_bytes for p in w.passes for c in p.chunks)
    assert plain.host_bytes - chained.host_bytes > 0.5 * blocks  # most block traffic moved to peer links
    with pytest.raises(ValueError, match="one device"):
        g2 = sagann.ChunkedGraph(ei, n, num_chunks=4, device=[sagann.CpuDevice(name="a"), sagann.CpuDevice(name="b")])
        GatedGCN(8, 4)(g2, x)
        calibrate(g2, 1.0)


def test_scaled_workload_grows_each_part_with_what_it_streams():
    # a chunk: 100 B of V_i's block (vertices) + 100 B of edge rows (edges), compute 2 s (edges); vertex work 4 s (vertices)
    w = one_pass([SimChunk(0, 0, 10, 100, 100, 40, 2.0)], bounds=(0, 10), vertex=4.0, vertex_bytes=100)
    w.epoch_seconds, w.rest_seconds = 7.0, 1.0
    same = scale_workload(w, edges=1.0, vertices=1.0)
    assert simulate(same, box(1)).epoch_seconds == pytest.approx(simulate(w, box(1)).epoch_seconds)
    big = scale_workload(w, edges=3.0, vertices=2.0)
    c = big.passes[0].chunks[0]
    assert (c.nnz, c.block_bytes, c.other_bytes, c.index_bytes, c.compute_seconds) == (30, 200, 300, 120, pytest.approx(6.0))
    assert big.passes[0].bounds == (0, 20) and big.passes[0].vertex_seconds == pytest.approx(8.0) and big.passes[0].vertex_bytes == 200
    assert big.rest_seconds == pytest.approx(2.0) and big.epoch_seconds == pytest.approx(6.0 * 3 + 2.0)
    # 100 B/s: load 5 s (500 B), compute 6 s, vertex rows 2 s + work 8 s, rest 2 s
    assert simulate(big, box(1), index_over_link=False).epoch_seconds == pytest.approx(5 + 6 + 2 + 8 + 2)
    with pytest.raises(ValueError, match="positive"):
        scale_workload(w, edges=0, vertices=1)
