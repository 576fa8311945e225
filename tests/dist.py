"""Helpers for tests that run ranks: build problems, run many jobs inside one launch per world size
(a launch costs seconds on a 2-core machine), and the exactness assertions every method shares."""
from __future__ import annotations

from collections import defaultdict

import pytest

from harness.launch import launch
from harness.worker import Job, entry
from methods.common.config import ModelConfig, Problem, Workload

TINY = ModelConfig("tiny", hidden=64, heads=8, kv_heads=4, head_dim=8, ffn_hidden=128, layers=2)
EXACT = 1e-10


def problem(method: str, world_size: int, *, seq_len: int = 32, batch_size: int = 2, causal: bool = True,
            dtype: str = "float64", model: ModelConfig = TINY, **options) -> Problem:
    return Problem(method, model, Workload(batch_size=batch_size, seq_len=seq_len, causal=causal),
                   world_size, dtype, options)


def run_cases(cases: dict[str, Problem], verify: bool = True) -> dict[str, list[dict]]:
    """{case id: [per-rank result]}, one launch per distinct world size."""
    by_size: dict[int, list[str]] = defaultdict(list)
    for cid, p in cases.items():
        by_size[p.world_size].append(cid)
    out: dict[str, list[dict]] = {}
    for size, ids in sorted(by_size.items()):
        jobs = [Job(cases[cid], verify=verify, warmup=0, iters=1) for cid in ids]
        per_rank = launch(entry, (jobs,), size)
        for i, cid in enumerate(ids):
            out[cid] = [per_rank[r][i] for r in sorted(per_rank)]
    return out


def assert_exact(ranks: list[dict], tol: float = EXACT) -> None:
    """Output, input gradient and every weight gradient match the float64 reference."""
    r0 = ranks[0]
    assert r0["verify_out_rel_err"] <= tol, r0["verify_out_rel_err"]
    bad = {k: v for k, v in r0["verify_grad_errs"].items() if not v <= tol}
    assert not bad, bad
    assert "input" in r0["verify_grad_errs"] and len(r0["verify_grad_errs"]) > 1


def assert_counted_equals_theory(ranks: list[dict], problem: Problem) -> None:
    """The cost model equals the counted bytes of the busiest rank per phase and kind (what the row
    reports); for symmetric methods that is every rank."""
    import methods
    from harness.metrics import max_comm
    theory = methods.for_problem(problem).comm_cost(problem).as_dict()
    assert max_comm(ranks) == theory, (max_comm(ranks), theory)


def method_tests(cases: dict[str, Problem], exact: list[str] | None = None):
    """The shared tests of a method module, bound to its cases: a module fixture running them all
    (one launch per world size), exactness against the reference (`exact` cases, default all), and
    counted bytes equal to the cost model (every case). Use as
    `outcomes, test_exact_against_reference, test_counted_bytes_equal_cost_model = method_tests(CASES)`."""

    @pytest.fixture(scope="module")
    def outcomes():
        return run_cases(cases)

    @pytest.mark.parametrize("case", exact if exact is not None else list(cases))
    def test_exact_against_reference(outcomes, case):
        assert_exact(outcomes[case])

    @pytest.mark.parametrize("case", list(cases))
    def test_counted_bytes_equal_cost_model(outcomes, case):
        assert_counted_equals_theory(outcomes[case], cases[case])

    return outcomes, test_exact_against_reference, test_counted_bytes_equal_cost_model
