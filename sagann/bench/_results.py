"""Benchmark results: each configuration summarised over its runs, and JSON lines with the machine, command and date."""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys

import numpy as np
import psutil


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }


def append_result(path: str, name: str, result: dict) -> None:
    """Append one line; appends are small single writes, so a crash loses at most the last line."""
    row = {"bench": name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv), "machine": machine()}
    row.update({k: v for k, v in result.items() if k != "report"})
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def summarise(rs: list[dict]) -> dict:
    """One configuration's runs over all rounds: median epoch time, peak RSS, loss; or its error."""
    ok = [r for r in rs if "error" not in r]
    errors = [r for r in rs if "error" in r]
    if not ok:
        first = errors[0] if errors else {}
        return {"error": first.get("error", "not run"), "out_of_memory": any(r.get("out_of_memory") for r in errors), "graph_size": first.get("graph_size"), "details": errors}
    epochs = [t for r in ok for t in r["epoch_seconds"]]
    out = {
        "epoch_s": float(np.median(epochs)),
        "epoch_s_min": float(min(epochs)),
        "epoch_s_per_round": [float(np.median(r["epoch_seconds"])) for r in ok],
        "warmup_s": [w for r in ok for w in r["warmup_seconds"]],
        "setup_s": [r["setup_seconds"] for r in ok],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in ok),
        "rss_after_setup_bytes": max(r["rss_after_setup_bytes"] for r in ok),
        "loss": ok[0]["loss"],
        "torch": ok[0].get("torch"),
        "runs": ok,
    }
    for key in ("num_chunks", "peak_device_bytes", "whole_graph_peak_bytes", "memory_budget_bytes", "dgl"):
        if key in ok[0]:
            out[key] = ok[0][key]
    if errors:
        out["errors"] = errors
    return out


def ratios(results: dict) -> dict:
    """Epoch time and peak RSS of each peer over sagann_p1's."""
    ours = results.get("sagann_p1", {})
    if "epoch_s" not in ours:
        return {}
    out = {}
    for c, r in results.items():
        if c != "sagann_p1" and "epoch_s" in r:
            out[c] = {"time": r["epoch_s"] / ours["epoch_s"], "peak_rss": r["peak_rss_bytes"] / ours["peak_rss_bytes"]}
    return out
