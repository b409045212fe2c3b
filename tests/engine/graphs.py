"""Random graphs with the awkward parts: isolated vertices, self loops, multi-edges, empty chunks."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


def awkward_graph(rng: np.random.Generator, n: int, e: int, isolated: int = 3) -> np.ndarray:
    """``[2, E]`` ids over n vertices: the last ``isolated`` vertices have no edges, plus loops and duplicates."""
    hi = max(n - isolated, 1)
    src = rng.integers(0, hi, e)
    dst = rng.integers(0, hi, e)
    if e >= 4:
        src[0] = dst[0] = 0  # a self loop
        src[1], dst[1] = src[2], dst[2]  # a multi-edge
        src[3] = dst[3] = 0  # a second self loop on the same vertex
    return np.stack([src, dst]).astype(np.int64)


@st.composite
def graphs(draw, max_vertices: int = 40, max_edges: int = 160):
    n = draw(st.integers(1, max_vertices))
    e = draw(st.integers(0, max_edges))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    isolated = draw(st.integers(0, min(3, n - 1)))
    # half the time, edges stay inside a few vertices so many chunks are empty
    if draw(st.booleans()) and n > 4:
        ei = awkward_graph(rng, min(n, 5), e, 0)
    else:
        ei = awkward_graph(rng, n, e, isolated)
    return n, ei
