"""A PyG training script, and the same script out of core after two changed lines.

Run: python docs/examples/from_pyg.py
Prints both runs' losses epoch by epoch (equal to fp32 rounding), then the
sagann run's P (vertex intervals) and its device peak under the budget.
"""
import torch
import torch.nn.functional as F
from torch_geometric.data import Data
from torch_geometric.nn import GCNConv

import sagann


class GCN(torch.nn.Module):
    def __init__(self, d_in, hidden, d_out):
        super().__init__()
        self.conv1, self.conv2 = GCNConv(d_in, hidden), GCNConv(hidden, d_out)

    def forward(self, x, edge_index):
        return self.conv2(self.conv1(x, edge_index).relu(), edge_index)


def train(model, data, epochs=10):
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    losses = []
    for _ in range(epochs):
        opt.zero_grad()
        out = model(data.x, data.edge_index)
        loss = F.cross_entropy(out[data.train_mask], data.y[data.train_mask])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main():
    torch.manual_seed(0)
    n, classes = 5000, 4
    y = torch.randint(0, classes, (n,))
    src = torch.randint(0, n, (100_000,))
    order, counts = torch.argsort(y), torch.bincount(y, minlength=classes)
    start = torch.cumsum(counts, 0) - counts
    same_class = order[start[y[src]] + (torch.rand(100_000) * counts[y[src]]).long()]
    dst = torch.where(torch.rand(100_000) < 0.8, same_class, torch.randint(0, n, (100_000,)))  # 80 % of edges join a class
    data = Data(x=torch.randn(n, 64) + 0.5 * F.one_hot(y, 64).float(), y=y, edge_index=torch.stack([src, dst]), train_mask=torch.rand(n) < 0.5)

    model = GCN(64, 32, classes)
    twin = sagann.convert(model)  # 1: the same weights in sagann layers
    ooc = sagann.from_pyg(data, device=sagann.CpuDevice("300KB"))  # 2: the graph split to fit a 300 KB device

    pyg_losses = train(model, data)
    sagann_losses = train(twin, ooc)
    for epoch, (a, b) in enumerate(zip(pyg_losses, sagann_losses), 1):
        print(f"epoch {epoch}  PyG loss {a:.6f}  sagann loss {b:.6f}")
    g = ooc.graph
    print(f"sagann: P = {g.num_chunks} vertex intervals, device peak {g.device.peak_bytes / 1e6:.2f} MB of a {g.memory_budget / 1e6:.2f} MB budget")


if __name__ == "__main__":
    main()
