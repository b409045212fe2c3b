"""The device-memory check the tests share: the peak measured as allocated, not the ledger's count, within the budget.

``device.peak_bytes`` cannot exceed the budget (``MemoryLedger.charge``
raises first), so an assert on it cannot fail; ``measured_peak_bytes``
(sagann.scheduler.meter) can. Make the device with ``meter=True``.
"""
from __future__ import annotations

# The measured peak may exceed the budget by this share. The CPU meter counts whole storages
# torch allocated (a one-element tensor, a weight gradient per sub-chunk) where the memory model
# counts what a GPU would hold; anything the model leaves out must stay under this.
MARGIN = 0.05
# and by this many bytes: one-element tensors and empty placeholders the model does not count,
# which only matter against the tiny budgets of the fuzz test (a few hundred bytes)
SLACK_BYTES = 256


def assert_measured_within(device, budget: int | None = None) -> None:
    """``device``'s measured peak is at most ``budget`` (default: its own) plus :data:`MARGIN` and :data:`SLACK_BYTES`."""
    budget = device.memory_budget if budget is None else budget
    measured = device.measured_peak_bytes
    assert measured is not None, f"{device!r} is not metered: make it with meter=True"
    assert measured <= budget * (1 + MARGIN) + SLACK_BYTES, (
        f"{device.name}: measured peak {measured:,} B over the {budget:,} B budget (+{MARGIN:.0%} +{SLACK_BYTES} B); "
        f"the ledger counted {device.peak_bytes:,} B: the memory model misses something"
    )
