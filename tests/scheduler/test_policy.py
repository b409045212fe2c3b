"""Policy functions: Johnson's rule is optimal for two stages; the transfer choice follows its cost model."""
from __future__ import annotations

import itertools

from hypothesis import given, settings, strategies as st

from sagann.scheduler.policy import Transfer, TransferCosts, TransferPolicy, choose_transfer, johnson_order, two_stage_makespan


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 10)), min_size=1, max_size=6))
def test_johnson_is_optimal(times):
    jobs = [(k, a, b) for k, (a, b) in enumerate(times)]
    order = johnson_order(jobs)
    assert sorted(order) == list(range(len(jobs)))
    best = min(two_stage_makespan([times[k] for k in perm]) for perm in itertools.permutations(range(len(jobs))))
    assert two_stage_makespan([times[k] for k in order]) <= best + 1e-9


def test_makespan_of_a_simple_pipeline():
    assert two_stage_makespan([(1, 2), (1, 2), (1, 2)]) == 7  # 1 + 2 + 2 + 2
    assert two_stage_makespan([(3, 1), (3, 1)]) == 7  # 3 + 3 + 1


def test_choose_transfer():
    cpu_like = TransferCosts(gather=1e-9, block=1e-9, compact=1e-9)  # compaction costs like a gather
    assert choose_transfer(TransferPolicy.AUTO, 900, 1000, cpu_like, None) is Transfer.SELECTIVE
    gpu_like = TransferCosts(gather=4e-10, block=4e-11, compact=1e-12)  # slow host gather, fast link and HBM
    assert gpu_like.threshold() < 0.2
    assert choose_transfer(TransferPolicy.AUTO, 500, 1000, gpu_like, None) is Transfer.FULL
    assert choose_transfer(TransferPolicy.AUTO, 50, 1000, gpu_like, None) is Transfer.SELECTIVE
    assert choose_transfer(TransferPolicy.AUTO, 500, 1000, gpu_like, spare_bytes=999) is Transfer.SELECTIVE
    assert choose_transfer(TransferPolicy.FULL, 1, 1000, cpu_like, None) is Transfer.FULL
    assert choose_transfer(TransferPolicy.FULL, 1, 1000, cpu_like, spare_bytes=10) is Transfer.SELECTIVE


def test_a_fixed_cost_per_transfer_favours_one_block_over_many_small_gathers():
    costs = TransferCosts(gather=1e-9, block=1e-9, compact=0.0, latency=1e-5)
    # 600 of 1000 bytes used: cheaper selectively in one gather, not in fifty
    assert choose_transfer(TransferPolicy.AUTO, 600, 1000, costs, None, transfers=1) is Transfer.SELECTIVE
    assert choose_transfer(TransferPolicy.AUTO, 600, 1000, costs, None, transfers=50) is Transfer.FULL
