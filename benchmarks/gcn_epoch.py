"""Full-graph 2-layer GCN epoch: sagann (P=1 and out-of-core) vs PyG (edge_index, CSR) vs torch.sparse vs DGL.

``benchmarks/models_epoch.py --model gcn`` as a script of its own (the
commands in docs/benchmarks.md use it); every option of that script but
``--model``. Prints the
report and appends one JSON row to ``benchmarks/results.jsonl``.

Run by hand:  ``python benchmarks/gcn_epoch.py [--quick] [--rounds 2] [--configs sagann_p1 pyg_csr ...] [--graph reddit --scale 0.05]``
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from models_epoch import main as models_main  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    return models_main(argv, model="gcn")


if __name__ == "__main__":
    main()
