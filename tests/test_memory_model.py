"""Every method's memory model equals the dryrun's tensor-level measurement, byte for byte: param,
input and act (saved activations + output) when the forward ends, grad (parameter gradients + input
gradient) after the step. Tiny shapes at world sizes 1, 2, 4 and 8, causal and not, float32 and
bfloat16, GQA, ZeRO-3, every rank; the video block's variants (dsp; ulysses, ring, tp_sp on frames)
with padded DSP shards, a single video, no temporal RoPE, adaLN and qk-norm; and one paper-scale
point each for ulysses, usp and ring. DSP's ranks hold unequal spatial shards when N does not divide S:
each rank equals its own model
 (`methods.dsp.rank_memory`), and the registered one is the busiest rank. All
dryruns of the file run in one in-process `entry_single` call (fake tensors, fake process group)."""

from __future__ import annotations

from dataclasses import replace

import pytest

import methods
from harness.worker import Job, entry_single
from methods.common.config import ModelConfig, Problem, Workload
from methods.dsp import rank_memory

from .dist import TINY, problem

LINEAR = replace(TINY, name="tiny_linear", kind="linear")
DECAY = replace(LINEAR, name="tiny_linear_decay", extra={"decay": True})
HYBRID = replace(TINY, name="tiny_hybrid", kind="hybrid", extra={"hybrid_period": 2})
HYBRID_DECAY = replace(HYBRID, name="tiny_hybrid_decay", extra={"hybrid_period": 2, "decay": True})
LLAMA3_8B = ModelConfig(
    "llama3_8b",
    hidden=4096,
    heads=32,
    kv_heads=8,
    head_dim=128,
    ffn_hidden=14336,
    layers=2,
    rope_theta=500000.0,
)
F32, BF16 = "float32", "bfloat16"
# 8 query heads over 4 kv heads: Ulysses at N=8 repeats kv heads, TP-SP stops at N=4
VIDEO = ModelConfig(
    "tiny_video", hidden=32, heads=8, kv_heads=4, head_dim=4, ffn_hidden=64, layers=2, kind="video"
)
VIDEO_NO_ROPE = replace(VIDEO, name="tiny_video_no_rope", extra={"temporal_rope": False})
# OpenSora/DiT conventions (non-affine LayerNorms) with adaLN modulation and qk-norm
VIDEO_DIT = replace(VIDEO, name="tiny_video_dit", extra={"adaln": True, "qk_norm": True})
VIDEO_DIT_NO_ROPE = replace(
    VIDEO, name="tiny_video_dit_no_rope", extra={"adaln": True, "qk_norm": True, "temporal_rope": False}
)


def video(
    method: str,
    world_size: int,
    dtype: str,
    frames: int = 8,
    spatial: int = 8,
    batch_size: int = 2,
    model: ModelConfig = VIDEO,
    **options,
) -> Problem:
    workload = Workload("video", batch_size=batch_size, frames=frames, spatial=spatial, causal=False)
    return Problem(method, model, workload, world_size, dtype, options)


# Each method's cases spread world size, dtype, causality and options over a few runs (every rank of
# each is measured, so the full product would cost minutes on a 2-core machine).
CASES: dict[str, dict[str, Problem]] = {
    "ulysses": {
        "N1-f32-causal": problem("ulysses", 1, dtype=F32),
        "N2-bf16-bidir-zero3": problem("ulysses", 2, dtype=BF16, causal=False, zero3=True),
        "N4-f32-causal": problem("ulysses", 4, dtype=F32),
        "N8-bf16-kv-repeated": problem("ulysses", 8, dtype=BF16),
        # a 160-token sequence is three linear-kernel chunks (64, 64, 32)
        "hybrid-decay-N2-f32-L160": problem("ulysses", 2, dtype=F32, seq_len=160, model=HYBRID_DECAY),
        "linear-N4-bf16-bidir": problem("ulysses", 4, dtype=BF16, causal=False, model=LINEAR),
        # on one rank the reshapes around spatial Ulysses still copy Wo's input
        "video-all-N1-f32": video("ulysses", 1, F32, video_attention="all"),
        "video-N2-bf16": video("ulysses", 2, BF16),
        "video-all-N4-f32-B1": video("ulysses", 4, F32, batch_size=1, video_attention="all"),
        "video-N8-bf16-kv-repeated": video("ulysses", 8, BF16),
        "video-dit-N2-f32": video("ulysses", 2, F32, model=VIDEO_DIT),
        "video-dit-all-N2-bf16-no-rope": video(
            "ulysses", 2, BF16, model=VIDEO_DIT_NO_ROPE, video_attention="all"
        ),
    },
    "ring": {
        "N1-bf16": problem("ring", 1, dtype=BF16),
        "N2-zigzag-f32-zero3": problem("ring", 2, dtype=F32, zero3=True),
        "N4-stripe-bf16": problem("ring", 4, dtype=BF16, layout="stripe"),
        "N4-basic-f32-bidir": problem("ring", 4, dtype=F32, causal=False, layout="basic"),
        "video-N1-bf16": video("ring", 1, BF16),
        "video-N2-f32-no-rope": video("ring", 2, F32, model=VIDEO_NO_ROPE),
        "video-N4-bf16-B1": video("ring", 4, BF16, batch_size=1),
        "video-dit-N2-bf16": video("ring", 2, BF16, model=VIDEO_DIT),
    },
    "usp": {
        "N4-2x2-f32": problem("usp", 4, dtype=F32),
        "N4-ring-inner-basic-bf16-bidir": problem(
            "usp", 4, dtype=BF16, causal=False, layout="basic", placement="ring_inner", zero3=True
        ),
        "N8-8x1-bf16-kv-repeated": problem("usp", 8, dtype=BF16, ulysses_degree=8),
    },
    "allgather_cp": {
        "N1-f32": problem("allgather_cp", 1, dtype=F32),
        "N2-contiguous-bf16-bidir": problem("allgather_cp", 2, dtype=BF16, causal=False, layout="contiguous"),
        "N4-zigzag-f32-zero3": problem("allgather_cp", 4, dtype=F32, zero3=True),
    },
    "tp_sp": {
        "N1-bf16": problem("tp_sp", 1, dtype=BF16),
        "N2-f32-bidir": problem("tp_sp", 2, dtype=F32, causal=False),
        "N4-bf16": problem("tp_sp", 4, dtype=BF16),
        "hybrid-decay-N2-bf16-L160": problem("tp_sp", 2, dtype=BF16, seq_len=160, model=HYBRID_DECAY),
        "video-N1-f32": video("tp_sp", 1, F32),
        # one video, no temporal RoPE: q is a t-major view, the kernel's output follows it, and Wo's
        # input needs no copy
        "video-N2-bf16-B1-no-rope": video("tp_sp", 2, BF16, batch_size=1, model=VIDEO_NO_ROPE),
        # one frame: the temporal output goes back to [B, T*S] without a copy
        "video-N4-f32-T1": video("tp_sp", 4, F32, frames=1),
        # qk-norm makes q and k new tensors: the kernel no longer keeps views of the QKV output
        "video-dit-N2-f32-no-rope": video("tp_sp", 2, F32, model=VIDEO_DIT_NO_ROPE),
        "video-dit-N2-bf16-B1": video("tp_sp", 2, BF16, batch_size=1, model=VIDEO_DIT),
    },
    "dsp": {
        "N1-f32": video("dsp", 1, F32),
        # a single video: the temporal norm keeps the switch's whole [B, T_pad, S_pad, C] buffer
        "N2-bf16-B1-T3-padded-frames": video("dsp", 2, BF16, frames=3, batch_size=1),
        "N4-f32-T6-padded-frames-no-rope": video("dsp", 4, F32, frames=6, model=VIDEO_NO_ROPE),
        "N4-bf16-T5-S6-padded": video("dsp", 4, BF16, frames=5, spatial=6),
        # one frame padded to 8, shards of 2 and 1: a 1-token shard's norm keeps the whole switch
        # buffer, which makes the last rank the busiest
        "N8-f32-T1-S10-padded": video("dsp", 8, F32, frames=1, spatial=10),
        "dit-N2-bf16": video("dsp", 2, BF16, model=VIDEO_DIT),
        "dit-N4-f32-T5-S6-padded-B1": video(
            "dsp", 4, F32, frames=5, spatial=6, batch_size=1, model=VIDEO_DIT
        ),
    },
    "odysseus": {
        "N2-bf16": problem("odysseus", 2, dtype=BF16),
        "N4-f32-bidir": problem("odysseus", 4, dtype=F32, causal=False),
    },
    "lasp2": {
        "hybrid-N1-f32": problem("lasp2", 1, dtype=F32, model=HYBRID),
        "linear-N2-bf16-bidir": problem("lasp2", 2, dtype=BF16, causal=False, model=LINEAR),
        "decay-N4-f32-zero3": problem("lasp2", 4, dtype=F32, model=DECAY, zero3=True),
    },
    "lasp1": {
        "decay-N2-bf16": problem("lasp1", 2, dtype=BF16, model=DECAY),
        "linear-N4-f32": problem("lasp1", 4, dtype=F32, model=LINEAR),
    },
}

# One rank of each paper-scale point: these methods' ranks hold equal shapes.
PAPER = {
    m: Problem(m, LLAMA3_8B, Workload(batch_size=1, seq_len=1 << 20, causal=True), 32, BF16)
    for m in ("ulysses", "usp", "ring")
}

IDS = [(m, c) for m, cases in CASES.items() for c in cases]


def _measured(result: dict) -> dict[str, int]:
    fwd_end, end = result["mem_fwd_end_detail"], result["mem_end_detail"]
    return {"param": fwd_end["param"], "input": fwd_end["input"], "act": fwd_end["act"], "grad": end["grad"]}


@pytest.fixture(scope="module")
def measured() -> dict[tuple[str, str], list[dict[str, int]]]:
    """{(method, case): [per-rank measurement]} and {("paper", method): [rank 0]}, from one call."""
    keys, jobs = [], []
    for method, case in IDS:
        p = CASES[method][case]
        for rank in range(p.world_size):
            keys.append((method, case))
            jobs.append(Job(p, mode="dryrun", play_rank=rank))
    for method, p in PAPER.items():
        keys.append(("paper", method))
        jobs.append(Job(p, mode="dryrun", play_rank=0))
    out: dict[tuple[str, str], list[dict[str, int]]] = {}
    for key, result in zip(keys, entry_single(jobs)):
        out.setdefault(key, []).append(_measured(result))
    return out


def test_every_variant_has_a_memory_model():
    for name, variants in methods.REGISTRY.items():
        for variant in variants:
            assert variant.memory_cost is not None, (
                f"{name} ({', '.join(variant.model_kinds)}) has no memory_cost"
            )


@pytest.mark.parametrize("method,case", IDS, ids=[f"{m}-{c}" for m, c in IDS])
def test_memory_model_equals_dryrun(measured, method, case):
    p = CASES[method][case]
    model = methods.for_problem(p).memory_cost(p).as_dict()
    ranks = measured[(method, case)]
    own = [rank_memory(p, r).as_dict() if method == "dsp" else model for r in range(p.world_size)]
    for rank, (got, expected) in enumerate(zip(ranks, own)):
        assert got == expected, (rank, got, expected)
    assert max(ranks, key=lambda got: sum(got.values())) == model  # the busiest rank


@pytest.mark.parametrize("method", list(PAPER))
def test_memory_model_equals_dryrun_at_paper_scale(measured, method):
    p = PAPER[method]
    assert measured[("paper", method)] == [methods.for_problem(p).memory_cost(p).as_dict()]
