"""Start `world_size` ranks for one job with torch's elastic launcher (the machinery behind torchrun:
free port via a c10d rendezvous on localhost:0, RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* in each rank's
environment), so the same rank code also runs under torchrun or a cluster launcher.

Ranks are forked from a forkserver that has already imported torch and the harness, so a launch costs
about a second instead of one torch import per rank."""
from __future__ import annotations

import multiprocessing
import multiprocessing.util
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import psutil

from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from .cluster import NodePlan, node_plan

PRELOAD = ["torch", "torch.distributed", "harness.worker", "methods"]


def _start_method() -> str:
    # CUDA cannot be initialised in a forked child of a process that touched it; the forkserver
    # never does. Fall back to spawn where forkserver does not exist.
    if "forkserver" in multiprocessing.get_all_start_methods():
        multiprocessing.set_forkserver_preload(PRELOAD)
        return "forkserver"
    return "spawn"


class LaunchTimeout(RuntimeError):
    """The watchdog ended a launch that ran past its time limit."""


def kill_ranks(run_id: str) -> int:
    """Kill every process started for the launch `run_id` (found by the TORCHELASTIC_RUN_ID the
    launcher puts in each rank's environment). Returns how many were killed."""
    killed = 0
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("TORCHELASTIC_RUN_ID") == run_id and proc.pid != os.getpid():
                proc.kill()
                killed += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return killed


@contextmanager
def _private_tempdir():
    """Point this process's temporary files (torch's per-rank error files) at a directory that is
    removed afterwards, so no launch leaves files behind, whatever happened."""
    multiprocessing.util.get_temp_dir()  # multiprocessing's own dir (forkserver socket) stays where it is
    path, previous = tempfile.mkdtemp(prefix="spbench-launch-"), tempfile.tempdir
    tempfile.tempdir = path
    try:
        yield path
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(path, ignore_errors=True)


def _every_rank_failure(err: ChildFailedError, logs: DefaultLogsSpecs) -> None:
    """Add this node's other ranks to `err.failures`. The agent reports only the rank it noticed
    first (often a peer's "connection closed" echo) and then stops the others; every rank that raised
    left an error file in the launch's log dir (`<run log dir>/attempt_N/<local rank>/error.json`).
    Read them now, before a temporary log dir is removed. A rank without one was stopped by the agent
    (exit code -15, `stopped_by_launcher`). Each failure gets `written_ns`, the error file's mtime
    (None without one), so that the failures can be ordered in time."""
    run_dir = getattr(logs, "_run_log_dir", None)
    if not run_dir or not err.failures:
        return
    rank, first = next(iter(err.failures.items()))
    offset = rank - first.local_rank  # this node's first global rank
    for rank_dir in sorted(Path(run_dir).glob("attempt_*/*")):
        if not rank_dir.name.isdigit() or offset + int(rank_dir.name) in err.failures:
            continue
        error_file = rank_dir / "error.json"
        failure = ProcessFailure(local_rank=int(rank_dir.name), pid=0, exitcode=1 if error_file.is_file() else -15,
                                 error_file=str(error_file))
        failure.stopped_by_launcher = not error_file.is_file()
        err.failures[offset + int(rank_dir.name)] = failure
    for failure in err.failures.values():
        path = Path(failure.error_file)
        failure.written_ns = path.stat().st_mtime_ns if path.is_file() else None
    err.failures = dict(sorted(err.failures.items()))


def launch(entry: Callable[..., Any], args: tuple, world_size: int, log_dir: str | Path | None = None,
           timeout_s: float | None = None, plan: NodePlan | None = None) -> dict[int, Any]:
    """Run `entry(*args)` on `world_size` ranks: all local, or this node's share of a multi-node SLURM
    step (`plan`, default `node_plan(world_size)`); returns {global rank: return value} of this node's ranks.
    Raises ChildFailedError (with every failed rank's error) if any rank fails, and LaunchTimeout if
    the launch is still running after `timeout_s` (its ranks are killed first)."""
    plan = node_plan(world_size) if plan is None else plan
    run_id = plan.run_id  # the same on every node of the job: the rendezvous and kill_ranks key on it
    expired = threading.Event()

    def watchdog() -> None:
        expired.set()
        kill_ranks(run_id)

    with _private_tempdir() as tmp:
        logs = DefaultLogsSpecs(log_dir=str(log_dir or tmp), tee=Std.ALL, local_ranks_filter={0})
        config = LaunchConfig(
            **plan.launch_kwargs(), max_restarts=0,
            start_method=_start_method(), monitor_interval=0.1, logs_specs=logs,
        )
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # elastic sets it anyway; silence its warning
        timer = threading.Timer(timeout_s, watchdog) if timeout_s else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            return elastic_launch(config, entry)(*args)
        except ChildFailedError as err:
            if expired.is_set():
                raise LaunchTimeout(f"ranks still running after {timeout_s:g} s (bench.timeout_s); killed") from None
            _every_rank_failure(err, logs)
            raise
        finally:
            if timer:
                timer.cancel()
            kill_ranks(run_id)  # nothing of this launch outlives it


__all__ = ["launch", "ChildFailedError", "LaunchTimeout"]
