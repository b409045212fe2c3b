"""The README's custom layer and docs/examples run out of core (P > 1) and say so."""
from __future__ import annotations

import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)


def test_readme_custom_layer_runs_out_of_core(capsys):
    block = next(b for b in _readme_blocks("python") if "class GGCN(sagann.Layer)" in b)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    g = scope["g"]
    assert g.num_chunks > 1 and g.device.peak_bytes <= g.device.memory_budget
    assert f"P = {g.num_chunks}" in capsys.readouterr().out


def test_ggcn_example_runs_out_of_core(capsys):
    num_chunks, acc = runpy.run_path(str(ROOT / "docs" / "examples" / "ggcn.py"))["main"](epochs=2)
    assert num_chunks > 1 and 0.0 <= acc <= 1.0
    assert f"P = {num_chunks}" in capsys.readouterr().out


def test_readme_your_own_dataset_commands_and_python(tmp_path, monkeypatch, capsys):
    """The README's 'Your own dataset' commands, as written, on small arrays; then its Python lines."""
    import shlex

    import numpy as np
    import torch

    from sagann.chunks.synthetic import sbm
    from sagann.cli import main

    d = sbm(300, 3, 8.0, 8, seed=0)
    monkeypatch.chdir(tmp_path)
    np.save("edges.npy", d.edge_index)
    np.save("x.npy", d.x)
    np.save("y.npy", d.y)
    for name, m in (("train", d.train_mask), ("val", d.val_mask), ("test", d.test_mask)):
        np.save(f"{name}.npy", m)
    block = next(b for b in _readme_blocks("bash") if "sagann partition edges.npy" in b)
    commands = [line.split("#")[0] for line in block.replace("\\\n", " ").splitlines() if line.startswith("sagann ")]
    assert [c.split()[1] for c in commands] == ["partition", "verify", "train"]
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command
    assert "test accuracy" in capsys.readouterr().out
    code = next(b for b in _readme_blocks("python") if "save_dataset(" in b)
    scope = {"edge_index": torch.from_numpy(d.edge_index), "num_vertices": 300, "x": d.x, "y": d.y,
             "train_mask": d.train_mask, "val_mask": d.val_mask, "test_mask": d.test_mask}
    exec(compile(code.replace('"mydata"', '"mydata_py"'), "README.md", "exec"), scope)
    assert scope["g"].num_vertices == 300 and scope["g"].num_edges == d.edge_index.shape[1]
