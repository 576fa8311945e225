"""Helpers for tests that run ranks: build problems, run many cases inside one launch per world size
(a launch costs seconds on a 2-core machine) with a watchdog on every launch, and the exactness and
counted-bytes assertions every method shares."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import psutil

import methods
from harness.launch import launch
from harness.metrics import max_comm
from harness.worker import Job, entry
from methods.common.config import ModelConfig, Problem, Workload

TINY = ModelConfig("tiny", hidden=64, heads=8, kv_heads=4, head_dim=8, ffn_hidden=128, layers=2)
EXACT = 1e-10
CAUSAL = {True: "causal", False: "noncausal"}  # the mask's part of a case id
# One batched launch (every case of a world size) takes 5-30 s on 2 busy cores; a case alone, a few.
LAUNCH_TIMEOUT_S = 150.0
CASE_TIMEOUT_S = 60.0
# pytest-timeout's limit for a test that reads a launch's results: the first one to ask pays for the
# launch and, after a failure, for re-running the launch's cases one by one
TEST_TIMEOUT_S = 600


def problem(
    method: str,
    world_size: int,
    *,
    seq_len: int = 32,
    batch_size: int = 2,
    causal: bool = True,
    dtype: str = "float64",
    model: ModelConfig = TINY,
    **options,
) -> Problem:
    return Problem(
        method,
        model,
        Workload(batch_size=batch_size, seq_len=seq_len, causal=causal),
        world_size,
        dtype,
        options,
    )


class CaseFailed(AssertionError):
    """A case's launch failed or hung; the message names the launch and the error."""


class Launches:
    """The per-rank results of a module's cases, launched lazily: the first case asked for of a world
    size launches every case of that size together, under a watchdog of `launch_timeout_s`. When that
    launch fails or hangs, each of its cases runs again in a launch of its own (`case_timeout_s`), so
    that the error lands on the case that causes it and the others still pass; when no case fails on
    its own, every case of the launch fails with the launch's error."""

    def __init__(
        self,
        cases: Mapping[str, Problem | Job],
        verify: bool = True,
        launch_timeout_s: float = LAUNCH_TIMEOUT_S,
        case_timeout_s: float = CASE_TIMEOUT_S,
    ):
        self.jobs = {  # the counted step (bytes, memory, the check against the reference) is all tests read
            cid: c if isinstance(c, Job) else Job(c, verify=verify, warmup=0, iters=0)
            for cid, c in cases.items()
        }
        self.launch_timeout_s, self.case_timeout_s = launch_timeout_s, case_timeout_s
        self.by_size: dict[int, list[str]] = defaultdict(list)
        for cid, job in self.jobs.items():
            self.by_size[job.problem.world_size].append(cid)
        self.done: dict[str, list[dict] | CaseFailed] = {}

    def __getitem__(self, cid: str) -> list[dict]:
        """The case's per-rank results in rank order; raises CaseFailed if it failed."""
        if cid not in self.done:
            self._run(self.jobs[cid].problem.world_size)
        got = self.done[cid]
        if isinstance(got, CaseFailed):
            raise got
        return got

    def all(self) -> dict[str, list[dict]]:
        return {cid: self[cid] for cid in self.jobs}

    def _launch(self, ids: list[str], timeout_s: float) -> dict[str, list[dict]]:
        size = self.jobs[ids[0]].problem.world_size
        per_rank = launch(entry, ([self.jobs[cid] for cid in ids],), size, timeout_s=timeout_s)
        return {cid: [per_rank[r][i] for r in sorted(per_rank)] for i, cid in enumerate(ids)}

    def _run(self, size: int) -> None:
        ids = self.by_size[size]
        try:
            self.done.update(self._launch(ids, self.launch_timeout_s))
            return
        except Exception as e:  # noqa: BLE001 -- attributed to the cases below
            batch = f"the launch of all {len(ids)} cases of world size {size} failed: {type(e).__name__}: {e}"
            if len(ids) == 1:  # its own failure already
                self.done[ids[0]] = CaseFailed(f"{ids[0]}: {batch}")
                return
        alone: dict[str, list[dict] | CaseFailed] = {}
        for cid in ids:
            try:
                alone.update(self._launch([cid], self.case_timeout_s))
            except Exception as e:  # noqa: BLE001 -- the case's own failure
                alone[cid] = CaseFailed(
                    f"{cid} fails in a launch of its own: {type(e).__name__}: {e} (after {batch})"
                )
        if not any(isinstance(v, CaseFailed) for v in alone.values()):
            alone = {cid: CaseFailed(f"{batch}; each case passes alone") for cid in ids}
        self.done.update(alone)


def run_cases(cases: Mapping[str, Problem], verify: bool = True) -> dict[str, list[dict]]:
    """{case id: [per-rank result]}, one launch per distinct world size."""
    return Launches(cases, verify).all()


MARK = "SPBENCH_TEST_RUN"  # in the environment of a test's subprocesses, so their ranks can be found


def rank_processes(mark: str) -> list[int]:
    """PIDs of the rank processes (torch elastic's) whose environment has MARK=`mark`: those started
    by the test that set it, not other runs on the same machine."""
    pids = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if "TORCHELASTIC_RUN_ID" in env and env.get(MARK) == mark:
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return pids


def assert_exact(ranks: list[dict], tol: float = EXACT) -> None:
    """Output, input gradient and every weight gradient match the float64 reference."""
    r0 = ranks[0]
    assert r0["verify_out_rel_err"] <= tol, f"output: relative error {r0['verify_out_rel_err']:.3g} > {tol:g}"
    bad = {k: v for k, v in r0["verify_grad_errs"].items() if not v <= tol}
    assert not bad, f"gradients off the reference by more than {tol:g}: {bad}"
    assert "input" in r0["verify_grad_errs"] and len(r0["verify_grad_errs"]) > 1, r0["verify_grad_errs"]


def assert_counted_equals_theory(ranks: list[dict], problem: Problem) -> None:
    """The cost model equals the counted bytes of the busiest rank per phase and kind (what the row
    reports); for symmetric methods that is every rank."""
    theory = methods.for_problem(problem).comm_cost(problem).as_dict()
    counted = max_comm(ranks)
    assert counted == theory, f"counted bytes {counted} != cost model {theory}"


def assert_method_case(ranks: list[dict], problem: Problem) -> None:
    """What every method case must show: counted bytes equal to the cost model and, for a float64
    case, output and every gradient exact against the reference."""
    assert_counted_equals_theory(ranks, problem)
    if problem.dtype == "float64":
        assert_exact(ranks)
