"""harness/capacity.py: training-state terms worked by hand, capacity against the hardware profiles."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import methods
from harness.capacity import capacity_bytes, fit_fields, one_layer_act, ram_bytes, training_state_bytes
from methods.common.config import InvalidConfig, ModelConfig, Problem, Workload

# d=8, 3 heads of 4 (no GQA), ffn 12, two layers. One layer's shapes: two norms (8,), q/k/v (12, 8),
# o (8, 12), w1/w3 (12, 8), w2 (8, 12): 8 + 8 + 3*96 + 96 + 2*96 + 96 = 688 elements, 1376 for two.
HARDWARE = Path(__file__).resolve().parents[1] / "conf" / "hardware"
SMALL = ModelConfig("small", hidden=8, heads=3, kv_heads=3, head_dim=4, ffn_hidden=12, layers=2)


def problem(method: str, dtype: str = "float32", **options) -> Problem:
    return Problem(method, SMALL, Workload(seq_len=6), 3, dtype, options)


def terms(p: Problem, optimizer: str = "adamw_mixed", recompute: str = "none") -> dict:
    return training_state_bytes(p, optimizer, recompute, methods.for_problem(p).memory_cost(p))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_adamw_replicated(dtype):
    # every rank holds all 1376 elements: 12 bytes each (fp32 master and two moments), whatever the dtype
    assert terms(problem("ulysses", dtype))["train_optimizer_bytes"] == 12 * 1376


def test_adamw_zero3_padded_shards():
    # FSDP2 shards dim 0 over 3 ranks, padded: (8,) -> 3, (12, 8) -> 4*8 = 32, (8, 12) -> 3*12 = 36;
    # per layer 3 + 3 + 3*32 + 36 + 2*32 + 36 = 238, two layers 476
    assert terms(problem("ulysses", zero3=True))["train_optimizer_bytes"] == 12 * 476
    assert terms(problem("ring", zero3=True))["train_optimizer_bytes"] == 12 * 476


def test_adamw_tensor_parallel_shards():
    # tp_sp over 3: q/k/v and w1/w3 keep 4 of 12 rows (32 each), o and w2 4 of 12 columns (32 each),
    # the norms stay whole (8 each): 7*32 + 16 = 240 per layer, 480 for two
    assert terms(problem("tp_sp"))["train_optimizer_bytes"] == 12 * 480


def test_no_optimizer_no_recompute_adds_nothing():
    p = problem("ulysses")
    mem = methods.for_problem(p).memory_cost(p)
    t = terms(p, "none", "none")
    assert (t["train_optimizer_bytes"], t["train_recompute_saved_bytes"]) == (0, 0)
    assert t["train_model_bytes"] == mem.total and t["train_act_bytes"] == mem.act


def test_full_recompute_keeps_layer_inputs_and_one_layer():
    p = replace(problem("ulysses"), model=replace(SMALL, layers=4))
    mem = methods.for_problem(p).memory_cost(p)
    t = terms(p, "none", "full")
    # each layer's input: the rank's 6/3 = 2 tokens x 8 x 4 bytes = 64 bytes, kept for 4 layers
    one = replace(p, model=replace(SMALL, layers=1))
    assert t["train_act_bytes"] == 4 * 64 + methods.for_problem(one).memory_cost(one).act
    assert 0 < t["train_recompute_saved_bytes"] == mem.act - t["train_act_bytes"]
    assert t["train_model_bytes"] == mem.total - t["train_recompute_saved_bytes"]


def test_hybrid_recomputes_its_largest_layer_kind():
    # the softmax layer of a hybrid stack saves what a one-layer llama stack saves (same shapes)
    def one_layer(kind: str, layers: int = 1) -> Problem:
        model = replace(SMALL, kind=kind, layers=layers, extra={"hybrid_period": 2})
        return Problem("ulysses", model, Workload(seq_len=96), 3, "float32")

    acts = [methods.for_problem(q).memory_cost(q).act for q in (one_layer("linear"), one_layer("llama"))]
    assert one_layer_act(one_layer("hybrid", layers=4)) == max(acts)
    assert acts[0] != acts[1]


def test_capacity_profiles():
    for name, gib in [
        ("h100_nvlink_8x", 80),
        ("h200_nvlink_8x", 141),
        ("a100_nvlink_8x", 80),
        ("a100_40gb_nvlink_8x", 40),
        ("a800_nvlink_8x", 80),
    ]:
        hardware = OmegaConf.load(HARDWARE / f"{name}.yaml")
        assert hardware.name == name and capacity_bytes(hardware, 8) == gib * 2**30
    cpu = OmegaConf.load(HARDWARE / "cpu.yaml")
    assert cpu.memory_GiB is None and capacity_bytes(cpu, 4) == ram_bytes() // 4 > 0


def test_acceptance_point_does_not_fit():
    # Ulysses, Llama3-8B (32 layers), 1M tokens on 32 ranks in bf16: 2^20 / 32 = 32768 tokens per rank
    model = ModelConfig("llama3_8b", 4096, 32, 8, 128, 14336, 32)
    p = Problem("ulysses", model, Workload(seq_len=2**20), 32, "bfloat16")
    peak = methods.for_problem(p).memory_cost(p).total
    row = fit_fields(p, OmegaConf.load(HARDWARE / "h100_nvlink_8x.yaml"), peak, None)
    assert row["fits"] is False and row["mem_capacity_bytes"] == 80 * 2**30
    assert row["mem_headroom_bytes"] == 80 * 2**30 - peak < 0
    trained = fit_fields(p, {"memory_GiB": 80}, peak, {"optimizer": "adamw_mixed", "recompute": "full"})
    # 32 layers x 218,112,000 elements (8B-class block) x 12 bytes of AdamW state on every rank
    assert trained["train_optimizer_bytes"] == 12 * 32 * 218_112_000
    assert trained["mem_required_bytes"] == (
        peak + trained["train_optimizer_bytes"] - trained["train_recompute_saved_bytes"]
    )


def test_unknown_train_choice_is_refused():
    with pytest.raises(InvalidConfig, match="train.optimizer"):
        terms(problem("ulysses"), "sgd")
    with pytest.raises(InvalidConfig, match="train.recompute"):
        terms(problem("ulysses"), "none", "selective")
