"""Failure classification: which rank's failure caused a launch to fail, and what kind it was
(out of memory, non-finite values, the rank's own exception, or a hang seen through its peers)."""

from __future__ import annotations

import linecache
import os
import re
from pathlib import Path

from .launch import ChildFailedError

# what a rank reports when a *peer* failed or hung: never the cause of a failure
FOLLOW_ON = (
    "connection closed",
    "connection reset",
    "closed by peer",
    "broken pipe",
    "timed out",
    "timeout",
    "signal 15",
    "signal 9",
    "sigterm",
    "sigkill",
    "terminated",
    "exitcode: -9",
    "exitcode: -15",
)


def _failure_text(failure) -> str:
    """The rank's error message, then its traceback (the launcher's error file holds both)."""
    message = failure.message
    if isinstance(message, dict):  # {"message": "...", "extraInfo": {"py_callstack": "..."}}
        stack = message.get("extraInfo", {}).get("py_callstack", "")
        message = f"{message.get('message', '')}\n{stack}"
    return str(message).strip() or f"exit code {failure.exitcode}"


def oom_kill_count() -> int | None:
    """How many processes the kernel's OOM killer has killed so far, as this machine counts them: the
    cgroup's counter (v2 memory.events, v1 memory.oom_control) plus /proc/vmstat's; None where neither
    is readable. Only its rise during a launch matters (the kernel log is not readable here)."""
    total, found = 0, False
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control", "/proc/vmstat"):
        try:
            for line in Path(path).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    total, found = total + int(value), True
        except (OSError, ValueError):
            continue
    return total if found else None


def available_memory_frac() -> float:
    import psutil

    vm = psutil.virtual_memory()
    return vm.available / vm.total


LOW_MEMORY_FRAC = 0.03  # available memory below this when a rank died by SIGKILL: the OOM killer


def _failure_kind(failure, text: str, oom_killer: bool) -> str:
    """oom | non_finite | own (the rank's own exception: the cause) | follow_on (a peer's echo, or a
    rank the launcher stopped)."""
    if "OutOfMemoryError" in text or "out of memory" in text.lower():
        return "oom"
    if getattr(failure, "stopped_by_launcher", False):
        return "follow_on"
    if failure.exitcode < 0 and not os.path.isfile(failure.error_file):  # died by a signal it did not raise
        return "oom_killed" if failure.exitcode == -9 and oom_killer else "own"
    if "non-finite" in text:
        return "non_finite"
    if any(m in text.splitlines()[0].lower() for m in FOLLOW_ON):
        return "follow_on"
    return "own"


def _written(failure) -> float:
    """When the rank failed: its error file's mtime (the launch records it), else the failure's
    timestamp (a rank without an error file: when its exit was seen, so after the ones that wrote)."""
    written = getattr(failure, "written_ns", None)
    return written / 1e9 if written is not None else float(failure.timestamp)


def _waiting_in_comm(stack: str) -> bool | None:
    """From the stack a rank wrote when the launcher stopped it (harness/launch.py `_StackOnStop`): True
    when its main thread was blocked in communication (its innermost frame in torch.distributed, or on a
    `.wait()` of a request), False when it was elsewhere, None without a stack."""
    lines = stack.splitlines()
    if not lines or not lines[0].startswith("main thread "):
        return None
    ident, in_main = lines[0].split()[-1], False
    for line in lines[1:]:
        if line.startswith(("Thread ", "Current thread ")):
            in_main = ident in line
            continue
        frame = re.match(r'\s*File "(.+)", line (\d+) in ', line) if in_main else None
        if frame:
            return "torch/distributed" in frame[1] or ".wait(" in linecache.getline(frame[1], int(frame[2]))
    return None


def _non_finite_order(text: str) -> tuple[int, int]:
    """(step, 0 for an output / 1 for a gradient) of a NonFiniteError's message."""
    found = re.search(r"non-finite (.+?) on rank \d+ at step (\d+)", text)
    return (int(found[2]), 0 if found[1] == "output" else 1) if found else (1 << 30, 1)


def classify_failure(
    err: ChildFailedError, oom_kills: int | None = 0, available_frac: float | None = None
) -> tuple[str, str]:
    """(status, reason) from every rank's failure (the launch adds the ranks the agent did not
    report), in the order they failed: a root cause wins over the connection losses and collective
    timeouts it caused in its peers. Out of memory first (an OutOfMemoryError, or a rank dead by
    SIGKILL while the kernel's OOM killer fired during the launch, `oom_kills` > 0, or with available
    memory below LOW_MEMORY_FRAC); then the earliest rank's own error (an exception that is not a
    follow-on, non-finite values); only follow-on errors and a collective timeout means a hang, blamed
    on the ranks that wrote no error (the launcher stopped them while their peers waited)."""
    oom_killer = bool(oom_kills) or (available_frac is not None and available_frac < LOW_MEMORY_FRAC)
    failures = sorted(err.failures.items(), key=lambda rf: (_written(rf[1]), rf[0]))
    texts = {rank: _failure_text(f) for rank, f in failures}
    kinds = {rank: _failure_kind(f, texts[rank], oom_killer) for rank, f in failures}
    for rank, _ in failures:
        if kinds[rank] == "oom":
            return "oom", f"rank {rank}: out of memory: {texts[rank].splitlines()[0][:500]}"
        if kinds[rank] == "oom_killed":
            evidence = (
                f"the kernel's OOM-kill counter rose by {oom_kills} during the launch"
                if oom_kills
                else f"available memory {available_frac:.1%} of the machine's"
            )
            return "oom", f"rank {rank}: out of memory: killed by SIGKILL, not by the watchdog ({evidence})"
    causes = [r for r, _ in failures if kinds[r] in ("own", "non_finite")]
    # non-finite values spread: a poisoned output makes every rank's gradients non-finite in the same
    # step's backward, so the first step, then an output before a gradient, is the origin
    causes.sort(key=lambda r: _non_finite_order(texts[r]) if kinds[r] == "non_finite" else (-1, 0))
    for rank in causes:
        if kinds[rank] == "non_finite":
            return "error", next(line for line in texts[rank].splitlines() if "non-finite" in line).strip()
        if kinds[rank] == "own":
            return "error", f"rank {rank} failed: " + "\n".join(texts[rank].splitlines()[:12])[:2000]
    echoes = " | ".join(
        f"rank {r}: {texts[r].splitlines()[0][:200]}"
        for r, f in failures
        if not getattr(f, "stopped_by_launcher", False)
    )
    if any("timed out" in t.lower() or "timeout" in t.lower() for t in texts.values()):
        stopped = [r for r, f in failures if getattr(f, "stopped_by_launcher", False)]
        hung = [
            r
            for r, f in failures
            if r in stopped and _waiting_in_comm(getattr(f, "stack_at_stop", "")) is False
        ]
        if stopped:
            who = hung or stopped
            waiting = (
                f"; rank(s) {', '.join(map(str, sorted(set(stopped) - set(who))))} "
                "were waiting in communication"
                if len(who) < len(stopped)
                else ""
            )
            return "timeout", (
                f"rank{'s' if len(who) > 1 else ''} {', '.join(map(str, who))} stopped responding: "
                f"its peers timed out waiting for it ({echoes}{waiting})"
            )
        return "timeout", "a collective timed out waiting for a peer: " + echoes
    rank, _ = failures[0]
    return "error", f"rank {rank} failed: " + texts[rank][:2000]
