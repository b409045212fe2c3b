"""DGL's GCN epoch: ``benchmarks/dgl_epoch.py --model gcn`` with the GCN worker's command line.

    benchmarks/.dgl-venv/bin/python benchmarks/dgl_gcn.py --graph g.npy --num-vertices 262144
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dgl_epoch import main  # noqa: E402

if __name__ == "__main__":
    main()
