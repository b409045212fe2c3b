"""Check the multi-device simulator against real runs with throttled virtual links, then project (simulated).

1. Calibrate: one GCN epoch on ONE CpuDevice with an emulated host link
   (``link_bandwidth``), full transfers, natural order.
2. Validate: the same epoch on 1, 2 and 4 CpuDevices (own host link each,
   device-to-device links of ``peer_bandwidth``), without and with chains;
   measured epoch (median) next to the simulator's prediction.
3. Project (simulated) the calibrated epoch on the shipped topologies,
   1/2/4/8 devices, with and without chains; with ``--project-vertices``
   and ``--project-edges``, also the workload extrapolated to that size
   (``scale_workload``: linear in edges and vertices, same P), e.g.
   NeuGraph's amazon (8.6M vertices, 231.6M edges, 96 features).

Every layer streams its edges (``cache_gather=False``), as NeuGraph's do.

Run: python benchmarks/simulator_validation.py [--vertices 6000] [--edges 60000] [--link 40MB]
     python benchmarks/simulator_validation.py --skip-validation --vertices 269000 --edges 7240000 --features 96 --classes 22 \
         --link 4GB --project-vertices 8.6e6 --project-edges 231.6e6
Appends one JSON line to benchmarks/results.jsonl.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import sagann
from sagann.bench._results import append_result
from sagann.chunks.synthetic import rmat
from sagann.engine.models import GCN
from sagann.scheduler import topology as T
from sagann.units import parse_bytes
from sagann.scheduler.simulator import calibrate, scale_workload, simulate


def cpu_topology(n: int, link: int, peer: int, chains: list[list[int]], switch: bool) -> T.Topology:
    """n CPU devices: each with its own host link, or all under one switch sharing one uplink.

    Chains: with a switch, one chain of all; else NVLink-style peer links along each given chain.
    """
    names = [f"cpu{k}" for k in range(n)]
    if switch:
        return T.from_dict({"name": f"cpu-{n}-switch", "devices": names, "switches": [{"devices": names, "uplink_bandwidth": link, "peer_bandwidth": peer}]})
    links = [{"devices": [f"cpu{a}", f"cpu{b}"], "bandwidth": peer} for c in chains for a, b in zip(c, c[1:])]
    return T.from_dict({"name": f"cpu-{n}", "host_bandwidth": link, "devices": names, "nvlink": links})


def run(ei, n, x, y, topo, P, link, peer, repeats, chains=True):
    """Median seconds of ``repeats`` training steps (after one warm-up) on CpuDevices emulating ``topo``'s links."""
    shared = {s.name: sagann.EmulatedLink(s.uplink_bandwidth, s.name) for s in topo.switches}
    devices = []
    for name in topo.device_names:
        sw = topo.switch_of(name)
        devices.append(sagann.CpuDevice(name=name, link_bandwidth=shared[sw.name] if sw else link, peer_bandwidth=peer, copy_transfers=True))
    torch.manual_seed(0)
    model = GCN(x.shape[1], 32, int(y.max()) + 1, dropout=0.0)
    g = sagann.ChunkedGraph(ei, n, num_chunks=P, device=devices, topology=topo if chains else None, schedule=sagann.ScheduleConfig(transfer="full", order="natural", cache_gather=False))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    times = []
    for k in range(repeats + 1):
        g.step_log.clear()
        g.call_log.clear()
        g.link.reset()
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(g, x), y).backward()
        opt.step()
        if k:
            times.append(time.perf_counter() - t0)
    return g, times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vertices", type=int, default=6000)
    ap.add_argument("--edges", type=int, default=60000)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--link", default="40MB")
    ap.add_argument("--peer", default="80MB")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--skip-validation", action="store_true", help="calibrate and project only (a graph too big to run 10 throttled configurations)")
    ap.add_argument("--project-vertices", type=float, default=None, help="also project the workload extrapolated to this many vertices")
    ap.add_argument("--project-edges", type=float, default=None, help="... and this many edges")
    args = ap.parse_args()
    if (args.project_vertices is None) != (args.project_edges is None):
        ap.error("give both --project-vertices and --project-edges, or neither")
    link, peer = parse_bytes(args.link), parse_bytes(args.peer)
    n = args.vertices
    ei = rmat(n, args.edges, seed=0, permute=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, args.features, generator=gen)
    y = torch.randint(0, args.classes, (n,), generator=gen)

    g1, t1 = run(ei, n, x, y, cpu_topology(1, link, peer, [[0]], False), args.chunks, link, peer, args.repeats)
    work = calibrate(g1, statistics.median(t1), link_bandwidth=link)
    print(f"calibration: 1 device, {statistics.median(t1):.3f} s/epoch measured, {len(work.passes)} passes, rest {work.rest_seconds:.3f} s")

    rows = []
    configs = [(1, [[0]], False), (2, [[0], [1]], False), (2, [[0, 1]], False), (4, [[0], [1], [2], [3]], False), (4, [[0, 1], [2, 3]], False), (4, [[0, 1, 2, 3]], False), (2, None, True), (2, [[0, 1]], True), (4, None, True), (4, [[0, 1, 2, 3]], True)]
    for D, chains, switch in [] if args.skip_validation else configs:
        topo = cpu_topology(D, link, peer, chains or [[k] for k in range(D)], switch)
        use_chains = chains is not None and any(len(c) > 1 for c in chains)
        g, times = run(ei, n, x, y, topo, args.chunks, link, peer, args.repeats, chains=use_chains)
        measured = statistics.median(times)
        sim = simulate(work, topo, chains=use_chains, index_over_link=False)
        err = (sim.epoch_seconds - measured) / measured
        label = ("one shared uplink, " if switch else "own host links, ") + ("chains " + " | ".join(",".join(str(k) for k in c) for c in chains) if use_chains else "no chains")
        rows.append({"devices": D, "config": label, "measured_s": measured, "simulated_s": sim.epoch_seconds, "error": err, "block_host_MB_measured": g.link.host_bytes / 1e6, "block_peer_MB_measured": g.link.peer_bytes / 1e6})
        print(f"{D} devices, {label}: measured {measured:.3f} s, simulated {sim.epoch_seconds:.3f} s ({100 * err:+.1f}%), V_i blocks over the host link {g.link.host_bytes / 1e6:.2f} MB, device to device {g.link.peer_bytes / 1e6:.2f} MB")

    workloads = [("measured graph", work)]
    if args.project_vertices is not None:
        fv, fe = args.project_vertices / n, args.project_edges / ei.shape[1]
        workloads.append((f"extrapolated to {args.project_vertices:.3g} vertices, {args.project_edges:.3g} edges (x{fv:.1f} vertices, x{fe:.1f} edges)", scale_workload(work, edges=fe, vertices=fv)))
    projections = []
    print("\nprojections (simulated), epoch seconds; compute as measured here (x1) and 20x faster (x0.05, an assumption):")
    for what, w in workloads:
        for name in ("neugraph-pcie-8gpu", "dgx1-nvlink-8gpu"):
            topo = T.shipped(name)
            for scale in (1.0, 0.05):
                cells = []
                for D in (1, 2, 4, 8):
                    for chains in (False, True):
                        p = simulate(w, topo, devices=topo.device_names[:D], chains=chains, compute_scale=scale)
                        projections.append({"workload": what, "topology": name, "compute_scale": scale, "devices": D, "chains": chains, "simulated_epoch_s": p.epoch_seconds, "simulated_host_MB": p.host_bytes / 1e6, "simulated_peer_MB": p.peer_bytes / 1e6})
                        cells.append(f"{D}{'c' if chains else ' '} {p.epoch_seconds:.4f}s/{p.host_bytes / 1e6:.1f}MB")
                print(f"[simulated] {what}, {name} x{scale}: " + "  ".join(cells))
    append_result(str(Path(__file__).with_name("results.jsonl")), "simulator_validation", {"args": vars(args), "validation": rows, "projections_simulated": projections})


if __name__ == "__main__":
    main()
