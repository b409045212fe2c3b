"""``sagann.convert(pyg_model)``: the same model, its PyG convs replaced by sagann's, weights and all.

The model is deep-copied and every PyG conv in it (``GCNConv``,
``SAGEConv``, ``GINConv``, ``GATConv``) is swapped for the sagann layer with
the same math, options and parameter values; everything else (activations,
dropout, norms between layers, ``torch.nn.Sequential``,
``torch_geometric.nn.Sequential``, a hand-written ``forward``) is kept as
is. sagann layers accept PyG's argument order, so the model's own
``forward(x, edge_index)`` runs unchanged when ``edge_index`` is a
:class:`~sagann.ChunkedGraph` (``sagann.from_pyg(data, device=...).edge_index``),
and then runs out of core. Anything whose result would differ is refused
with an error that names the option.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from sagann.engine import convs

__all__ = ["ConversionError", "convert"]

SUPPORTED = ("GCNConv", "SAGEConv", "GINConv", "GATConv")
_AGGR = {"add": "sum", "sum": "sum", "mean": "mean", "max": "max", "min": "min"}


class ConversionError(ValueError):
    """A PyG module (or one of its options) that sagann cannot run with the same result."""


def _pyg():
    try:
        from torch_geometric.nn import GATConv, GCNConv, GINConv, SAGEConv
        from torch_geometric.nn.conv import MessagePassing
    except ImportError:
        raise ConversionError("sagann.convert needs torch_geometric to read a PyG model (pip install torch-geometric)") from None
    return MessagePassing, {"GCNConv": GCNConv, "SAGEConv": SAGEConv, "GINConv": GINConv, "GATConv": GATConv}


def _refuse(where: str, conv: nn.Module, what: str) -> ConversionError:
    return ConversionError(f"sagann.convert: {where} ({type(conv).__name__}): {what}")


def _check_common(where: str, conv: nn.Module, aggr: str | None = "add") -> None:
    if getattr(conv, "flow", "source_to_target") != "source_to_target":
        raise _refuse(where, conv, f"flow={conv.flow!r} is not supported; sagann propagates source -> target (PyG's default flow)")
    if aggr is not None and conv.aggr != aggr:
        raise _refuse(where, conv, f"aggr={conv.aggr!r} is not supported for this conv; use aggr={aggr!r}")
    for name, p in conv.named_parameters():
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise _refuse(where, conv, f"{name} is not initialised yet (in_channels=-1); run the model once on a batch before converting")


def _width(where: str, conv: nn.Module, name: str) -> int:
    v = getattr(conv, name)
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise _refuse(where, conv, f"{name}={tuple(v)}: bipartite inputs are not supported; sagann layers take one feature matrix")
        v = v[0]
    return int(v)


def _load(where: str, conv: nn.Module, layer: nn.Module) -> nn.Module:
    """``layer`` with ``conv``'s parameter and buffer values, on its device and in its mode."""
    state = {k: v for k, v in conv.state_dict().items() if v is not None}
    try:
        layer.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise _refuse(where, conv, f"its parameters do not map onto sagann's {type(layer).__name__} ({' '.join(str(err).split())[:300]})") from None
    first = next(conv.parameters(), None)
    if first is not None:
        layer.to(first.device)
    return layer.train(conv.training)


class PygGCNConv(convs.GCNConv):
    """sagann's GCNConv with PyG's reading of ``improved=True``: weight-2 self loops only when edge weights are passed.

    PyG's ``gcn_norm`` adds self loops without a weight when ``edge_weight``
    is None, and then weighs every edge 1, so an ``improved`` PyG conv called
    without edge weights computes the plain GCN. A converted model must
    compute what its PyG original did.
    """

    def forward(self, g, x: torch.Tensor, edge_weight: torch.Tensor | None = None) -> torch.Tensor:
        if edge_weight is not None or not self.improved:
            return super().forward(g, x, edge_weight)
        self.improved = False
        try:
            return super().forward(g, x, None)
        finally:
            self.improved = True


def _gcn(where: str, conv) -> nn.Module:
    _check_common(where, conv)
    layer = (PygGCNConv if conv.improved else convs.GCNConv)(
        _width(where, conv, "in_channels"), conv.out_channels, improved=conv.improved,
        add_self_loops=bool(conv.add_self_loops), normalize=conv.normalize, bias=conv.bias is not None,
    )
    return _load(where, conv, layer)


def _sage(where: str, conv) -> nn.Module:
    _check_common(where, conv, aggr=None)
    if not isinstance(conv.aggr, str) or conv.aggr not in _AGGR:
        raise _refuse(where, conv, f"aggr={conv.aggr!r} is not supported; use one of {', '.join(sorted(_AGGR))}")
    if getattr(conv, "project", False):
        raise _refuse(where, conv, "project=True is not supported; build the SAGEConv with project=False")
    layer = convs.SAGEConv(
        _width(where, conv, "in_channels"), conv.out_channels, aggr=_AGGR[conv.aggr], normalize=conv.normalize,
        root_weight=conv.root_weight, bias=conv.lin_l.bias is not None,
    )
    return _load(where, conv, layer)


def _batch_norms(module: nn.Module) -> list[str]:
    return [name or type(m).__name__ for name, m in module.named_modules() if "BatchNorm" in type(m).__name__ or "InstanceNorm" in type(m).__name__]


def _gin(where: str, conv) -> nn.Module:
    _check_common(where, conv)
    norms = _batch_norms(conv.nn)
    if norms:
        raise _refuse(
            where, conv,
            f"its nn holds batch normalisation ({', '.join(norms)}), whose batch statistics would be taken per vertex interval out of core; "
            "use norm=None or LayerNorm inside the GINConv, or apply the norm after the conv",
        )
    train_eps = isinstance(conv.eps, nn.Parameter)
    layer = convs.GINConv(copy.deepcopy(conv.nn), eps=float(conv.eps.detach().reshape(-1)[0]), train_eps=train_eps)
    return _load(where, conv, layer)


def _gat(where: str, conv) -> nn.Module:
    _check_common(where, conv)
    if conv.lin is None:
        raise _refuse(where, conv, f"in_channels={conv.in_channels}: bipartite inputs (lin_src / lin_dst) are not supported; pass one int")
    if conv.dropout > 0:
        raise _refuse(where, conv, f"dropout={conv.dropout} (attention dropout) is not supported; set conv.dropout = 0.0 before converting (dropout on the features, F.dropout(x), is fine)")
    if getattr(conv, "edge_dim", None) is not None:
        raise _refuse(where, conv, f"edge_dim={conv.edge_dim} (edge features in the attention) is not supported; build it with edge_dim=None")
    if getattr(conv, "residual", False):
        raise _refuse(where, conv, "residual=True is not supported; add the residual in the model's forward instead")
    layer = convs.GATConv(
        _width(where, conv, "in_channels"), conv.out_channels, heads=conv.heads, concat=conv.concat,
        negative_slope=conv.negative_slope, add_self_loops=conv.add_self_loops, bias=conv.bias is not None,
    )
    return _load(where, conv, layer)


_MAKERS = {"GCNConv": _gcn, "SAGEConv": _sage, "GINConv": _gin, "GATConv": _gat}


def _convert_conv(where: str, conv: nn.Module, classes: dict) -> nn.Module:
    for name, cls in classes.items():
        if type(conv) is cls:
            return _MAKERS[name](where, conv)
    raise ConversionError(
        f"sagann.convert: {where} is a {type(conv).__module__}.{type(conv).__name__}, which has no sagann equivalent; "
        f"supported PyG convs: {', '.join(SUPPORTED)} (write other layers as a sagann.Layer)"
    )


def convert(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose PyG convs are sagann layers with the same weights; the original is left untouched.

    ``model`` may be a single conv, or any module holding them (a
    ``torch_geometric.nn.Sequential``, a model with its own ``forward``,
    ``torch_geometric.nn.models.GCN`` and friends). Call the result as the
    PyG model was called, with the graph of ``sagann.from_pyg(data, device=...)``
    where ``edge_index`` was: ``model(d.x, d.edge_index)``. Outputs and
    gradients equal PyG's up to fp32 summation order.

    Raises :class:`ConversionError` naming the module (its path in the model)
    and the option sagann cannot reproduce.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"sagann.convert takes a torch.nn.Module, got {type(model).__name__}")
    passing, classes = _pyg()
    if isinstance(model, passing):
        return _convert_conv("the model", model, classes)
    out = copy.deepcopy(model)
    _replace(out, "model", passing, classes, {})
    return out


def _replace(module: nn.Module, path: str, passing, classes: dict, done: dict) -> None:
    """Swap the convs under ``module``; ``done`` (id -> layer) keeps a conv used in several places one layer."""
    for name, child in list(module._modules.items()):  # named_children() would skip a module's second place
        where = f"{path}.{name}"
        if isinstance(child, passing):
            if id(child) not in done:
                done[id(child)] = _convert_conv(where, child, classes)
            setattr(module, name, done[id(child)])
        elif isinstance(child, nn.Module):
            _replace(child, where, passing, classes, done)

