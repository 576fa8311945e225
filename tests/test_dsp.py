"""DSP and the embedded baselines (Ulysses temporal-only and on every attention, Ring on the frames,
Megatron-SP) on the spatial-temporal block: exact against the float64 reference, counted bytes equal
to the cost models (also with adaLN modulation and qk-norm on, at world sizes 1, 2 and 4), and the
paper's per-layer table in exact per-rank form."""

from __future__ import annotations

from dataclasses import replace

import pytest

import methods
from harness.cost_table import dsp_table
from methods.common.config import InvalidConfig, ModelConfig, Problem, Workload

from .dist import TEST_TIMEOUT_S, Launches, assert_method_case

# affine LayerNorms (torch's default), so that their weight gradients are checked too
VIDEO = ModelConfig(
    "tiny_video",
    hidden=32,
    heads=4,
    kv_heads=4,
    head_dim=8,
    ffn_hidden=128,
    layers=2,
    kind="video",
    extra={"temporal_rope": True, "norm_affine": True},
)
# OpenSora/DiT conventions: non-affine LayerNorms at eps 1e-6, adaLN modulation, qk-norm
DIT = replace(
    VIDEO, name="tiny_video_dit", norm_eps=1e-6, extra={"temporal_rope": True, "adaln": True, "qk_norm": True}
)


def video(
    method: str,
    n: int,
    frames: int = 8,
    spatial: int = 8,
    batch: int = 2,
    model: ModelConfig = VIDEO,
    **options,
) -> Problem:
    return Problem(
        method,
        model,
        Workload("video", batch_size=batch, frames=frames, spatial=spatial, causal=False),
        n,
        "float64",
        options,
    )


CASES = {}
for n in (2, 4):
    CASES[f"dsp-N{n}"] = video("dsp", n)
    CASES[f"ulysses-temporal-N{n}"] = video("ulysses", n)
    CASES[f"ulysses-all-N{n}"] = video("ulysses", n, video_attention="all")
    CASES[f"ring-N{n}"] = video("ring", n)
    CASES[f"tp_sp-N{n}"] = video("tp_sp", n)
for n in (1, 2, 4):  # adaLN and qk-norm on every video method
    CASES[f"dsp-dit-N{n}"] = video("dsp", n, model=DIT)
    CASES[f"ulysses-temporal-dit-N{n}"] = video("ulysses", n, model=DIT)
    CASES[f"ulysses-all-dit-N{n}"] = video("ulysses", n, model=DIT, video_attention="all")
    CASES[f"ring-dit-N{n}"] = video("ring", n, model=DIT)
    CASES[f"tp_sp-dit-N{n}"] = video("tp_sp", n, model=DIT)
CASES["dsp-dit-N4-T3-S6-padded-B1"] = video("dsp", 4, frames=3, spatial=6, batch=1, model=DIT)
CASES["dsp-N4-T6-padded"] = video("dsp", 4, frames=6)
CASES["dsp-N4-T3-fewer-frames-than-ranks"] = video("dsp", 4, frames=3, batch=1)
CASES["dsp-N4-S6-padded-spatial"] = video("dsp", 4, frames=5, spatial=6)


@pytest.fixture(scope="module")
def outcomes() -> Launches:
    return Launches(CASES)


@pytest.mark.timeout(TEST_TIMEOUT_S)
@pytest.mark.parametrize("case", CASES)
def test_video_method_exact_with_counted_bytes_of_its_model(outcomes, case):
    assert_method_case(outcomes[case], CASES[case])


@pytest.mark.parametrize("n", [2, 4])
def test_dsp_forward_bytes_are_2_n_minus_1_over_n_squared_m(outcomes, n):
    p = CASES[f"dsp-N{n}"]
    m_bytes = p.workload.batch_size * p.workload.frames * p.workload.spatial * VIDEO.hidden * 8
    assert (
        outcomes[f"dsp-N{n}"][0]["comm"]["fwd"]["all_to_all"] == 2 * (n - 1) * m_bytes // n**2 * VIDEO.layers
    )


@pytest.mark.parametrize("n", [2, 4, 8])
def test_paper_table_in_exact_per_rank_form(n):
    # the paper's 8M, 4M/N, 2M, 2M/N with the exact (N-1)/N factors of a per-rank count (MHA, T and S
    # divisible)

    mha8 = ModelConfig(
        "mha8", hidden=32, heads=8, kv_heads=8, head_dim=4, ffn_hidden=128, layers=2, kind="video"
    )
    table = dsp_table(
        Problem("dsp", mha8, Workload("video", batch_size=1, frames=16, spatial=64), n, "bfloat16")
    )
    got = dict(zip(table.method, table.fwd_x_M))
    assert got == pytest.approx(
        {
            "Megatron-SP": 8 * (n - 1) / n,
            "DeepSpeed-Ulysses": 4 * (n - 1) / n**2,
            "Ring attention": 2 * (n - 1) / n,
            "DSP": 2 * (n - 1) / n**2,
        },
        rel=1e-12,
    )


def test_refused_video_configurations():
    for p, message in (
        (video("dsp", 4, spatial=3), "spatial=3 is below world_size=4"),
        (video("ulysses", 4, frames=6), "frames=6 is not divisible"),
        (video("dsp", 2, frames=0), "frames >= 1"),
    ):
        with pytest.raises(InvalidConfig, match=message):
            methods.for_problem(p).validate(p)


@pytest.mark.parametrize(
    ("method", "option"),
    [("ring", {"zero3": True}), ("ring", {"layout": "stripe"}), ("ulysses", {"zero3": True})],
)
def test_video_variants_refuse_the_llm_options_they_do_not_use(method, option):
    p = video(method, 2, **option)
    with pytest.raises(InvalidConfig, match=f"does not use method.{next(iter(option))}"):
        methods.for_problem(p)


def test_rows_record_none_for_an_option_the_video_variant_does_not_use():
    assert methods.resolve_options(video("ring", 2)) == {"zero3": None, "layout": None}
    assert methods.resolve_options(video("ulysses", 2)) == {"zero3": None, "video_attention": "temporal"}
