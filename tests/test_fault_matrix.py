"""Every injected fault, on the first and the last rank, at the counted step (0) and a later one (2),
is reported with its own status, the rank it was injected on and that rank's own message, not a
peer's echo: 16 points on 3 ranks, in two multiruns at once.

Before (main at 1d9d6a2) the classifier read only the ranks the elastic agent had seen exit when it
noticed the failure, usually a peer's "connection closed" (recorded, 3 ranks, method=ring):
crash rank 2 step 2 -> error "rank 0 failed: RuntimeError: [...pair.cc:553] Connection closed by peer";
oom rank 2 step 2 -> error, the same message on rank 0; nan rank 2 step 0 -> error "non-finite input
gradient on rank 0 at step 0"; hang rank 2 step 0 -> timeout "a collective timed out waiting for a
peer: rank 0: ... Timed out waiting ..." (no hung rank named). Now the launch reads every rank's error
file (and the stack each stopped rank wrote) before its log dir can go, and the classifier orders them
in time and prefers a root cause over connection losses and timeouts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from harness.launch import STACK_FILE, _every_rank_failure
from harness.results import load
from harness.run import classify_failure

from .dist import MARK, rank_processes

REPO = Path(__file__).resolve().parent.parent
WORLD = 3
RANKS, STEPS, KINDS = (0, WORLD - 1), (0, 2), ("oom", "crash", "hang", "nan")
POINTS = {f"{kind}_r{rank}_s{step}": (kind, rank, step) for kind in KINDS for rank in RANKS for step in STEPS}
GROUPS = 2  # multiruns at once (the test machine has 2 cores)
HANG_TIMEOUT_S = (
    40  # the peers give up at 0.75 x this (30 s); the rest is slack for the launch before the watchdog
)


def expected(kind: str, rank: int, step: int) -> tuple[str, str]:
    """(status, words of the reason) for a fault."""
    return {
        "oom": (
            "oom",
            f"rank {rank}: out of memory: OutOfMemoryError: injected out of memory on rank {rank} "
            f"at step {step}",
        ),
        "crash": ("error", f"rank {rank} failed: RuntimeError: injected crash on rank {rank} at step {step}"),
        "hang": ("timeout", f"rank {rank} stopped responding"),
        "nan": ("error", f"non-finite output on rank {rank} at step {step}"),
    }[kind]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("matrix")
    (tmp / "conf" / "point").mkdir(parents=True)
    for name, (kind, rank, step) in POINTS.items():
        # a point's own keys lose to the command line's: the timeout is set here, per point
        point = {
            "fault": {"kind": kind, "rank": rank, "step": step},
            "bench": {"timeout_s": HANG_TIMEOUT_S if kind == "hang" else 60},
        }
        (tmp / "conf" / "point" / f"{name}.yaml").write_text(
            "# @package _global_\n" + OmegaConf.to_yaml(point)
        )
    # A hang point spends most of its time waiting for the peers' collective timeout: the points run
    # in GROUPS multiruns at once, each with the same share of hangs, a hang after the group's first
    # launch (which starts the forkserver, seconds of the hang's slack before the watchdog otherwise).
    hangs = [name for name, (kind, _, _) in POINTS.items() if kind == "hang"]
    others = [name for name in POINTS if name not in hangs]
    groups = [others[i::GROUPS] + hangs[i::GROUPS] for i in range(GROUPS)]
    sweep_dir = tmp / "sweep"
    (tmp / "tmp").mkdir()  # the runs' temporary directory: other runs on the machine have their own
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), MARK: str(tmp), "TMPDIR": str(tmp / "tmp")}
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness.run",
                "-m",
                f"+point={','.join(group)}",
                f"world_size={WORLD}",
                "method=ring",
                "workload.seq_len=24",
                "bench.warmup=1",
                "bench.iters=2",
                f"hydra.searchpath=[file://{tmp / 'conf'}]",
                f"hydra.sweep.dir={sweep_dir / str(i)}",
            ],
            cwd=tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i, group in enumerate(groups)
    ]
    try:
        results = [(proc, *proc.communicate(timeout=600)) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return {
        "results": results,
        "seconds": time.monotonic() - t0,
        "rows": load(sweep_dir),
        "leftovers": (rank_processes(str(tmp)), set((tmp / "tmp").glob("spbench-launch-*"))),
    }


def test_every_fault_names_its_rank_and_its_own_message(matrix):
    for proc, _, stderr in matrix["results"]:
        assert proc.returncode == 0, stderr[-3000:]
    rows = {}
    for _, row in matrix["rows"].iterrows():
        overrides = (Path(row.job_dir) / ".hydra" / "overrides.yaml").read_text()
        rows[next(n for n in POINTS if f"+point={n}\n" in overrides + "\n")] = row
    assert sorted(rows) == sorted(POINTS)
    wrong = {}
    for name, (kind, rank, step) in POINTS.items():
        status, words = expected(kind, rank, step)
        if rows[name].status != status or words not in (rows[name].error or ""):
            wrong[name] = (rows[name].status, (rows[name].error or "")[:300])
    assert not wrong, wrong
    assert matrix["seconds"] < 240, matrix["seconds"]


def test_no_rank_process_or_temporary_directory_is_left(matrix):
    ranks, temp_dirs = matrix["leftovers"]
    assert ranks == [] and temp_dirs == set()


def _error_file(path: Path, message: str, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"message": {"message": message, "extraInfo": {"py_callstack": message, "timestamp": "0"}}}
        )
    )
    os.utime(path, (mtime, mtime))


def _stack(path: Path, file: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"main thread 0x{1:016x}\nThread 0x{2:016x} (most recent call first):\n"
        '  File "/x/threading.py", line 1 in run\n\n'
        f'Current thread 0x{1:016x} (most recent call first):\n  File "{file}", line 1 in f\n'
    )


def test_the_cause_is_read_from_every_rank_s_error_file(tmp_path):
    """Synthetic launch (fast): the agent reported only rank 0's echo; rank 2's own crash is in its
    error file, written first. Before: "rank 0 failed: RuntimeError: ... Connection closed by peer"."""
    run = tmp_path / "run"
    _error_file(
        run / "attempt_0" / "2" / "error.json", "RuntimeError: injected crash on rank 2 at step 2", 1000
    )
    _error_file(
        run / "attempt_0" / "0" / "error.json", "RuntimeError: [pair.cc:553] Connection closed by peer", 1001
    )
    _error_file(
        run / "attempt_0" / "1" / "error.json", "RuntimeError: [pair.cc:553] Connection closed by peer", 1002
    )
    err = ChildFailedError(
        "entry", {0: ProcessFailure(0, 10, 1, str(run / "attempt_0" / "0" / "error.json"))}
    )
    _every_rank_failure(err, SimpleNamespace(_run_log_dir=str(run)))
    assert sorted(err.failures) == [0, 1, 2]
    status, reason = classify_failure(err)
    assert status == "error" and reason.startswith("rank 2 failed: RuntimeError: injected crash on rank 2"), (
        reason
    )


def test_a_hang_names_the_rank_not_waiting_in_communication(tmp_path):
    """Synthetic launch: ranks 0 timed out, ranks 1 and 2 were stopped by the agent; rank 1's stack is in
    torch.distributed (waiting), rank 2's elsewhere (hung)."""
    run = tmp_path / "run"
    _error_file(
        run / "attempt_0" / "0" / "error.json", "RuntimeError: Timed out waiting 18000ms for recv", 1000
    )
    _stack(run / "attempt_0" / "1" / STACK_FILE, "/x/torch/distributed/distributed_c10d.py")
    _stack(run / "attempt_0" / "2" / STACK_FILE, str(REPO / "harness" / "worker.py"))
    err = ChildFailedError(
        "entry", {0: ProcessFailure(0, 10, 1, str(run / "attempt_0" / "0" / "error.json"))}
    )
    _every_rank_failure(err, SimpleNamespace(_run_log_dir=str(run)))
    status, reason = classify_failure(err)
    assert status == "timeout" and reason.startswith("rank 2 stopped responding"), reason
    assert "rank(s) 1 were waiting in communication" in reason
