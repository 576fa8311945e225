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
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from . import signals
from .cluster import NodePlan, node_plan

PRELOAD = ["torch", "torch.distributed", "harness.worker", "harness.signals", "methods"]


def _start_method() -> str:
    # CUDA cannot be initialised in a forked child of a process that touched it; the forkserver
    # never does. Fall back to spawn where forkserver does not exist.
    if "forkserver" in multiprocessing.get_all_start_methods():
        multiprocessing.set_forkserver_preload(PRELOAD)
        return "forkserver"
    return "spawn"


class LaunchTimeout(RuntimeError):
    """The watchdog ended a launch that ran past its time limit."""


GRACE_S = 3.0  # between SIGTERM and SIGKILL


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def end_processes(procs: list[psutil.Process], grace_s: float = GRACE_S) -> int:
    """SIGTERM (and SIGCONT, so a stopped process gets it), then SIGKILL to those still there after
    `grace_s`. Returns how many there were."""
    _signal_and_wait(procs, lambda p: (p.terminate(), p.resume()), grace_s)
    _signal_and_wait([p for p in procs if not _gone(p)], psutil.Process.kill, grace_s)
    return len(procs)


def _signal_and_wait(
    procs: list[psutil.Process], send: Callable[[psutil.Process], Any], grace_s: float
) -> None:
    """`send` to each process, then wait up to `grace_s` for all of them to be gone."""
    for proc in procs:
        try:
            send(proc)
        except psutil.Error:
            continue
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and not all(_gone(p) for p in procs):
        time.sleep(0.05)


def _helper_pids() -> set[int]:
    """multiprocessing's forkserver and resource tracker of this process (started once, reused)."""
    from multiprocessing import forkserver, resource_tracker

    pids = {
        getattr(forkserver._forkserver, "_forkserver_pid", None),
        getattr(resource_tracker._resource_tracker, "_pid", None),
    }
    return {pid for pid in pids if pid}


class _Launch:
    """The processes of one launch: ranks found by the PID each writes into the launch directory, and
    every process this process has started since the launch began (the ranks, children of the
    forkserver, before their PID file exists), with their descendants; never the forkserver or the
    resource tracker, which later launches reuse."""

    def __init__(self, launch_dir: str):
        self.dir = Path(launch_dir)
        self.since = time.time() - 0.05  # process start times are rounded to clock ticks

    def processes(self) -> list[psutil.Process]:
        found: dict[int, psutil.Process] = {}
        for f in (self.dir / signals.PIDS).glob("[0-9]*"):
            try:
                proc = psutil.Process(int(f.name))
                if abs(proc.create_time() - float(f.read_text())) < 0.01:
                    found[proc.pid] = proc
            except (psutil.Error, OSError, ValueError):
                continue
        helpers = _helper_pids()
        try:
            for proc in psutil.Process().children(recursive=True):
                if proc.pid not in helpers and proc.create_time() >= self.since:
                    found[proc.pid] = proc
        except psutil.Error:
            pass
        for proc in list(found.values()):
            try:
                found.update((c.pid, c) for c in proc.children(recursive=True))
            except psutil.Error:
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def end(self, grace_s: float = GRACE_S) -> int:
        return end_processes(self.processes(), grace_s)


def stop_helpers(wait_s: float = 3.0) -> None:
    """End multiprocessing's forkserver and resource tracker (after an interruption: the process is
    about to exit, and a rank killed mid-way must not keep them alive)."""
    from multiprocessing import forkserver, resource_tracker

    procs = []
    for pid in _helper_pids():
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            continue
    for helper in (forkserver._forkserver, resource_tracker._resource_tracker):
        stopper = threading.Thread(target=getattr(helper, "_stop", lambda: None), daemon=True)
        stopper.start()  # closes the helper's pipe (it exits on EOF) and reaps it
        stopper.join(wait_s)
    end_processes([p for p in procs if not _gone(p)], grace_s=0.5)  # the resource tracker ignores SIGTERM


def _owner_alive(launch_dir: Path) -> bool:
    try:
        pid, start = (launch_dir / signals.OWNER).read_text().split()
        return signals._alive(int(pid), float(start))
    except (OSError, ValueError):
        return True  # no owner (yet, or an older harness's): not ours to judge


def _remove_dead_launch_dirs(root: str) -> None:
    for path in Path(root).glob("spbench-launch-*"):
        if path.is_dir() and not _owner_alive(path):
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _private_tempdir():
    """Point this process's temporary files (torch's per-rank error files) at a directory that is
    removed afterwards, so no launch leaves files behind, whatever happened; the directory names its
    owner, so the next launch removes it if a SIGKILL prevented that."""
    multiprocessing.util.get_temp_dir()  # multiprocessing's own dir (forkserver socket) stays where it is
    _remove_dead_launch_dirs(tempfile.gettempdir())
    path, previous = tempfile.mkdtemp(prefix="spbench-launch-"), tempfile.tempdir
    (Path(path) / signals.OWNER).write_text(f"{os.getpid()} {psutil.Process().create_time()!r}")
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
            # kept open for the SIGTERM handler, which writes the stacks into it
            self.stack = open(Path(error_file).with_name(STACK_FILE), "w")  # noqa: SIM115 -- see above
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
            failure = ProcessFailure(
                local_rank=local,
                pid=0,
                exitcode=1 if error_file.is_file() else -15,
                error_file=str(error_file),
            )
            # extra fields on torch's ProcessFailure, read back with getattr by harness/failures.py
            failure.stopped_by_launcher = not error_file.is_file()  # type: ignore[attr-defined]
            err.failures[offset + local] = failure
    for failure in err.failures.values():  # (without its file, a failure's error_file reads "<N/A>")
        rank_dir = rank_dirs.get(failure.local_rank, Path(os.devnull))
        error_file, stack = rank_dir / "error.json", rank_dir / STACK_FILE
        written_ns = error_file.stat().st_mtime_ns if error_file.is_file() else None
        stack_at_stop = stack.read_text(errors="replace") if stack.is_file() else ""
        failure.written_ns = written_ns  # type: ignore[attr-defined]
        failure.stack_at_stop = stack_at_stop  # type: ignore[attr-defined]
    err.failures = dict(sorted(err.failures.items()))


def _gather_rank_logs(logs: DefaultLogsSpecs, log_dir: Path, first_rank: int) -> None:
    """`log_dir/rank<r>.log`: rank r's stdout, then its stderr, from where the elastic agent writes
    them (`<log dir>/<run id>_<random>/attempt_N/<local rank>/{stdout,stderr}.log`)."""
    run_dir = getattr(logs, "_run_log_dir", None)
    if not run_dir:
        return
    for rank_dir in sorted(Path(run_dir).glob("attempt_*/*")):
        if not rank_dir.name.isdigit():
            continue
        parts = []
        for stream in ("stdout", "stderr"):
            path = rank_dir / f"{stream}.log"
            text = path.read_text(errors="replace") if path.is_file() else ""
            parts.append(f"==> {stream} ({path}) <==\n{text}")
        (log_dir / f"rank{first_rank + int(rank_dir.name)}.log").write_text("\n".join(parts))


def launch(
    entry: Callable[..., Any],
    args: tuple,
    world_size: int,
    log_dir: str | Path | None = None,
    timeout_s: float | None = None,
    plan: NodePlan | None = None,
) -> dict[int, Any]:
    """Run `entry(*args)` on `world_size` ranks: all local, or this node's share of a multi-node SLURM
    step (`plan`, default `node_plan(world_size)`); returns {global rank: return value} of this node's ranks.
    With `log_dir`, each rank's output ends up in `log_dir/rank<r>.log`.
    Raises ChildFailedError (with every failed rank's error) if any rank fails, and LaunchTimeout if
    the launch is still running after `timeout_s` (its ranks are ended first). On SIGINT/SIGTERM
    (`signals.Interrupted`, or KeyboardInterrupt) the ranks, the forkserver and the resource tracker
    are ended and the exception goes on, carrying the step each rank had finished.

    The elastic agent runs in a thread of its own, so that it installs no signal handlers and this
    (main) thread keeps the clock and the signals."""
    plan = node_plan(world_size) if plan is None else plan
    with _private_tempdir() as tmp:
        logs = DefaultLogsSpecs(log_dir=str(log_dir or tmp), tee=Std.ALL, local_ranks_filter={0})
        config = LaunchConfig(
            **plan.launch_kwargs(),
            max_restarts=0,
            start_method=_start_method(),
            monitor_interval=0.1,
            logs_specs=logs,
        )
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # elastic sets it anyway; silence its warning
        job = _Launch(tmp)
        info = (tmp, os.getpid(), psutil.Process().create_time())
        outcome: dict[str, Any] = {}

        def agent() -> None:
            try:
                outcome["value"] = elastic_launch(config, signals.run_rank)(info, _StackOnStop(entry), *args)
            except BaseException as e:  # noqa: BLE001 -- handed to the main thread
                outcome["error"] = e

        thread = threading.Thread(target=agent, daemon=True, name="spbench-elastic-agent")
        deadline = time.monotonic() + timeout_s if timeout_s else None

        def kill_ranks() -> None:
            end_processes(job.processes(), grace_s=0)

        forget = signals.on_second_signal(kill_ranks)
        try:
            thread.start()
            while thread.is_alive() and (deadline is None or time.monotonic() < deadline):
                thread.join(0.1)
            if thread.is_alive():  # the watchdog
                job.end()
                thread.join(8)
                raise LaunchTimeout(f"ranks still running after {timeout_s:g} s (bench.timeout_s); ended")
            if "error" in outcome:
                if isinstance(outcome["error"], ChildFailedError):
                    _every_rank_failure(outcome["error"], logs)  # before the launch's temp dir goes
                raise outcome["error"]
            return outcome["value"]
        except (signals.Interrupted, KeyboardInterrupt) as stop:
            job.end()
            if isinstance(stop, signals.Interrupted):
                stop.steps = signals.read_progress(tmp)
            thread.join(5)
            stop_helpers()
            raise
        finally:
            forget()
            job.end()  # nothing of this launch outlives it
            if log_dir is not None:
                _gather_rank_logs(logs, Path(log_dir), plan.node_rank * plan.nproc_per_node)


__all__ = ["launch", "ChildFailedError", "LaunchTimeout", "end_processes"]
