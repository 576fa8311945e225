"""mode=dryrun and mode=emulate: one process plays one rank over a fake process group. The dryrun's
counted bytes equal every method's cost model (all ranks, tiny and paper scale), its fake-tensor
memory equals the same tracker on a real gloo run, and emulate's projection adds up."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import methods
from harness.comm import Record
from harness.memory import PeakMemory
from harness.metrics import max_comm
from harness.projection import collective_seconds, comm_seconds, spans_nodes
from harness.worker import Job, entry_single
from methods.common.config import ModelConfig, Problem, Workload

from .dist import TINY, problem, run_cases
from .test_harness import harness_run

LINEAR = replace(TINY, name="tiny_linear", kind="linear")
HYBRID = replace(TINY, name="tiny_hybrid", kind="hybrid", extra={"hybrid_period": 2})
VIDEO = ModelConfig(
    "tiny_video", hidden=32, heads=4, kv_heads=4, head_dim=8, ffn_hidden=64, layers=2, kind="video"
)


def video(method: str, n: int, **options) -> Problem:
    return Problem(
        method,
        VIDEO,
        Workload("video", batch_size=1, frames=4, spatial=12, causal=False),
        n,
        "float32",
        options,
    )


# every registered variant once, float32, 4 ranks (DSP with 12 spatial positions over 8 ranks: padded shards)
CASES = {
    "ulysses": problem("ulysses", 4, dtype="float32"),
    "ulysses-zero3": problem("ulysses", 4, dtype="float32", zero3=True),
    "tp_sp": problem("tp_sp", 4, dtype="float32"),
    "ring-zigzag": problem("ring", 4, dtype="float32", layout="zigzag"),
    "ring-stripe-noncausal": problem("ring", 4, dtype="float32", layout="stripe", causal=False),
    "allgather_cp": problem("allgather_cp", 4, dtype="float32"),
    "usp-2x2": problem("usp", 4, dtype="float32", ulysses_degree=2, ring_degree=2),
    "odysseus": problem("odysseus", 4, dtype="float32"),
    "lasp1": problem("lasp1", 4, dtype="float32", model=LINEAR),
    "lasp2": problem("lasp2", 4, dtype="float32", model=LINEAR),
    "lasp2h": problem("lasp2", 4, dtype="float32", model=HYBRID),
    "ulysses-linear": problem("ulysses", 4, dtype="float32", model=LINEAR),
    "tp_sp-hybrid": problem("tp_sp", 4, dtype="float32", model=HYBRID),
    "dsp": video("dsp", 4),
    "dsp-padded": video("dsp", 8),
    "ulysses-video": video("ulysses", 4),
    "ring-video": video("ring", 4),
    "tp_sp-video": video("tp_sp", 4),
}


def test_cases_cover_every_registered_variant():
    covered = {(m.name, m.workloads, m.model_kinds) for p in CASES.values() for m in [methods.for_problem(p)]}
    assert covered == {
        (m.name, m.workloads, m.model_kinds) for variants in methods.REGISTRY.values() for m in variants
    }


@pytest.fixture(scope="module")
def dryruns() -> dict[str, list[dict]]:
    """Every case played rank by rank in one process."""
    jobs = [
        (cid, Job(p, mode="dryrun", play_rank=r)) for cid, p in CASES.items() for r in range(p.world_size)
    ]
    results = entry_single([job for _, job in jobs])
    out: dict[str, list[dict]] = {}
    for (cid, _), result in zip(jobs, results):
        out.setdefault(cid, []).append(result)
    return out


@pytest.mark.parametrize("cid", CASES)
def test_dryrun_counts_equal_cost_model(dryruns, cid):
    theory = methods.for_problem(CASES[cid]).comm_cost(CASES[cid]).as_dict()
    assert max_comm(dryruns[cid]) == theory


@pytest.fixture(scope="module")
def real_runs() -> dict[str, list[dict]]:
    return run_cases(CASES, verify=False)


@pytest.mark.parametrize("cid", CASES)
def test_dryrun_memory_equals_a_real_run(dryruns, real_runs, cid):
    """The fake tensors are accounted like real ones, rank by rank, against the same tracker on a real
    gloo run: parameters, inputs and gradients exactly, when the forward ends and after the step.
    Gloo's worker threads release a collective's buffers a little later than the fake group does
    (it varies run to run), so on gloo the activations alive at any moment, and the peak, may be
    higher by up to two of the step's largest collective buffers, never lower."""

    def exact(detail: dict) -> dict:
        return {k: v for k, v in detail.items() if k != "act"}

    for fake, real in zip(dryruns[cid], real_runs[cid]):
        assert fake["rank"] == real["rank"]
        slack = 2 * max((r.full_bytes for r in fake["comm_records"]), default=0)
        for key in ("mem_fwd_end_detail", "mem_end_detail"):
            assert exact(fake[key]) == exact(real[key]), key
            assert 0 <= real[key]["act"] - fake[key]["act"] <= slack, key
        assert 0 <= real["peak_mem_bytes"] - fake["peak_mem_bytes"] <= slack
        assert fake["peak_mem_bytes"] > fake["mem_fwd_end_detail"]["param"] > 0


LLAMA3_8B_2L = ModelConfig(
    "llama3_8b",
    hidden=4096,
    heads=32,
    kv_heads=8,
    head_dim=128,
    ffn_hidden=14336,
    layers=2,
    rope_theta=500000.0,
)


@pytest.mark.parametrize("method,options", [("ulysses", {}), ("usp", {"ulysses_degree": 8}), ("ring", {})])
def test_paper_scale_dryrun_counts_equal_cost_model(method, options):
    """A Llama3-8B block pair at 1M tokens on 32 ranks, without allocating (rank 0)."""
    p = problem(method, 32, seq_len=1 << 20, batch_size=1, dtype="bfloat16", model=LLAMA3_8B_2L, **options)
    [result] = entry_single([Job(p, mode="dryrun")])
    assert result["comm"] == methods.for_problem(p).comm_cost(p).as_dict()
    params = sum(4096 * 128 * (32 + 8 + 8 + 32) + 3 * 4096 * 14336 + 2 * 4096 for _ in range(2)) * 2
    assert result["mem_fwd_end_detail"]["param"] >= params  # + RoPE position buffers
    assert result["peak_mem_bytes"] > 2**30  # tens of GiB of fake tensors, none allocated


def test_peak_memory_tracker_times_each_storage():
    x = torch.zeros(256)  # 1 KiB
    with PeakMemory([], [x]) as tracker:
        a = x * 2
        b = a + 1  # peak: x, a, b
        del a
        c = b * 3  # x, b, c: the same peak again, not higher
        view = c[:10]  # a view allocates nothing
        del b
    peak, detail = tracker.peak([])
    assert peak == 3 * 1024 and detail == {"param": 0, "input": 1024, "grad": 0, "act": 2048}
    assert tracker.live() == {"param": 0, "input": 1024, "grad": 0, "act": 1024} and view.numel() == 10


def test_projection_takes_the_link_each_group_crosses():
    hw = {
        "gpus": 8,
        "link_bw_GBps": 400.0,
        "latency_us": 10.0,
        "inter_node_bw_GBps": 50.0,
        "inter_node_latency_us": 20.0,
    }
    intra = Record("fwd", "all_to_all", "alltoall_base_", 8, 8 * 10**9, tuple(range(8)))
    inter = replace(intra, ranks=tuple(range(0, 64, 8)))  # one rank per node
    assert not spans_nodes(intra.ranks, 8) and spans_nodes(inter.ranks, 8)
    assert collective_seconds(intra, hw) == pytest.approx(10e-6 + 7e9 / 400e9)
    assert collective_seconds(inter, hw) == pytest.approx(20e-6 + 7e9 / 50e9)
    recv = replace(intra, kind="recv", op="recv_")
    assert comm_seconds([intra, recv, intra], hw) == pytest.approx(2 * collective_seconds(intra, hw))


def test_emulate_row_projects_compute_plus_comm(tmp_path):
    sweep = tmp_path / "s"
    res = harness_run(
        "-m",
        "mode=emulate",
        "method=ulysses,ring",
        "world_size=8",
        "workload.seq_len=256",
        "hardware=h100_nvlink_8x",
        "bench.warmup=0",
        "bench.iters=2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for i in (0, 1):
        row = json.loads((sweep / str(i) / "result.json").read_text())
        assert row["status"] == "ok" and row["mode"] == "emulate" and row["backend"] == "fake", row["error"]
        assert row["comm_detail"] == row["theory_comm_detail"]
        comm = row["projected_comm_ms"]
        calls = sum(n for phase in row["comm_calls"].values() for kind, n in phase.items() if kind != "recv")
        moved = row["comm_bytes_fwd"] + row["comm_bytes_bwd"]
        assert comm == pytest.approx(1e3 * (calls * 8e-6 + moved / 450e9))  # one node: NVLink for all
        assert row["step_time_ms"] == pytest.approx(row["compute_time_ms"] + comm)
        assert row["step_time_ms_overlap"] == pytest.approx(max(row["compute_time_ms"], comm))
        assert row["mfu"] < row["mfu_overlap"] <= row["mfu_compute"]
        assert row["mfu_dense"] > row["mfu"]  # causal: the dense count includes the masked half
        assert row["peak_mem_bytes"] > 0 and row["play_rank"] == 0


def test_rates_above_the_hardware_peak_are_flagged():
    from harness.metrics import suspect

    assert suspect({"mfu": 0.4, "mfu_compute": 0.5}) is None
    assert "mfu=1.30 exceeds" in suspect({"mfu": 1.3})
    assert "mfu_compute" in suspect({"mfu": 0.9, "mfu_compute": 1.1})  # emulate: the measured compute alone


def test_overlap_fraction_reads_the_trace():
    from harness.profiling import overlap_fraction

    def ev(name, ts, dur, cat="kernel", tid=1):
        return {"ph": "X", "name": name, "ts": ts, "dur": dur, "cat": cat, "tid": tid}

    gpu = {
        "traceEvents": [
            ev("ncclDevKernel_SendRecv", 0, 10),
            ev("flash_fwd_kernel", 5, 10),
            ev("ncclDevKernel_AllGather", 20, 10),
            ev("cpu side", 0, 100, cat="cpu_op"),
        ]
    }
    assert overlap_fraction(gpu) == pytest.approx(5 / 20)  # half of the first transfer is hidden
    cpu = {
        "traceEvents": [
            ev("RingAttentionBackward", 0, 100, "cpu_op"),
            ev("c10d::send", 10, 10, "cpu_op"),
            ev("aten::mm", 15, 10, "cpu_op", tid=2),
        ]
    }
    assert overlap_fraction(cpu) == pytest.approx(5 / 10)  # the enclosing op is not compute
    assert overlap_fraction({"traceEvents": [ev("aten::mm", 0, 5)]}) is None


def test_profile_writes_a_trace_per_rank(tmp_path):
    run = tmp_path / "run"
    res = harness_run(
        "method=ring",
        "world_size=2",
        "workload.seq_len=64",
        "bench.warmup=0",
        "bench.iters=1",
        "bench.profile=true",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    row = json.loads((run / "result.json").read_text())
    assert row["status"] == "ok" and 0 <= row["overlap_frac"] <= 1
    for rank in (0, 1):
        trace = json.loads((run / "ranks" / f"trace_rank{rank}.json").read_text())
        assert any("c10d" in e.get("name", "") for e in trace["traceEvents"])
