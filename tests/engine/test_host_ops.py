"""ReLU and dropout under a host budget equal F.relu and F.dropout bit for bit, forward and backward."""
import torch
import torch.nn.functional as F

from sagann.engine import host_ops
from sagann.scheduler.host import HostMemory, is_spilled


class _G:
    def __init__(self, host):
        self.host = host


def _grads(op, x, seed):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    y = op(x)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1))
    (y * w).sum().backward()
    return y.detach().clone(), x.grad.clone()


def test_relu_and_dropout_match_torch_and_spill(tmp_path):
    x = torch.randn(5000, 33)
    x[::7] = 0.0
    g = _G(HostMemory(1, tmp_path))  # a 1-byte budget: everything goes to spill files
    for seed in range(3):
        for ref, ours in (
            (F.relu, lambda t: host_ops.relu(t, g)),
            (lambda t: F.dropout(t, 0.5, True), lambda t: host_ops.dropout(t, 0.5, True, g)),
            (lambda t: F.dropout(t, 0.3, True), lambda t: host_ops.dropout(t, 0.3, True, g)),
        ):
            y0, g0 = _grads(ref, x, seed)
            y1, g1 = _grads(ours, x, seed)
            assert torch.equal(y0, y1) and torch.equal(g0, g1)
    assert is_spilled(host_ops.relu(x, g)) and g.host.stats()["spill_files"] > 0


def test_without_budget_is_plain_torch():
    x = torch.randn(10, 4)
    g = _G(HostMemory(None))
    assert torch.equal(host_ops.relu(x, g), F.relu(x))
    assert torch.equal(host_ops.dropout(x, 0.5, False, g), x)
