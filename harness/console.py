"""What a run prints for people: one line per row, a progress line per point of a multirun, and the
multirun's summary. Diagnostics go through `logging`; these lines are the run's output."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

from .labels import label
from .units import fmt, fmt_tokens

UNWRITTEN, BUSY = "unwritten", "busy"  # a point without a row (not row statuses)
STATUS_ORDER = ("ok", "oom", "timeout", "invalid", "error", UNWRITTEN, BUSY)


def size(row: dict) -> str:
    if row.get("frames"):
        return f"frames={row['frames']} spatial={row['spatial']}"
    return f"seq_len={row.get('seq_len')}"


def _verify(row: dict) -> str:
    if row.get("verify_out_rel_err") is None:
        return ""
    return f", verify rel. err. output {row['verify_out_rel_err']:.2e} grads {row['verify_grad_rel_err']:.2e}"


def row_line(row: dict, job_dir: Path) -> str:
    """`[status] mode method size world_size <outcome> -> job_dir`."""
    if row["error"]:
        extra = f" error: {row['error']}"
    elif row.get("step_time_ms") is None:  # dryrun: no time, only bytes
        comm = row["comm_bytes_fwd"] + row["comm_bytes_bwd"]
        extra = f" peak {fmt(row['peak_mem_bytes'], 'bytes')}, comm {fmt(comm, 'bytes')}"
    else:
        extra = f" step {fmt(row['step_time_ms'] / 1e3, 'seconds')}"
    hardware = f" (projected on {row['hardware']})" if row.get("hardware_defaulted") else ""
    if row.get("fits") is False:
        need, have = row["mem_required_bytes"], row["mem_capacity_bytes"]
        hardware += f", does not fit: {fmt(need, 'bytes')} of {fmt(have, 'bytes')} on {row['hardware']}"
    return (
        f"[{row['status']}] {row['mode']} {row['method']} {size(row)} world_size={row['world_size']}"
        f"{extra}{_verify(row)}{hardware} -> {job_dir}"
    )


def _clock(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(seconds)))


def progress_line(done: int, total: int | None, row: dict, status: str, elapsed_s: float | None) -> str:
    """`[k/N] label size status step_time peak_mem (elapsed, ETA)`: the points run so far by this
    process; N, elapsed time and ETA only where this process started the multirun."""
    step = row.get("step_time_ms")
    measured = f" step {fmt(step / 1e3, 'seconds')}" if step is not None else ""
    peak = f" peak {fmt(row['peak_mem_bytes'], 'bytes')}" if row.get("peak_mem_bytes") is not None else ""
    count = f"[{done}/{total}]" if total else f"[{done}]"
    clock = ""
    if elapsed_s is not None:
        eta = f", ETA {_clock(elapsed_s / done * (total - done))}" if total else ""
        clock = f" ({_clock(elapsed_s)}{eta})"
    tokens = row.get("seq_len") and f"L={fmt_tokens(row['seq_len'])}"
    return f"{count} {label(row)} {tokens or size(row)} {status}{measured}{peak}{clock}"


def summary_line(outcomes: list[tuple[str, bool]], sweep_dir: Path) -> str:
    """`sweep: 3 ok, 1 oom (2 skipped) -> DIR` from (status, skipped) per point."""
    counts = Counter(status for status, _ in outcomes)
    skipped = sum(skip for _, skip in outcomes)
    order = sorted(
        counts, key=lambda s: (STATUS_ORDER.index(s) if s in STATUS_ORDER else len(STATUS_ORDER), str(s))
    )
    return (
        f"sweep: {', '.join(f'{counts[s]} {s}' for s in order) or 'no points'}"
        f"{f' ({skipped} skipped)' if skipped else ''} -> {sweep_dir}"
    )
