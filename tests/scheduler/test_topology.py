"""Topology specs, the nvidia-smi reader and the chains they give."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sagann
from sagann.scheduler import topology as T

# `nvidia-smi topo -m` on a DGX-1V (8 V100, NVLink hybrid cube-mesh), as captured, with its legend
DGX1 = """\
\tGPU0\tGPU1\tGPU2\tGPU3\tGPU4\tGPU5\tGPU6\tGPU7\tmlx5_0\tCPU Affinity\tNUMA Affinity
GPU0\t X \tNV1\tNV1\tNV2\tNV2\tSYS\tSYS\tSYS\tPIX\t0-19,40-59\t0
GPU1\tNV1\t X \tNV2\tNV1\tSYS\tNV2\tSYS\tSYS\tPIX\t0-19,40-59\t0
GPU2\tNV1\tNV2\t X \tNV2\tSYS\tSYS\tNV1\tSYS\tPHB\t0-19,40-59\t0
GPU3\tNV2\tNV1\tNV2\t X \tSYS\tSYS\tSYS\tNV1\tPHB\t0-19,40-59\t0
GPU4\tNV2\tSYS\tSYS\tSYS\t X \tNV1\tNV1\tNV2\tSYS\t20-39,60-79\t1
GPU5\tSYS\tNV2\tSYS\tSYS\tNV1\t X \tNV2\tNV1\tSYS\t20-39,60-79\t1
GPU6\tSYS\tSYS\tNV1\tSYS\tNV1\tNV2\t X \tNV2\tSYS\t20-39,60-79\t1
GPU7\tSYS\tSYS\tSYS\tNV1\tNV2\tNV1\tNV2\t X \tSYS\t20-39,60-79\t1
mlx5_0\tPIX\tPIX\tPHB\tPHB\tSYS\tSYS\tSYS\tSYS\t X \t\t

Legend:

  X    = Self
  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)
  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node
  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)
  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)
  PIX  = Connection traversing at most a single PCIe bridge
  NV#  = Connection traversing a bonded set of # NVLinks
"""

# an 8-GPU PCIe box with two switches of four (NeuGraph's testbed shape), bold header as a terminal prints it
PCIE = """\
\t\x1b[4mGPU0\tGPU1\tGPU2\tGPU3\tGPU4\tGPU5\tGPU6\tGPU7\tCPU Affinity\tNUMA Affinity\x1b[0m
GPU0\t X \tPIX\tPXB\tPXB\tPHB\tPHB\tPHB\tPHB\t0-23\tN/A
GPU1\tPIX\t X \tPXB\tPXB\tPHB\tPHB\tPHB\tPHB\t0-23\tN/A
GPU2\tPXB\tPXB\t X \tPIX\tPHB\tPHB\tPHB\tPHB\t0-23\tN/A
GPU3\tPXB\tPXB\tPIX\t X \tPHB\tPHB\tPHB\tPHB\t0-23\tN/A
GPU4\tPHB\tPHB\tPHB\tPHB\t X \tPIX\tPXB\tPXB\t0-23\tN/A
GPU5\tPHB\tPHB\tPHB\tPHB\tPIX\t X \tPXB\tPXB\t0-23\tN/A
GPU6\tPHB\tPHB\tPHB\tPHB\tPXB\tPXB\t X \tPIX\t0-23\tN/A
GPU7\tPHB\tPHB\tPHB\tPHB\tPXB\tPXB\tPIX\t X \t0-23\tN/A
"""


def gpus(n):
    return [f"gpu{k}" for k in range(n)]


def test_shipped_specs_give_neugraphs_chains():
    assert set(T.shipped_names()) >= {"neugraph-pcie-8gpu", "dgx1-nvlink-8gpu"}
    pcie = T.shipped("neugraph-pcie-8gpu")
    assert pcie.chains() == [gpus(4), gpus(8)[4:]]
    assert pcie.host_link("gpu1") == pcie.host_link("gpu3") != pcie.host_link("gpu4")  # one uplink per switch
    assert pcie.peer_bandwidth("gpu0", "gpu4") is None
    nv = T.shipped("dgx1-nvlink-8gpu")
    (chain,) = nv.chains()
    assert sorted(chain) == gpus(8)
    assert all(nv.nvlink_bandwidth(a, b) > 0 for a, b in zip(chain, chain[1:]))  # every hop rides NVLink
    assert T.from_dict(nv.to_dict()) == nv  # round trip


def test_subsets_follow_the_spec():
    pcie = T.shipped("neugraph-pcie-8gpu")
    assert pcie.chains(["gpu5", "gpu0", "gpu1", "gpu4"]) == [["gpu0", "gpu1"], ["gpu4", "gpu5"]]
    with pytest.raises(T.TopologyError, match="no device named 'cpu0'"):
        pcie.chains(["cpu0"])


def test_parse_nvidia_smi_dgx1():
    t = T.parse_nvidia_smi_topo(DGX1)
    assert t.device_names == gpus(8)
    assert len(t.nvlinks) == 16 and t.nvlink_bandwidth("gpu0", "gpu3") == 2 * T.NVLINK_BANDWIDTH_PER_LINK
    assert t.nvlink_bandwidth("gpu0", "gpu5") == 0
    assert not t.switches  # NVLinked pairs show NV#, the NIC column is ignored
    shipped = T.shipped("dgx1-nvlink-8gpu")
    assert {frozenset((l.a, l.b)): l.bandwidth for l in t.nvlinks} == {frozenset((l.a, l.b)): l.bandwidth for l in shipped.nvlinks}
    assert t.chains() == shipped.chains()


def test_parse_nvidia_smi_pcie_switches():
    t = T.parse_nvidia_smi_topo(PCIE)
    assert [s.devices for s in t.switches] == [tuple(gpus(4)), tuple(gpus(8)[4:])]
    assert t.chains() == [gpus(4), gpus(8)[4:]]


def test_parse_errors():
    with pytest.raises(T.TopologyError, match="no GPU header"):
        T.parse_nvidia_smi_topo("No devices were found")
    with pytest.raises(T.TopologyError, match="unknown connection 'QQ'"):
        T.parse_nvidia_smi_topo(PCIE.replace("PIX", "QQ", 1))
    with pytest.raises(T.TopologyError, match="no row for GPU7"):
        T.parse_nvidia_smi_topo("\n".join(l for l in PCIE.splitlines() if not l.startswith("GPU7")))


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"devices": []}, "'devices' must be a non-empty list"),
        ({"devices": ["a", "a"]}, "repeated: a"),
        ({"devices": ["a"], "switches": [{"devices": ["a", "b"]}]}, "unknown device 'b'"),
        ({"devices": ["a", "b"], "switches": [{"devices": ["a"]}, {"devices": ["a", "b"]}]}, "under two switches"),
        ({"devices": ["a", "b"], "nvlink": [{"devices": ["a", "z"]}]}, "unknown device 'z'"),
        ({"devices": ["a"], "host_bandwidth": "fast"}, "host_bandwidth"),
        ({"devices": ["a"], "switch": []}, "unknown keys"),
        ({"devices": [{"name": "a", "flops": -1}]}, "flops must be a positive"),
    ],
)
def test_bad_specs_are_named(spec, message):
    with pytest.raises(T.TopologyError, match=message):
        T.from_dict(spec)


def test_load_from_file_and_errors(tmp_path):
    path = tmp_path / "box.json"
    path.write_text(json.dumps({"name": "box", "devices": ["cpu0", "cpu1", "cpu2"], "switches": [{"devices": ["cpu1", "cpu2"]}]}))
    assert T.load(path).chains() == [["cpu0"], ["cpu1", "cpu2"]]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(T.TopologyError, match="not valid JSON"):
        T.load(tmp_path / "bad.json")
    with pytest.raises(T.TopologyError, match="no topology file"):
        T.load(tmp_path / "missing.json")


def test_graph_takes_chains_from_a_topology(tmp_path):
    ei = np.array([[0, 1, 2], [1, 2, 0]])
    devs = [sagann.CpuDevice(name=n) for n in ("gpu4", "gpu0", "gpu1", "gpu5")]
    g = sagann.ChunkedGraph(ei, 3, device=devs, topology="neugraph-pcie-8gpu")
    assert g.chains == [[1, 2], [0, 3]]
    with pytest.raises(T.TopologyError, match="no device named"):
        sagann.ChunkedGraph(ei, 3, device=[sagann.CpuDevice(name="cpu0"), sagann.CpuDevice(name="cpu1")], topology="dgx1-nvlink-8gpu")
    out = sagann.nn.GCNConv(2, 2)(g, torch.ones(3, 2))
    assert out.shape == (3, 2)


def test_detect_reads_the_pcie_link_of_each_gpu(monkeypatch):
    outputs = {
        "topo": "\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \tNV18\t0-31\nGPU1\tNV18\t X \t0-31\n",
        "--query-gpu=index,pcie.link.gen.max,pcie.link.width.max": "0, 5, 16\n1, 5, 16\n",
    }

    class Done:
        def __init__(self, stdout):
            self.stdout = stdout

    monkeypatch.setattr(T.subprocess, "run", lambda cmd, **kw: Done(outputs[cmd[1]]))
    topo = T.detect()
    assert topo.host_bandwidth == T.pcie_bandwidth(5, 16) > 4 * T.PCIE_BANDWIDTH  # Gen5 x16, not the Gen3 default
    assert "Gen5 x16" in topo.description
    outputs["--query-gpu=index,pcie.link.gen.max,pcie.link.width.max"] = "0, 4, 8\n1, [N/A], [N/A]\n"
    assert T.detect().host_bandwidth == T.pcie_bandwidth(4, 8)  # the slowest link that reports one
    outputs["--query-gpu=index,pcie.link.gen.max,pcie.link.width.max"] = "0, [N/A], [N/A]\n"
    topo = T.detect()
    assert topo.host_bandwidth == T.PCIE_BANDWIDTH and "assumed" in topo.description


def test_pcie_bandwidth_per_generation():
    assert T.pcie_bandwidth(3, 16) == pytest.approx(12.6e9, rel=0.01)
    assert T.pcie_bandwidth(4, 16) == pytest.approx(2 * T.pcie_bandwidth(3, 16), rel=0.01)
    with pytest.raises(T.TopologyError, match="Gen9"):
        T.pcie_bandwidth(9, 16)
