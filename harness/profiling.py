"""`bench.profile=true`: one extra step under torch.profiler per rank, its Chrome trace written next
to the rank's logs, and `overlap_frac` read back from that trace: the share of communication time
during which compute ran too.

On a GPU, communication is the NCCL kernels and compute every other kernel. On CPU (gloo) the
transfers run on gloo's threads, which the trace does not show: there, communication is the time
the rank spends inside collective ops and compute the other ops on any thread, so the number says
how much of that time other work filled."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

COMM = re.compile(
    r"nccl|gloo|c10d::|record_param_comms|all_?gather|reduce_?scatter|all_?reduce|all_?to_?all|"
    r"\bsend\b|\brecv",
    re.IGNORECASE,
)

Interval = tuple[float, float]


def profiled_step(step: Callable[[], object], device: torch.device, path: Path) -> float | None:
    """Run `step` once under the profiler, write the trace to `path`, return its overlap_frac."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    return overlap_fraction(json.loads(path.read_text()))


def _union(intervals: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _length(intervals: list[Interval]) -> float:
    return sum(end - start for start, end in intervals)


def _intersection(a: list[Interval], b: list[Interval]) -> list[Interval]:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def overlap_fraction(trace: dict) -> float | None:
    """|communication ∩ compute| / |communication| over a Chrome trace; None without communication."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    kernels = [e for e in events if e.get("cat") == "kernel"]
    pool = kernels or [e for e in events if e.get("cat") == "cpu_op"]
    span = lambda e: (float(e["ts"]), float(e["ts"]) + float(e["dur"]))  # noqa: E731
    comm_events = [e for e in pool if COMM.search(e["name"])]
    comm = _union([span(e) for e in comm_events])
    if not _length(comm):
        return None
    compute = [e for e in pool if not COMM.search(e["name"])]
    if not kernels:  # CPU ops nest: an op that encloses a collective on its thread is not compute

        def encloses_comm(e: dict) -> bool:
            s, t = span(e)
            return any(c["tid"] == e["tid"] and s <= span(c)[0] and span(c)[1] <= t for c in comm_events)

        compute = [e for e in compute if not encloses_comm(e)]
    return _length(_intersection(comm, _union([span(e) for e in compute]))) / _length(comm)
