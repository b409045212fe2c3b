"""16-bit transfers on the Reddit-shaped graph: test accuracy, bytes moved and epoch time against float32.

Each model trains out of core (a quarter of its in-memory working set, as
the demo) from the same seed with ``ScheduleConfig(transfer_dtype=...)``
None, bfloat16 and float16.

Run: python benchmarks/transfer_dtype.py [--scale 0.05] [--epochs 30] [--models gcn,gat]
Appends one JSON line to benchmarks/results.jsonl.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import sagann
from sagann.bench._results import append_result
from sagann.chunks.synthetic import preset_graph
from sagann.demo import _best_val_test, in_memory_working_set
from sagann.engine.models import GAT, GCN
from sagann.engine.train import train_node_classifier

MODELS = {"gcn": lambda f, c: GCN(f, 64, c), "gat": lambda f, c: GAT(f, 64, c, heads=4)}
DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run(data, model_name: str, dtype_name: str, epochs: int, fraction: float) -> dict:
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    masks = [torch.from_numpy(m) for m in (data.train_mask, data.val_mask, data.test_mask)]
    torch.manual_seed(0)
    model = MODELS[model_name](data.x.shape[1], int(data.y.max()) + 1)
    budget = int(in_memory_working_set(data, model) * fraction)
    device = sagann.CpuDevice(budget)
    g = sagann.ChunkedGraph(data.edge_index, data.num_vertices, device=device, schedule=sagann.ScheduleConfig(transfer_dtype=DTYPES[dtype_name]))
    torch.manual_seed(0)
    sent, t0 = device.bytes_in, time.perf_counter()
    history = train_node_classifier(model, g, x, y, *masks, epochs=epochs, progress=False)
    return {
        "model": model_name, "transfer_dtype": dtype_name, "test_accuracy": _best_val_test(history), "final_loss": history[-1].loss,
        "bytes_moved": device.bytes_in - sent,
        "median_epoch_seconds": statistics.median(s.seconds for s in history[1:]), "num_chunks": g.num_chunks, "budget_bytes": budget,
        "train_seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--models", default="gcn,gat")
    ap.add_argument("--fraction", type=float, default=0.25, help="device budget as a fraction of the in-memory working set")
    args = ap.parse_args()
    data = preset_graph("reddit", args.scale, seed=0)
    rows = []
    for model_name in args.models.split(","):
        base = None
        for dtype_name in DTYPES:
            r = run(data, model_name, dtype_name, args.epochs, args.fraction)
            base = base or r
            r["accuracy_change_points"] = 100 * (r["test_accuracy"] - base["test_accuracy"])
            r["bytes_vs_float32"] = r["bytes_moved"] / base["bytes_moved"]
            rows.append(r)
            print(f"{model_name} {dtype_name:9s} test acc {r['test_accuracy']:.4f} ({r['accuracy_change_points']:+.2f} points), final loss {r['final_loss']:.4f}  "
                  f"bytes {r['bytes_moved'] / 2**20:,.0f} MiB ({r['bytes_vs_float32']:.3f}x)  epoch {r['median_epoch_seconds']:.2f} s  P={r['num_chunks']}", flush=True)
    append_result(str(Path(__file__).with_name("results.jsonl")), "transfer_dtype",
                  {"graph": data.name, "num_vertices": data.num_vertices, "num_edges": int(data.edge_index.shape[1]), "epochs": args.epochs, "runs": rows})


if __name__ == "__main__":
    main()
