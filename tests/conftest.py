"""Hypothesis profiles: "ci" (the default, CI-sized) and "long" (by hand: HYPOTHESIS_PROFILE=long).

Property tests that set ``max_examples`` themselves keep it; the fuzz test
(tests/test_fuzz.py) leaves it to the profile, so ``long`` runs it many
times longer. Counts of a long run are recorded in docs/decisions.md
("Fuzzing").
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# ci: the same examples on every run (a red CI run is a change's fault, not the draw's);
# long: fresh random examples each run, to find what ci's fixed draw does not
settings.register_profile("ci", max_examples=40, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=2_500, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# measured step costs are stored per machine (sagann.scheduler.calibration): keep the tests' store out of
# the home directory, and shared by this run's subprocesses so that their plans agree with each other
if "SAGANN_CACHE_DIR" not in os.environ:
    import tempfile

    import atexit
    import shutil

    os.environ["SAGANN_CACHE_DIR"] = tempfile.mkdtemp(prefix="sagann-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SAGANN_CACHE_DIR"], True)
