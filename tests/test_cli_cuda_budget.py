"""`sagann train --device cuda` without --memory-budget gives the GPU 85% of its free memory, as the help says."""
from __future__ import annotations

import types

import pytest

from sagann.cli import build_parser, main


@pytest.fixture
def captured(monkeypatch):
    """The TrainConfig `sagann train` builds (training itself is not run)."""
    import sagann.engine.train as train

    seen = []

    def fake_run(config, **_):
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(train, "run_training", fake_run)
    return seen


@pytest.mark.parametrize("device, flags, budget", [
    ("cuda", [], None),  # None: CudaDevice takes 85% of the free memory
    ("cpu", [], "64MB"),
    ("cuda", ["--memory-budget", "2GB"], "2GB"),
    ("cpu", ["--memory-budget", "1MB"], "1MB"),
])
def test_default_budget_depends_on_the_device(captured, device, flags, budget):
    with pytest.raises(SystemExit):
        main(["train", "some-dataset", "--device", device, *flags])
    assert captured[0].memory_budget == budget


def test_help_names_both_defaults():
    text = build_parser().format_help() + next(
        a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions if "--memory-budget" in a.option_strings
    ).help
    assert "64MB on cpu" in text and "85%" in text


def test_cuda_device_is_made_with_no_budget(monkeypatch):
    """No GPU needed: the device class is replaced by a recorder of its arguments."""
    import sagann.scheduler.cuda as cuda_mod
    from sagann.engine.train import TrainConfig, _make_device

    made = []
    monkeypatch.setattr(cuda_mod, "cuda_available", lambda: True)
    monkeypatch.setattr(cuda_mod, "CudaDevice", lambda budget: made.append(budget) or types.SimpleNamespace(memory_budget=budget))
    _make_device(TrainConfig("d", device="cuda", memory_budget=None))
    assert made == [None]


def test_train_json_says_which_kernel_backend_ran(tmp_path, capsys):
    import json

    from sagann.chunks import partition_graph, save_dataset
    from sagann.chunks.synthetic import sbm

    d = sbm(300, 3, 6.0, 8, seed=1)
    path = save_dataset(tmp_path / "sbm", partition_graph(d.edge_index, 300, 2), x=d.x, y=d.y,
                        masks={"train": d.train_mask, "val": d.val_mask, "test": d.test_mask})
    assert main(["train", str(path), "--epochs", "1", "--json", "--hidden", "8", "--profile", str(tmp_path / "prof")]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["kernel_backend"] == "cpu"
    assert r["kernel_calls"].get("cpu", 0) > 0 and set(r["kernel_calls"]) <= {"cpu", "reference"}
