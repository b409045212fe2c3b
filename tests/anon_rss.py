"""Run a Python command in a child process and sample its peak anonymous RSS from outside (/proc), as a user's tools would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def anon_bytes(pid: int) -> int:
    """``RssAnon`` of process ``pid``."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon")


def run_sampled(args: list[str]) -> tuple[dict, int]:
    """``python ARGS``'s last stdout line (JSON, or {} when it prints nothing) and its peak RssAnon, sampled every 5 ms."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    peak, stop = [0], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], anon_bytes(proc.pid))
            except (OSError, RuntimeError, ValueError):
                return
            stop.wait(0.005)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    out, err = proc.communicate(timeout=900)
    stop.set()
    t.join()
    assert proc.returncode == 0, err[-3000:]
    lines = [line for line in out.splitlines() if line.strip()]
    return (json.loads(lines[-1]) if lines else {}), peak[0]
