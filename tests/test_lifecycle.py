"""A job's processes end when the job does: the watchdog ends busy, sleeping and stopped ranks;
SIGINT and SIGTERM stop a sweep with an `interrupted` row; SIGKILL of the parent takes the ranks with it.

Before these fixes (same commands, measured on a loaded 2-core box; timeout_s=15):
- busy ranks (bench.iters=100000): no row after 50 s, ranks, forkserver and resource tracker all running;
- a sleeping rank (fault.kind=hang, world_size=1): no row after 50 s, still running;
- stopped ranks (SIGSTOP on every rank): no row after 50 s, the job hung for good;
- SIGINT / SIGTERM during a 3-point sweep: the point failed, the sweep went on to the next points,
  no `interrupted` row;
- SIGKILL of the parent: the ranks kept running (still there after 10 s).
Each test below fails on that code; numbers after the fix are in the commit message."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from harness.results import load

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 12
BUSY = ["method=ring", "model=tiny", "world_size=3", "workload.seq_len=288", "bench.iters=100000"]


class Job:
    """`python -m harness.run ARGS` in a session of its own; a thread notes every process under it."""

    def __init__(self, args: list[str], cwd: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.run", *args],
            cwd=cwd,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        )
        self.started = time.monotonic()
        self.seen: dict[int, float] = {}  # pid -> create time, every descendant ever seen
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._poll, daemon=True)
        self._watch.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    self.seen.setdefault(child.pid, child.create_time())
            except psutil.Error:
                pass
            time.sleep(0.1)

    def ranks(self) -> list[psutil.Process]:
        """The children of the job's forkserver: its ranks."""
        try:
            servers = [
                c for c in psutil.Process(self.proc.pid).children() if "forkserver" in " ".join(c.cmdline())
            ]
            return [r for s in servers for r in s.children()]
        except psutil.Error:
            return []

    def wait_ranks(self, n: int, limit_s: float = 90) -> list[psutil.Process]:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            ranks = self.ranks()
            if len(ranks) >= n:
                return ranks
            assert self.proc.poll() is None, self.proc.stdout.read()[-3000:]
            time.sleep(0.2)
        raise AssertionError(f"fewer than {n} ranks after {limit_s} s")

    def wait(self, limit_s: float) -> tuple[int | None, float, str]:
        """(exit code or None if still running, seconds since start, output)."""
        try:
            out, _ = self.proc.communicate(timeout=limit_s)
            return self.proc.returncode, time.monotonic() - self.started, out
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - self.started, ""

    def left(self, settle_s: float = 5) -> list[str]:
        """Processes of the job still alive (not zombies) `settle_s` after it ended."""
        self._stop.set()
        deadline = time.monotonic() + settle_s
        while True:
            alive = []
            for pid, created in self.seen.items():
                try:
                    p = psutil.Process(pid)
                    if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                        alive.append(f"{pid} {' '.join(p.cmdline())[:100]}")
                except psutil.Error:
                    continue
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)

    def cleanup(self) -> None:
        """Whatever failed: SIGKILL to this test's own session and to the processes it saw."""
        self._stop.set()
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid, created in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created:
                    p.kill()
            except psutil.Error:
                continue
        self.proc.wait()


@pytest.fixture
def job(tmp_path):
    jobs = []

    def start(args: list[str]) -> Job:
        jobs.append(Job(args, tmp_path))
        return jobs[-1]

    yield start
    for j in jobs:
        j.cleanup()


@pytest.mark.parametrize("ranks", ["busy", "sleeping", "stopped"])
def test_watchdog_ends_the_job(job, tmp_path, ranks):
    """A timeout row within timeout_s + 15 s, and no rank, forkserver or resource tracker left.
    Before: no row at 50 s in all three cases (timeout_s=15), every process still running."""
    args = (
        BUSY if ranks != "sleeping" else ["world_size=1", "fault.kind=hang", "fault.rank=0", "fault.step=0"]
    )
    j = job([*args, f"bench.timeout_s={TIMEOUT_S}", f"hydra.run.dir={tmp_path / 'run'}"])
    if ranks == "stopped":
        for rank in j.wait_ranks(3):
            rank.suspend()  # SIGSTOP: only SIGKILL (or SIGCONT) ends it
    code, seconds, out = j.wait(TIMEOUT_S + 45)  # Python and torch start before the job's clock does
    assert code is not None, f"still running after {seconds:.0f} s"
    row = json.loads((tmp_path / "run" / "result.json").read_text())
    assert row["status"] == "timeout", (row["error"], out[-3000:])
    assert row["job_seconds"] < TIMEOUT_S + 15
    assert code == 1  # a single run whose row is not ok exits 1 (2 for invalid)
    assert j.left() == []


def _sweep_then_signal(job, tmp_path, sig: int) -> None:
    sweep = tmp_path / "sweep"
    j = job(
        [
            "-m",
            *BUSY[:-2],
            "bench.iters=100000",
            "bench.timeout_s=300",
            "workload.seq_len=288,576,864",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    j.wait_ranks(3)
    deadline = time.monotonic() + 60  # until every rank has finished a step or two
    while time.monotonic() < deadline and not all(
        len(list((d / "progress").glob("[0-9]"))) == 3 for d in _launch_dirs_of(j.proc.pid) or [Path("-")]
    ):
        time.sleep(0.2)
    time.sleep(1)
    t0 = time.monotonic()
    os.kill(j.proc.pid, sig)
    code, _, out = j.wait(30)
    assert code is not None, "still running 30 s after the signal"
    assert time.monotonic() - t0 < 20
    assert code == 128 + sig, out[-3000:]
    rows = load(sweep)
    assert len(rows) == 1, out[-3000:]
    row = rows.iloc[0]
    assert row.status == "interrupted" and row.seq_len == 288
    name = signal.Signals(sig).name
    assert re.search(rf"interrupted by {name}: the ranks had finished step \d+", row.error), row.error
    assert not (sweep / "1").exists() and not (sweep / "2").exists()  # no later point started
    assert j.left() == []


def test_sigint_stops_the_sweep(job, tmp_path):
    """Before: the interrupted point failed as an exception, the sweep went on to the next points."""
    _sweep_then_signal(job, tmp_path, signal.SIGINT)


def test_sigterm_stops_the_sweep(job, tmp_path):
    """Before: as SIGINT (the elastic agent's handler turned it into a failed point)."""
    _sweep_then_signal(job, tmp_path, signal.SIGTERM)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _launch_dirs_of(pid: int) -> list[Path]:
    out = []
    for path in Path(tempfile.gettempdir()).glob("spbench-launch-*"):
        try:
            if (path / "owner").read_text().split()[0] == str(pid):
                out.append(path)
        except (OSError, IndexError):
            continue
    return out


def test_sigkill_of_the_parent_takes_the_ranks(job, tmp_path):
    """Ranks gone within 10 s of SIGKILL to the Hydra process; its launch directory is removed by the
    next launch. Before: the ranks kept running (still there after 10 s)."""
    j = job([*BUSY, "bench.timeout_s=300", f"hydra.run.dir={tmp_path / 'run'}"])
    ranks = j.wait_ranks(3)
    parent = j.proc.pid
    assert len(_launch_dirs_of(parent)) == 1
    os.kill(parent, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(r) for r in ranks):
        time.sleep(0.2)
    assert not any(_running(r) for r in ranks)
    j.proc.wait()
    assert j.left() == []
    again = job(
        [
            "world_size=2",
            "workload.seq_len=32",
            "bench.warmup=0",
            "bench.iters=1",
            f"hydra.run.dir={tmp_path / 'again'}",
        ]
    )
    code, _, out = again.wait(120)
    assert code == 0, out[-3000:]
    assert _launch_dirs_of(parent) == []
