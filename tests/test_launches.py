"""The test helper's launches: a case that hangs fails alone, by its name, with the watchdog's error,
while the case launched with it still passes."""

from __future__ import annotations

import pytest

from harness.worker import Fault, Job

from .dist import CaseFailed, Launches, assert_method_case, problem


def test_a_hang_fails_its_own_case_and_the_others_pass():
    good = problem("ulysses", 2)
    hung = Job(
        problem("ulysses", 2, causal=False), verify=True, warmup=0, iters=0, fault=Fault("hang", rank=1)
    )
    # the launch of both ends at its watchdog (8 s); alone, the good case has a margin for a busy machine
    runs = Launches({"ulysses-N2-good": good, "ulysses-N2-hung": hung}, launch_timeout_s=8, case_timeout_s=15)
    assert_method_case(runs["ulysses-N2-good"], good)
    with pytest.raises(CaseFailed) as failed:
        runs["ulysses-N2-hung"]
    assert str(failed.value).startswith("ulysses-N2-hung fails in a launch of its own: LaunchTimeout"), (
        failed.value
    )
    assert "after the launch of all 2 cases of world size 2 failed: LaunchTimeout" in str(failed.value)
