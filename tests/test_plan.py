"""The planner (harness/plan.py): its predictions of bytes (by kind and by link) and memory equal a
dryrun's exactly on a random sample of planned configurations, and its answers beside the papers'
published best configurations and crossovers."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness.plan import candidates, comm_by_link, dryrun_check, plan_table, problem_of, profile_for, run_plan
from methods.common.config import ModelConfig, Problem, Workload
from methods.common.options import MethodOptions

from .dist import TINY

# nodes of two ranks: every world here spans nodes, and USP groups sit inside or across them
HARDWARE = OmegaConf.create(
    {
        "name": "test",
        "gpus": 2,
        "peak_tflops": {"float32": 1.0, "bfloat16": 1.0},
        "link_bw_GBps": 100.0,
        "latency_us": 5.0,
        "inter_node_bw_GBps": 10.0,
        "inter_node_latency_us": 10.0,
    }
)
LINEAR = replace(TINY, name="tiny_linear", kind="linear")
HYBRID = replace(TINY, name="tiny_hybrid", kind="hybrid", extra={"hybrid_period": 2})
VIDEO = ModelConfig(
    "tiny_video", hidden=32, heads=4, kv_heads=4, head_dim=8, ffn_hidden=64, layers=2, kind="video"
)
LLAMA3_8B_1L = ModelConfig(
    "llama3_8b",
    hidden=4096,
    heads=32,
    kv_heads=8,
    head_dim=128,
    ffn_hidden=14336,
    layers=1,
    rope_theta=500000.0,
)


def base(model: ModelConfig, workload: Workload, world_size: int, dtype: str) -> Problem:
    """A problem for the planner: each candidate sets the method and its options."""
    return Problem("", model, workload, world_size, dtype, MethodOptions())


LLM = Workload(batch_size=2, seq_len=32)
BASES = [
    base(TINY, LLM, 4, "float32"),
    base(TINY, replace(LLM, causal=False), 4, "bfloat16"),
    base(LINEAR, LLM, 4, "float32"),
    base(HYBRID, LLM, 4, "float32"),
    base(VIDEO, Workload("video", batch_size=1, frames=4, spatial=12, causal=False), 4, "float32"),
    base(VIDEO, Workload("video", batch_size=1, frames=4, spatial=12, causal=False), 8, "float32"),
    base(LLAMA3_8B_1L, Workload(batch_size=1, seq_len=1 << 15), 8, "bfloat16"),
]
CONF = Path(__file__).resolve().parent.parent / "conf"
PER_METHOD = 3  # configurations per method and base


@pytest.fixture(scope="module")
def confirmed() -> list[dict]:
    """A seeded random sample of the planned configurations of every base, dryrun in one process."""
    rng = random.Random(0)
    sample = []
    for base in BASES:  # stratified: USP's many splits would otherwise crowd the other methods out
        by_method: dict[str, list[Problem]] = {}
        for p in candidates(base)[0]:
            by_method.setdefault(p.method, []).append(p)
        sample += [p for group in by_method.values() for p in rng.sample(group, min(PER_METHOD, len(group)))]
    return dryrun_check(sample, HARDWARE)


def test_sample_spans_methods_and_scales(confirmed):
    labels = {c["label"].split()[0] for c in confirmed}
    assert len(confirmed) >= 50 and len(labels) >= 8, labels


def test_predicted_bytes_equal_dryrun(confirmed):
    bad = [(c["label"], c["dryrun_comm"], c["predicted_comm"]) for c in confirmed if not c["comm_equal"]]
    assert not bad


def test_predicted_memory_equals_dryrun(confirmed):
    bad = [
        (c["label"], c["dryrun_memory"], c["predicted_memory"]) for c in confirmed if not c["memory_equal"]
    ]
    assert not bad


def test_predicted_bytes_by_link_equal_dryrun(confirmed):
    assert not [c["label"] for c in confirmed if not c["links_equal"]]


# ---- the planner beside the papers (closed-form, milliseconds each) --------------------------------


def plan_for(*overrides: str):
    """The ranked table of conf/plan.yaml with `overrides`, with the documented default efficiencies."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("plan", overrides=["plan.calibration=none", *overrides])
    table, rejected, _, _ = plan_table(problem_of(cfg), cfg.hardware, profile_for(cfg), None)
    return table, rejected


def row(table, label: str):
    [match] = table.index[table["label"] == label]
    return table.loc[match]


def test_odysseus_crossover_at_1_8_ffn():
    """Odysseus README: TP-SP moves fewer bytes below B*L = 1.8 x ffn_hidden, Odysseus above (comm only).
    Llama2-7B (ffn 11008) on 8 ranks: the exact models cross between 1.77 and 1.81 x ffn."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("plan", overrides=["model=llama2_7b", "world_size=8"])
    base = problem_of(cfg)

    def step_bytes(method: str, length: int) -> float:
        p = replace(base, method=method, workload=replace(base.workload, seq_len=length))
        return comm_by_link(p, cfg.hardware)["intra_bytes"]

    below, above = 19456, 19968  # 1.767 and 1.814 x 11008
    assert step_bytes("tp_sp", below) < step_bytes("odysseus", below)
    assert step_bytes("tp_sp", above) > step_bytes("odysseus", above)


@pytest.mark.parametrize("seq_len", [65536, 81920])
def test_usp_ulysses_inside_ring_across_two_nodes(seq_len):
    """USP Table 6 (Llama3-8B, two 8-GPU nodes): Ulysses inside a node and Ring across (ulysses 8 x
    ring 2) beats the reverse placement of the same degrees, and beats Ring inside with Ulysses across
    (ulysses 2 x ring 8, ring groups on a node); pure Ring (1 x 16) is the slowest split."""
    table, _ = plan_for(
        "model=llama3_8b", "hardware=a100_nvlink_8x", "world_size=16", f"workload.seq_len={seq_len}"
    )
    best = row(table, "usp u8xr2 zigzag ulysses_inner")["step_ms"]
    assert best < row(table, "usp u8xr2 zigzag ring_inner")["step_ms"]
    assert best < row(table, "usp u2xr8 zigzag ring_inner")["step_ms"]
    usp = table[(table["method"] == "usp") & ~table["label"].str.contains("zero3")]
    assert usp["step_ms"].idxmax() in usp.index[usp["label"].str.startswith("usp u1xr16")]


def test_dsp_ahead_of_its_three_baselines_at_half_a_million_tokens():
    """DSP (720M, T=128 x S=4096 = 0.5M tokens, SP size 2): DSP moves the fewest bytes and is fastest,
    then Ulysses (temporal), Ring, Megatron-SP, as the paper orders them."""
    table, _ = plan_for(
        "model=dsp_720m", "workload=video", "world_size=2", "workload.frames=128", "workload.spatial=4096"
    )
    order = ["dsp", "ulysses temporal", "ring", "tp_sp"]
    rows = [row(table, label) for label in order]
    assert [r["step_ms"] for r in rows] == sorted(r["step_ms"] for r in rows)
    moved = [r["comm_fwd_bytes"] + r["comm_bwd_bytes"] for r in rows]
    assert moved == sorted(moved)


def test_lasp2_has_two_communication_steps_per_layer_lasp1_two_per_hop():
    """LASP-2: one all-gather of the states forward and one backward per layer (2 steps) where LASP-1
    passes the state rank to rank, 2(W-1) dependent steps; per rank LASP-2 moves W-1 times LASP-1's
    bytes (the paper's "W-1 less traffic" counts steps), and is faster at W = 64."""
    world = 64
    table, _ = plan_for("model=linear_llama3_1b", f"world_size={world}", "workload.seq_len=524288")
    lasp1, lasp2 = row(table, "lasp1"), row(table, "lasp2")
    assert (lasp1["comm_steps_per_layer"], lasp2["comm_steps_per_layer"]) == (2 * (world - 1), 2)
    sync = lasp1["comm_detail"]["bwd"]["all_reduce"]  # the same gradient all-reduce in both
    assert lasp2["comm_detail"]["bwd"]["all_reduce"] == sync
    assert lasp2["comm_fwd_bytes"] == (world - 1) * lasp1["comm_fwd_bytes"]
    assert lasp2["step_ms"] < lasp1["step_ms"]


def test_plan_command_writes_the_table_and_confirms_its_top(tmp_path, capsys):
    """`python -m harness.plan` in-process on the tiny model over 8 ranks: every valid configuration
    twice (recompute off/on) in plan.csv and plan.parquet, fastest that fits first, the rejections
    counted by cause, the winner explained, and `--confirm 2` dryruns agreeing."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(
            "plan",
            overrides=[
                "model=tiny",
                "world_size=8",
                "dtype=float32",
                "hardware=h100_nvlink_8x",
                "workload.seq_len=64",
                "plan.calibration=none",
                "plan.confirm=2",
            ],
        )
    table = run_plan(cfg, tmp_path)
    out = capsys.readouterr().out
    valid, rejected, _ = candidates(problem_of(cfg))
    assert len(table) == 2 * len(valid) == len(pd.read_csv(tmp_path / "plan.csv"))
    assert len(pd.read_parquet(tmp_path / "plan.parquet")) == len(table)
    fitting = table[table["fits"]]
    assert fitting["step_ms"].is_monotonic_increasing and table.index[table["fits"]][0] == 0
    assert f"{sum(rejected.values())} configurations rejected by validation" in out
    assert "kv_heads=4 is not divisible by the TP degree 8" in out  # tp_sp and odysseus at 8 ranks
    assert f"{table.loc[0, 'label']} is predicted fastest" in out
    assert out.count("bytes equal, memory equal, bytes by link equal") == 2
