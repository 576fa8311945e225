"""A row's measurements from what the ranks returned: step-time statistics, throughput and MFU,
peak memory, and counted communication beside each method's cost model."""

from __future__ import annotations

import statistics

from omegaconf import DictConfig

import methods
from methods.common.config import Problem

from .flops import step_flops
from .projection import comm_seconds


def suspect(row: dict) -> str | None:
    """A measured rate above the hardware's peak cannot be right (a timing or FLOP-count bug, or a
    wrong hardware profile): such rows are flagged, not dropped."""
    for key in ("mfu", "mfu_compute"):
        if (row.get(key) or 0) > 1:
            return f"{key}={row[key]:.2f} exceeds the hardware profile's peak TFLOP/s"
    return None


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def max_comm(per_rank: list[dict]) -> dict:
    out: dict = {"fwd": {}, "bwd": {}}
    for r in per_rank:
        for phase, kinds in r["comm"].items():
            for kind, b in kinds.items():
                out[phase][kind] = max(out[phase].get(kind, 0), b)
    return out


def _rates(problem: Problem, seconds: float, hardware: DictConfig, suffix: str = "") -> dict:
    """Throughput and MFU of a step of `seconds`. `mfu` counts causal-effective FLOPs (the masked
    half of causal attention removed), `mfu_dense` counts causal attention as dense."""
    dense, effective = step_flops(problem)
    peak = (hardware.get("peak_tflops") or {}).get(problem.dtype)
    per_gpu = {
        "": effective / problem.world_size / seconds / 1e12,
        "_dense": dense / problem.world_size / seconds / 1e12,
    }
    row: dict[str, float | None] = {f"tokens_per_s{suffix}": problem.workload.tokens / seconds}
    for kind, tflops in per_gpu.items():
        row[f"tflops_per_gpu{kind}{suffix}"] = tflops
        row[f"mfu{kind}{suffix}"] = tflops / peak if peak else None
    return row


def _timing(problem: Problem, per_rank: list[dict], hardware: DictConfig, mode: str, comm_s: float) -> dict:
    """Real: step time = max over ranks per iteration, then median/p10/p90. Emulate: the played rank's
    compute time plus the projected communication (no overlap), and the perfect-overlap bound."""
    step_s = [max(it) for it in zip(*(r["step_times_s"] for r in per_rank))]
    row: dict = {}
    if mode == "emulate":
        compute = statistics.median(step_s)
        row.update({"compute_time_ms": 1e3 * compute, "step_time_ms_overlap": 1e3 * max(compute, comm_s)})
        row.update(_rates(problem, compute, hardware, "_compute"))
        row.update(_rates(problem, max(compute, comm_s), hardware, "_overlap"))
        step_s = [s + comm_s for s in step_s]
    median = statistics.median(step_s)
    row.update(
        {
            "step_time_ms": 1e3 * median,
            "step_time_ms_p10": 1e3 * _percentile(step_s, 0.1),
            "step_time_ms_p90": 1e3 * _percentile(step_s, 0.9),
            "step_times_ms": [1e3 * t for t in step_s],
        }
    )
    return {**row, **_rates(problem, median, hardware)}


def metrics(problem: Problem, per_rank: list[dict], hardware: DictConfig, mode: str = "real") -> dict:
    """The row's measurements from the ranks' results (one result in emulate and dryrun)."""
    dense, effective = step_flops(problem)
    comm = max_comm(per_rank)
    method = methods.for_problem(problem)
    theory = method.comm_cost(problem).as_dict()
    memory = method.memory_cost(problem)
    comm_s = max(comm_seconds(r["comm_records"], hardware) for r in per_rank)
    row = {
        "model_flops": dense,
        "model_flops_effective": effective,
        "peak_mem_bytes": max(r.get("peak_mem_bytes", 0) for r in per_rank),
        "peak_mem_reserved_bytes": max(r.get("peak_mem_reserved_bytes", 0) for r in per_rank) or None,  # CUDA
        "peak_mem_detail": per_rank[0].get("peak_mem_detail"),
        # what the forward left alive for the backward (saved activations and the output); CPU tracker only
        "mem_fwd_end_detail": per_rank[0].get("mem_fwd_end_detail"),
        "mem_end_detail": per_rank[0].get("mem_end_detail"),  # after the step: the gradients are there
        "theory_mem_bytes": memory.total,
        "theory_mem_detail": memory.as_dict(),
        "comm_bytes_fwd": sum(comm["fwd"].values()),
        "comm_bytes_bwd": sum(comm["bwd"].values()),
        "theory_comm_bytes_fwd": sum(theory["fwd"].values()),
        "theory_comm_bytes_bwd": sum(theory["bwd"].values()),
        "comm_detail": comm,
        "theory_comm_detail": theory,
        "comm_calls": per_rank[0]["comm_calls"],
        "projected_comm_ms": 1e3 * comm_s,
        "attn_backend": per_rank[0]["attn_backend"],
        "linear_backend": per_rank[0].get(
            "linear_backend"
        ),  # linear and hybrid models: fla_chunk | torch_chunked
    }
    if per_rank[0]["step_times_s"]:
        row.update(_timing(problem, per_rank, hardware, mode, comm_s))
    overlaps = [r["overlap_frac"] for r in per_rank if r.get("overlap_frac") is not None]
    row["overlap_frac"] = statistics.mean(overlaps) if overlaps else None  # bench.profile: mean over ranks
    if "verify_out_rel_err" in per_rank[0]:
        row["verify_out_rel_err"] = max(
            r["verify_out_rel_err"] for r in per_rank if "verify_out_rel_err" in r
        )
        row["verify_grad_rel_err"] = max(
            r["verify_grad_rel_err"] for r in per_rank if "verify_grad_rel_err" in r
        )
    return row
