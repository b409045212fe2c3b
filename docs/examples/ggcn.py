"""G-GCN (NeuGraph's gated GCN) as a user-written sagann Layer, trained out-of-core.

Run: python docs/examples/ggcn.py
"""
import torch
import torch.nn.functional as F
from torch import nn

import sagann
from sagann.chunks.synthetic import sbm


class GGCN(sagann.Layer):
    """h_v' = relu(W * sum_u sigmoid(W_H h_v + W_C h_u) * h_u), the gate computed per edge."""

    gather = "sum"

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.W_H = nn.Linear(d_in, d_in, bias=False)
        self.W_C = nn.Linear(d_in, d_in, bias=False)
        self.W = nn.Linear(d_in, d_out)

    def apply_edge(self, e):
        eta = torch.sigmoid(self.W_H(e.dst) + self.W_C(e.src))
        return eta * e.src

    def apply_vertex(self, v, acc):
        return torch.relu(self.W(acc))


class HoistedGGCN(GGCN):
    """The same layer with the per-vertex matmuls hoisted: W_C h_u once per source, W_H h_v once per destination."""

    def apply_src(self, v):
        return self.W_C(v)

    def apply_dst(self, v):
        return self.W_H(v)

    def apply_edge(self, e):
        return torch.sigmoid(e.dst_term + e.src_term) * e.src


class Net(nn.Module):
    def __init__(self, layer_cls, d_in, hidden, classes):
        super().__init__()
        self.l1, self.l2 = layer_cls(d_in, hidden), sagann.nn.GCNConv(hidden, classes)

    def forward(self, g, x):
        return self.l2(g, F.dropout(self.l1(g, x), 0.5, self.training))


def main(epochs: int = 20, budget: str = "1MB") -> tuple[int, float]:
    """Train on an SBM graph under ``budget`` (about 1/6 of what one chunk would need: P > 1); returns (P, test accuracy)."""
    torch.manual_seed(0)
    data = sbm(5000, 4, 10, 32, seed=0)
    g = sagann.ChunkedGraph(data.edge_index, data.num_vertices, device=sagann.CpuDevice(budget))
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    train, test = torch.from_numpy(data.train_mask), torch.from_numpy(data.test_mask)
    model = Net(HoistedGGCN, 32, 32, 4)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(epochs):
        model.train()
        opt.zero_grad()
        loss = F.cross_entropy(model(g, x)[train], y[train])
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(g, x).argmax(-1)[test] == y[test]).float().mean().item()
    print(f"out of core: P = {g.num_chunks} vertex intervals ({g.num_chunks}x{g.num_chunks} chunks), "
          f"peak {g.device.peak_bytes:,} B of a {g.device.memory_budget:,} B budget; test accuracy {acc:.3f}")
    return g.num_chunks, acc


if __name__ == "__main__":
    main()
