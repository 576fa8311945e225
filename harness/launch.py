"""Start `world_size` ranks for one job with torch's elastic launcher (the machinery behind torchrun:
free port via a c10d rendezvous on localhost:0, RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* in each rank's
environment), so the same rank code also runs under torchrun or a cluster launcher.

Ranks are forked from a forkserver that has already imported torch and the harness, so a launch costs
about a second instead of one torch import per rank."""
from __future__ import annotations

import faulthandler
import multiprocessing
import multiprocessing.util
import os
import shutil
import signal
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


STACK_FILE = "stack_at_sigterm.txt"  # next to a rank's error.json


class _StackOnStop:
    """A rank's entry that, when the agent stops the rank (SIGTERM, after a peer failed), first writes
    its Python stack next to its error file (faulthandler, chained: the rank then dies of the signal as
    before): a rank stopped inside a collective was waiting, one stopped elsewhere had stopped responding."""

    def __init__(self, entry: Callable[..., Any]):
        self.entry = entry
        self.__name__ = self.__qualname__ = getattr(entry, "__qualname__", "entry")  # the agent logs it

    def __call__(self, *args: Any) -> Any:
        error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
        if error_file:
            self.stack = open(Path(error_file).with_name(STACK_FILE), "w")  # kept open for the handler
            self.stack.write(f"main thread 0x{threading.get_ident():016x}\n")
            self.stack.flush()
            faulthandler.register(signal.SIGTERM, file=self.stack, all_threads=True, chain=True)
        return self.entry(*args)


def _every_rank_failure(err: ChildFailedError, logs: DefaultLogsSpecs) -> None:
    """Add this node's other ranks to `err.failures`. The agent reports only the rank it noticed
    first (often a peer's "connection closed" echo) and then stops the others; every rank that raised
    left an error file in the launch's log dir (`<run log dir>/attempt_N/<local rank>/error.json`).
    Read them now, before a temporary log dir is removed. A rank without one was stopped by the agent
    (exit code -15, `stopped_by_launcher`). Each failure gets `written_ns`, the error file's mtime
    (None without one), so that the failures can be ordered in time, and `stack_at_stop`, the stack
    the rank wrote when the agent stopped it ("" if it was not stopped)."""
    run_dir = getattr(logs, "_run_log_dir", None)
    if not run_dir or not err.failures:
        return
    rank, first = next(iter(err.failures.items()))
    offset = rank - first.local_rank  # this node's first global rank
    rank_dirs = {int(d.name): d for d in sorted(Path(run_dir).glob("attempt_*/*")) if d.name.isdigit()}
    for local, rank_dir in rank_dirs.items():
        if offset + local not in err.failures:
            error_file = rank_dir / "error.json"
            failure = ProcessFailure(local_rank=local, pid=0, exitcode=1 if error_file.is_file() else -15,
                                     error_file=str(error_file))
            failure.stopped_by_launcher = not error_file.is_file()
            err.failures[offset + local] = failure
    for failure in err.failures.values():  # (without its file, a failure's error_file reads "<N/A>")
        rank_dir = rank_dirs.get(failure.local_rank, Path(os.devnull))
        error_file, stack = rank_dir / "error.json", rank_dir / STACK_FILE
        failure.written_ns = error_file.stat().st_mtime_ns if error_file.is_file() else None
        failure.stack_at_stop = stack.read_text(errors="replace") if stack.is_file() else ""
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
            return elastic_launch(config, _StackOnStop(entry))(*args)
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
