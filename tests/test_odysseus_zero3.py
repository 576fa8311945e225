"""Odysseus and ZeRO-3 (FSDP2) for the replicated-weight methods: exact against the float64
reference with gradients unsharded for comparison, counted bytes (FSDP2's padding included) equal
to the cost models."""

from __future__ import annotations

import pytest

from methods.common.config import InvalidConfig, ModelConfig

from .dist import CAUSAL, TEST_TIMEOUT_S, Launches, assert_method_case, problem

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

# 3 ranks: ffn 100 and the GQA projections do not split evenly, so FSDP2 pads the shards
ODD = ModelConfig("odd", hidden=48, heads=6, kv_heads=3, head_dim=8, ffn_hidden=100, layers=2)

ODYSSEUS = {}
for n in (1, 2, 4):
    for causal in (True, False):
        ODYSSEUS[f"odysseus-N{n}-{CAUSAL[causal]}"] = problem("odysseus", n, causal=causal)
ODYSSEUS["odysseus-N3-padded"] = problem("odysseus", 3, model=ODD, seq_len=24)
ZERO3 = {}
for n in (2, 4):
    ZERO3[f"ulysses-zero3-N{n}"] = problem("ulysses", n, zero3=True)
ZERO3["ulysses-zero3-N4-noncausal"] = problem("ulysses", 4, causal=False, zero3=True)
ZERO3["ring-zero3-N4-zigzag"] = problem("ring", 4, layout="zigzag", zero3=True)
ZERO3["ring-zero3-N3-padded"] = problem("ring", 3, model=ODD, seq_len=24, layout="zigzag", zero3=True)
ZERO3["usp-zero3-2x2"] = problem("usp", 4, ulysses_degree=2, ring_degree=2, zero3=True)
ZERO3["allgather_cp-zero3-N2"] = problem("allgather_cp", 2, zero3=True)
CASES = ODYSSEUS | ZERO3


@pytest.fixture(scope="module")
def outcomes() -> Launches:
    return Launches(CASES)


@pytest.mark.parametrize("case", ODYSSEUS)
def test_odysseus_exact_with_counted_bytes_of_its_model(outcomes, case):
    assert_method_case(outcomes[case], CASES[case])


@pytest.mark.parametrize("case", ZERO3)
def test_zero3_exact_with_counted_bytes_of_its_model(outcomes, case):
    assert_method_case(outcomes[case], CASES[case])


@pytest.mark.parametrize("case", ZERO3)
def test_zero3_gathers_parameters_in_forward_and_reduce_scatters_gradients(outcomes, case):
    calls = outcomes[case][0]["comm_calls"]
    units = CASES[case].model.layers  # one FSDP2 unit per block
    per_layer_kv = (
        units if CASES[case].method == "allgather_cp" else 0
    )  # its own K/V gather and dK/dV scatter
    assert calls["fwd"]["all_gather"] == units + per_layer_kv
    assert calls["bwd"]["reduce_scatter"] == units + per_layer_kv
    assert "all_reduce" not in calls["bwd"]  # the reduce-scatter is the gradient sync


def test_odysseus_moves_no_mlp_activations(outcomes):
    # attention: AG + RS forward, 2 AG + RS backward; the MLP only gathers weights (one unit per layer)
    calls = outcomes["odysseus-N4-causal"][0]["comm_calls"]
    layers = CASES["odysseus-N4-causal"].model.layers
    assert calls["fwd"] == {"all_gather": 2 * layers, "reduce_scatter": layers}
    assert calls["bwd"] == {"all_gather": 3 * layers, "reduce_scatter": 2 * layers, "all_reduce": 1}


def test_tp_sp_refuses_zero3():
    with pytest.raises(
        InvalidConfig, match=r"unknown option\(s\) method.zero3: method 'tp_sp' accepts no options"
    ):
        problem("tp_sp", 2, zero3=True)  # TP-SP's weights are already sharded: its options have no zero3
