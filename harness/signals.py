"""Process lifetime of a job, both sides of the launch.

Parent side: SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption) raise `Interrupted` in the main
thread, so the launch in progress ends its ranks and the job writes an `interrupted` row before the
sweep stops; a second signal exits at once (after SIGKILL to the ranks still known).

Rank side (`rank_start`, first thing in every rank): the rank dies with its parent (PR_SET_PDEATHSIG)
and with the launcher process (a thread polling its PID: with a forkserver the rank's parent is the
forkserver, not the launcher), writes its PID where the launcher finds it, and `progress` records the
last step it finished."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

LAUNCH_DIR_ENV = "SPBENCH_LAUNCH_DIR"  # set in each rank by rank_start: the launch's directory
PIDS, PROGRESS, OWNER = "pids", "progress", "owner"
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while a job ran. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` on the way (Hydra's job runner included) turns it into one failed point."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.steps: dict[int, int] = {}  # rank -> last step it finished (filled in by the launch)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def reason(self) -> str:
        name = signal.Signals(self.signum).name
        if not self.steps:
            return f"interrupted by {name} before any rank finished a step"
        per_rank = ", ".join(f"rank {r}: {s}" for r, s in sorted(self.steps.items()))
        return (
            f"interrupted by {name}: the ranks had finished step {min(self.steps.values())} ({per_rank}; "
            "step 0 = the counted step, then warm-up and timed steps)"
        )


# ---- parent side ------------------------------------------------------------------------------------

_received: list[int] = []
_emergency: list[Callable[[], None]] = []  # what a second signal runs before exiting (the launch registers)


def _handler(signum: int, frame) -> None:
    if _received:  # the second signal: no more cleaning up than a SIGKILL to the known ranks
        for stop in list(_emergency):
            with contextlib.suppress(Exception):
                stop()
        os._exit(128 + signum)
    _received.append(signum)
    raise Interrupted(signum)


def install() -> None:
    """Route SIGINT and SIGTERM to `Interrupted` (main thread only; idempotent)."""
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            if signal.getsignal(sig) is not _handler:
                signal.signal(sig, _handler)


def on_second_signal(stop: Callable[[], None]) -> Callable[[], None]:
    """Register `stop` to run if a second signal arrives; returns the function that unregisters it."""
    _emergency.append(stop)
    return lambda: _emergency.remove(stop) if stop in _emergency else None


# ---- rank side -------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: SIGKILL when the thread that forked us exits
    except (OSError, AttributeError):  # not Linux
        pass


def _alive(pid: int, start: float) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - start) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _watch(pid: int, start: float, every_s: float = 1.0) -> None:
    while _alive(pid, start):
        time.sleep(every_s)
    os._exit(1)  # the launcher is gone: nobody waits for this rank's result


def rank_start(launch_dir: str, launcher_pid: int, launcher_start: float) -> None:
    """First thing in a rank: die with the parent and the launcher, and say who this rank is."""
    import psutil

    _die_with_parent()
    if not _alive(launcher_pid, launcher_start):
        os._exit(1)
    threading.Thread(
        target=_watch, args=(launcher_pid, launcher_start), daemon=True, name="spbench-launcher-watch"
    ).start()
    os.environ[LAUNCH_DIR_ENV] = launch_dir
    me = psutil.Process()
    _write(Path(launch_dir) / PIDS / str(me.pid), repr(me.create_time()))


def progress(step: int) -> None:
    """Record that this rank finished `step` (0 = the counted step); a no-op outside a launch."""
    launch_dir = os.environ.get(LAUNCH_DIR_ENV)
    if launch_dir:
        _write(Path(launch_dir) / PROGRESS / os.environ.get("RANK", "0"), str(step))


def read_progress(launch_dir: str | Path) -> dict[int, int]:
    out = {}
    for f in (Path(launch_dir) / PROGRESS).glob("*"):
        try:
            out[int(f.name)] = int(f.read_text())
        except (OSError, ValueError):
            continue
    return out


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_rank(info: tuple[str, int, float], entry: Callable, *args):
    """The launch's entry point in every rank: `rank_start(*info)`, then `entry(*args)`."""
    rank_start(*info)
    return entry(*args)


__all__ = [
    "Interrupted",
    "install",
    "on_second_signal",
    "rank_start",
    "run_rank",
    "progress",
    "read_progress",
]
