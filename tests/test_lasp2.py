"""Linear attention (chunked kernel vs naive reference), LASP-2, LASP-2H, LASP-1 and the Ulysses /
TP-SP baselines on the linear block: exact against the float64 reference (output, input grad, every
weight grad), counted bytes equal to the cost models, LASP-2's state traffic independent of L."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import methods
from methods.common.config import InvalidConfig, ModelConfig
from methods.common.linear_attention import LinearKernel, head_decays, naive_linear_attention

from .dist import CAUSAL, TEST_TIMEOUT_S, Launches, assert_method_case, problem

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

LINEAR = ModelConfig(
    "tiny_linear", hidden=64, heads=8, kv_heads=4, head_dim=8, ffn_hidden=128, layers=2, kind="linear"
)
HYBRID = replace(LINEAR, name="tiny_hybrid", kind="hybrid", extra={"hybrid_period": 2})


def decayed(m: ModelConfig) -> ModelConfig:
    return replace(m, extra={**m.extra, "decay": True})


# lengths that are multiples of the chunk (one chunk, two, eight) and that are not (a ragged last
# chunk, a single token, a sequence shorter than one chunk); the last case is long (64 chunks, the
# doubling scan's six steps) on B=1 and 2 query heads over 1 kv head, so the quadratic reference fits
@pytest.mark.parametrize(
    "length,chunk,batch,heads,kv_heads",
    [
        (50, 16, 2, 4, 2),
        (64, 64, 2, 4, 2),
        (63, 8, 2, 4, 2),
        (128, 16, 2, 4, 2),
        (130, 64, 2, 4, 2),
        (65, 64, 2, 4, 2),
        (1, 64, 2, 4, 2),
        (40, 64, 2, 4, 4),
        (4096, 64, 1, 2, 1),
    ],
)
@pytest.mark.parametrize("decay", [False, True])
def test_chunked_kernel_matches_naive(length, chunk, batch, heads, kv_heads, decay):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(batch, length, h, 8, generator=gen, dtype=torch.float64, requires_grad=True)
        for h in (heads, kv_heads, kv_heads)
    )
    d = head_decays(heads) if decay else None
    ref, got = naive_linear_attention(q, k, v, True, d), LinearKernel(d, chunk)(q, k, v, True)
    dout = torch.randn_like(ref)
    g_ref, g_got = torch.autograd.grad(ref, (q, k, v), dout), torch.autograd.grad(got, (q, k, v), dout)
    assert torch.allclose(ref, got, rtol=0, atol=1e-10 * float(ref.detach().abs().max()))
    for a, b in zip(g_ref, g_got):
        assert torch.allclose(a, b, rtol=0, atol=1e-10 * float(a.abs().max()))


LASP2, LASP1, BASELINES = {}, {}, {}
for n in (1, 2, 4):
    for name, model in (("linear", LINEAR), ("hybrid", HYBRID)):
        for causal in (True, False):
            LASP2[f"lasp2-{name}-N{n}-{CAUSAL[causal]}"] = problem("lasp2", n, causal=causal, model=model)
        LASP2[f"lasp2-{name}-N{n}-decay"] = problem("lasp2", n, model=decayed(model))
    LASP1[f"lasp1-N{n}"] = problem("lasp1", n, model=LINEAR)
    LASP1[f"lasp1-N{n}-decay"] = problem("lasp1", n, model=decayed(LINEAR))
    BASELINES[f"ulysses-linear-N{n}-decay"] = problem("ulysses", n, model=decayed(LINEAR))
    BASELINES[f"ulysses-hybrid-N{n}-bidirectional"] = problem("ulysses", n, causal=False, model=HYBRID)
    BASELINES[f"tp_sp-linear-N{n}-bidirectional"] = problem("tp_sp", n, causal=False, model=LINEAR)
    BASELINES[f"tp_sp-hybrid-N{n}-decay"] = problem("tp_sp", n, model=decayed(HYBRID))
LASP2["lasp2-linear-N4-L64"] = problem("lasp2", 4, seq_len=64, model=LINEAR)
# 16 heads, where RetNet's decay table (the default) and the `scaled` one differ
LINEAR16 = replace(LINEAR, name="tiny_linear_16h", heads=16, head_dim=4)
for rule in ("retnet", "scaled"):
    model = replace(LINEAR16, extra={"decay": True, "decay_rule": rule})
    LASP2[f"lasp2-linear16h-N2-decay-{rule}"] = problem("lasp2", 2, model=model)
LASP1["lasp1-linear16h-N2-decay"] = problem("lasp1", 2, model=decayed(LINEAR16))
CASES = LASP2 | LASP1 | BASELINES


@pytest.fixture(scope="module")
def outcomes() -> Launches:
    return Launches(CASES)


@pytest.mark.parametrize("case", LASP2)
def test_lasp2_exact_with_counted_bytes_of_its_model(outcomes, case):
    assert_method_case(outcomes[case], CASES[case])


@pytest.mark.parametrize("case", LASP1)
def test_lasp1_exact_with_counted_bytes_of_its_model(outcomes, case):
    assert_method_case(outcomes[case], CASES[case])


@pytest.mark.parametrize("case", BASELINES)
def test_ulysses_and_tp_sp_on_linear_blocks_exact_with_counted_bytes_of_their_models(outcomes, case):
    assert_method_case(outcomes[case], CASES[case])


def test_lasp2_state_traffic_does_not_grow_with_sequence_length(outcomes):
    short, long = outcomes["lasp2-linear-N4-causal"][0]["comm"], outcomes["lasp2-linear-N4-L64"][0]["comm"]
    assert (
        CASES["lasp2-linear-N4-L64"].workload.seq_len == 2 * CASES["lasp2-linear-N4-causal"].workload.seq_len
    )
    assert short["fwd"] == long["fwd"] and short["fwd"]["all_gather"] > 0


def test_lasp1_passes_one_state_per_direction(outcomes):
    calls = [r["comm_calls"] for r in outcomes["lasp1-N4"]]
    layers = LINEAR.layers
    assert [c["fwd"].get("send", 0) for c in calls] == [
        layers,
        layers,
        layers,
        0,
    ]  # the last rank ends the chain
    assert [c["bwd"].get("send", 0) for c in calls] == [0, layers, layers, layers]


@pytest.mark.parametrize(
    "method,model,causal,message",
    [
        ("lasp2", decayed(LINEAR), False, "decay is defined for causal linear attention only"),
        ("lasp1", LINEAR, False, "lasp1 is causal only"),
    ],
)
def test_refused_configurations(method, model, causal, message):
    p = problem(method, 2, causal=causal, model=model)
    with pytest.raises(InvalidConfig, match=message):
        methods.for_problem(p).validate(p)
