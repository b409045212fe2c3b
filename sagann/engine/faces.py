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

__all__ = ["Face", "base_of", "face_of"]


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
