"""Layers used across the engine tests: user-written, hook-using and builtin."""
from __future__ import annotations

import torch
from torch import nn

import sagann
from sagann import fn


class GatedGCN(sagann.Layer):
    """NeuGraph's G-GCN written naturally, per edge."""

    gather = "sum"

    def __init__(self, d_in, d_out):
        super().__init__()
        self.W_H = nn.Linear(d_in, d_in, bias=False)
        self.W_C = nn.Linear(d_in, d_in, bias=False)
        self.W = nn.Linear(d_in, d_out)

    def apply_edge(self, e):
        eta = torch.sigmoid(self.W_H(e.dst) + self.W_C(e.src))
        return eta * e.src

    def apply_vertex(self, v, acc):
        return torch.relu(self.W(acc))


class HookLayer(sagann.Layer):
    """Per-vertex hooks, edge features, and a configurable reducer."""

    def __init__(self, d_in, d_out, d_edge, gather="max"):
        super().__init__()
        self.gather = gather
        self.s = nn.Linear(d_in, d_out)
        self.d = nn.Linear(d_in, d_out)
        self.e = nn.Linear(d_edge, d_out)
        self.root = nn.Linear(d_in, d_out)

    def apply_src(self, v):
        return self.s(v)

    def apply_dst(self, v):
        return self.d(v)

    def apply_edge(self, e):
        return e.src_term * torch.tanh(e.dst_term) + self.e(e.data)

    def apply_vertex(self, v, acc):
        return acc + self.root(v)


class Builtin(sagann.Layer):
    """A builtin message with a reducer; optional linear hooks change what 'src'/'dst' mean."""

    def __init__(self, op, gather, d_in, hooks=False):
        super().__init__()
        self.apply_edge = getattr(fn, op)
        self.gather = gather
        self.out = nn.Linear(d_in if op != "src_dot_dst" else 1, 4)
        if hooks:
            self.hs = nn.Linear(d_in, d_in)
            self.apply_src = lambda v: self.hs(v)

    def apply_vertex(self, v, acc):
        return self.out(acc)


def edge_data_for(op: str, num_edges: int, d: int, generator=None) -> torch.Tensor | None:
    if op == "copy_edge":
        return torch.randn(num_edges, d, generator=generator)
    if op == "src_mul_edge":
        return torch.randn(num_edges, generator=generator)
    if op == "src_add_edge":
        return torch.randn(num_edges, d, generator=generator)
    return None
