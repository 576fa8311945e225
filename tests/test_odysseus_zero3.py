"""Odysseus and ZeRO-3 (FSDP2) for the replicated-weight methods: exact against the float64
reference with gradients unsharded for comparison, counted bytes (FSDP2's padding included) equal
to the cost models."""
from __future__ import annotations

import pytest

import methods
from methods.common.config import InvalidConfig, ModelConfig

from .dist import method_tests, problem

# 3 ranks: ffn 100 and the GQA projections do not split evenly, so FSDP2 pads the shards
ODD = ModelConfig("odd", hidden=48, heads=6, kv_heads=3, head_dim=8, ffn_hidden=100, layers=2)

CASES = {}
for n in (1, 2, 4):
    for causal in (True, False):
        CASES[f"odysseus-N{n}-causal{int(causal)}"] = problem("odysseus", n, causal=causal)
CASES["odysseus-N3-padded"] = problem("odysseus", 3, model=ODD, seq_len=24)
for n in (2, 4):
    CASES[f"ulysses-zero3-N{n}"] = problem("ulysses", n, zero3=True)
CASES["ulysses-zero3-N4-noncausal"] = problem("ulysses", 4, causal=False, zero3=True)
CASES["ring-zero3-N4-zigzag"] = problem("ring", 4, layout="zigzag", zero3=True)
CASES["ring-zero3-N3-padded"] = problem("ring", 3, model=ODD, seq_len=24, layout="zigzag", zero3=True)
CASES["usp-zero3-2x2"] = problem("usp", 4, ulysses_degree=2, ring_degree=2, zero3=True)
CASES["allgather_cp-zero3-N2"] = problem("allgather_cp", 2, zero3=True)

outcomes, test_exact_against_reference, test_counted_bytes_equal_cost_model = method_tests(CASES)


@pytest.mark.parametrize("case", [c for c in CASES if "zero3" in c])
def test_zero3_gathers_parameters_in_forward_and_reduce_scatters_gradients(outcomes, case):
    calls = outcomes[case][0]["comm_calls"]
    units = CASES[case].model.layers  # one FSDP2 unit per block
    per_layer_kv = units if CASES[case].method == "allgather_cp" else 0  # its own K/V gather and dK/dV scatter
    assert calls["fwd"]["all_gather"] == units + per_layer_kv
    assert calls["bwd"]["reduce_scatter"] == units + per_layer_kv
    assert "all_reduce" not in calls["bwd"]  # the reduce-scatter is the gradient sync


def test_odysseus_moves_no_mlp_activations(outcomes):
    # attention: AG + RS forward, 2 AG + RS backward; the MLP only gathers weights (one unit per layer)
    calls = outcomes["odysseus-N4-causal1"][0]["comm_calls"]
    layers = CASES["odysseus-N4-causal1"].model.layers
    assert calls["fwd"] == {"all_gather": 2 * layers, "reduce_scatter": layers}
    assert calls["bwd"] == {"all_gather": 3 * layers, "reduce_scatter": 2 * layers, "all_reduce": 1}


def test_tp_sp_refuses_zero3():
    with pytest.raises(InvalidConfig, match=r"unknown option\(s\) method.zero3: method 'tp_sp' accepts no options"):
        problem("tp_sp", 2, zero3=True)  # TP-SP's weights are already sharded: its options have no zero3
