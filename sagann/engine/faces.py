"""Faces: other ways to evaluate a layer (an order of its math, a cached Gather), over the layer's own parameters.

A face looks like a layer to the engine (``gather``, ``apply_edge``,
``apply_vertex``, optional hooks) but is not a :class:`~sagann.Layer`: it is
never a submodule, never in a ``state_dict``, and the engine runs it
directly (:func:`sagann.engine.run.run_layer`) or through the layer's own
dispatch (:func:`sagann.engine.layer.call_layer`).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

__all__ = ["Face", "ThenFace", "base_of", "face_of"]


class Face(nn.Module):
    """Another way to evaluate a base layer (an order of its math, a cached Gather), over the base's own parameters.

    Private: not a submodule and not in any ``state_dict``; made once per
    base by :func:`face_of`, it follows the base's train/eval mode and is
    named after it in profiles, logs and errors.
    """

    gather: str = "sum"
    hoist = False  # a face is already the form the engine runs
    apply_vertex_reads_v: bool = True

    def __init__(self, base: nn.Module):
        super().__init__()
        self.__dict__["_base"] = base  # not a submodule: the base owns the parameters
        self.display_name = getattr(base, "display_name", None) or type(base).__name__

    def named_parameters(self, *args, **kwargs):
        return self._base.named_parameters(*args, **kwargs)

    def parameters(self, recurse: bool = True):
        return self._base.parameters(recurse)

    def apply_edge(self, e):
        return e.src

    def apply_vertex(self, v, acc):
        return acc


class ThenFace(Face):
    """A face whose ApplyVertex is followed by ``then`` (an activation, the next layer's per-vertex step), over the base's parameters and ``then``'s."""

    def __init__(self, base: nn.Module, then: nn.Module):
        super().__init__(base)
        self.__dict__["_then"] = then  # not a submodule: its parameters belong to the next layer
        self.display_name = f"{self.display_name}+{getattr(then, 'display_name', type(then).__name__)}"

    def apply_vertex(self, v, acc):
        return self._then(self._base.apply_vertex(v, acc))

    def named_parameters(self, *args, **kwargs):
        seen = set()  # a parameter both use (the same layer, tied weights) is one input of the pass
        for prefix, params in (("", self._base.named_parameters(*args, **kwargs)), ("then.", self._then.named_parameters(*args, **kwargs))):
            for name, p in params:
                if id(p) not in seen:
                    seen.add(id(p))
                    yield prefix + name, p

    def parameters(self, recurse: bool = True):
        for _, p in self.named_parameters():
            yield p


def face_of(base: nn.Module, key: str, make: Callable[[nn.Module], "Face"]) -> "Face":
    """``base``'s face ``key``, made by ``make(base)`` at the first call and kept in the base's ``__dict__``."""
    face = base.__dict__.get(key)
    if face is None:
        face = base.__dict__[key] = make(base)
    face.training = base.training
    return face


def base_of(layer: nn.Module) -> nn.Module:
    """The user's layer behind a face (or behind faces of faces); a layer itself otherwise."""
    while isinstance(layer, Face):
        layer = layer.__dict__["_base"]
    return layer
