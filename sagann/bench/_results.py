"""Benchmark results as JSON lines with the machine, command and date."""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys

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
