"""The GPUs' RNG states go into checkpoints and come back (a stand-in for torch.cuda where there is no GPU)."""
from __future__ import annotations

import pytest
import torch

from sagann.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


class FakeCudaRng:
    """torch.cuda's RNG calls over per-device byte tensors, as torch keeps them."""

    def __init__(self, count: int):
        self.states = [torch.randint(0, 256, (16,), dtype=torch.uint8, generator=torch.Generator().manual_seed(i)) for i in range(count)]

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.states))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])

        def set_one(state, device="cuda"):
            self.states[int(device)] = state.clone()

        monkeypatch.setattr(torch.cuda, "set_rng_state", set_one)


def _save_load(tmp_path, state):
    save_checkpoint(tmp_path / "c.pt", {"epoch": 0, "model": {}, "optimizer": {}, "history": [], "rng": state, "fingerprint": {"run": "cuda"}})
    return load_checkpoint(tmp_path / "c.pt")["rng"]


def test_cuda_states_are_saved_and_restored(tmp_path, monkeypatch):
    fake = FakeCudaRng(2)
    fake.install(monkeypatch)
    saved = [s.clone() for s in fake.states]
    state = _save_load(tmp_path, rng_state())  # through a weights_only file
    assert [torch.equal(a, b) for a, b in zip(state["cuda"], saved)] == [True, True]
    fake.states = [torch.zeros(16, dtype=torch.uint8) for _ in range(2)]  # the generators moved on
    set_rng_state(state)
    assert all(torch.equal(a, b) for a, b in zip(fake.states, saved))


def test_fewer_gpus_on_resume_restore_those_present(tmp_path, monkeypatch):
    two = FakeCudaRng(2)
    two.install(monkeypatch)
    state = _save_load(tmp_path, rng_state())
    one = FakeCudaRng(1)
    one.install(monkeypatch)
    set_rng_state(state)
    assert torch.equal(one.states[0], state["cuda"][0])


def test_without_cuda_there_is_no_cuda_state_and_old_checkpoints_restore(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    state = rng_state()
    assert "cuda" not in state
    fake = FakeCudaRng(1)
    fake.install(monkeypatch)
    before = fake.states[0].clone()
    set_rng_state(_save_load(tmp_path, state))  # a checkpoint written without CUDA leaves the GPU generators alone
    assert torch.equal(fake.states[0], before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a real GPU")
def test_real_cuda_dropout_resumes_bit_exact():
    torch.cuda.manual_seed_all(3)
    state = rng_state()
    first = torch.nn.functional.dropout(torch.ones(1000, device="cuda"), 0.5)
    set_rng_state(state)
    assert torch.equal(torch.nn.functional.dropout(torch.ones(1000, device="cuda"), 0.5), first)
