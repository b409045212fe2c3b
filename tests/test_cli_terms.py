"""The command's errors name its flags, never the Python arguments behind them."""
from __future__ import annotations

import re

import numpy as np
import pytest

from sagann.chunks import partition_graph, save_dataset
from sagann.cli import in_cli_terms, main

PYTHON_TERMS = re.compile(r"\w+=True|\w+=False|save_dataset|save_profile|masks=\{|x=\.\.\.|device='|num_vertices=")


@pytest.fixture
def work(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "e.npy", rng.integers(0, 20, (2, 60)))
    np.save(tmp_path / "empty.npy", np.zeros((2, 0), np.int64))
    np.save(tmp_path / "train.npy", rng.random(20) < 0.5)
    save_dataset(tmp_path / "bare", partition_graph(rng.integers(0, 20, (2, 60)), 20, 1))
    save_dataset(tmp_path / "half", partition_graph(rng.integers(0, 20, (2, 60)), 20, 1), x=rng.standard_normal((20, 2)).astype(np.float32),
                 y=rng.integers(0, 2, 20), masks={"train": rng.random(20) < 0.5})
    return tmp_path


ROWS = [
    (("partition", "{d}/e.npy", "{d}/bare"), "--overwrite"),
    (("partition", "{d}/empty.npy", "{d}/new"), "--num-vertices N"),
    (("train", "{d}/bare"), "--features X.npy --labels Y.npy"),
    (("train", "{d}/half"), "--mask train=TRAIN.npy --mask val=VAL.npy --mask test=TEST.npy"),
    (("train", "{d}/missing"), "sagann partition"),
    (("verify", "{d}/missing"), "sagann partition"),
    (("profile", "{d}/missing"), "--profile DIR"),
]


@pytest.mark.parametrize("argv, flag", ROWS, ids=[f"{r[0][0]}-{k}" for k, r in enumerate(ROWS)])
def test_cli_errors_name_cli_flags(work, capsys, argv, flag):
    assert main([a.format(d=work) for a in argv]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err, err
    assert not PYTHON_TERMS.search(err), f"a Python argument in a CLI error: {err}"


def test_the_python_errors_keep_python_terms(work):
    from sagann.chunks.external import PartitionConfig, partition_edge_list

    with pytest.raises(ValueError, match=r"pass overwrite=True"):
        save_dataset(work / "bare", partition_graph(np.zeros((2, 0), np.int64), 20, 1))
    with pytest.raises(ValueError, match=r"give num_vertices=N"):
        partition_edge_list(work / "empty.npy", work / "new", PartitionConfig())
    assert not (work / "new").exists()


def test_translation_table():
    assert in_cli_terms("x; use device='cpu'") == "x; use --device cpu"
    assert in_cli_terms("nothing to change") == "nothing to change"


def test_config_fields_become_flags(capsys):
    assert main(["demo", "--budget-fraction", "3"]) == 1
    assert main(["train", "nowhere", "--epochs", "0"]) == 1
    err = capsys.readouterr().err
    assert "--budget-fraction must be in (0, 1]" in err and "got --epochs 0" in err
    assert "budget_fraction" not in err and "epochs=" not in err
