"""Ulysses and TP-SP: exact against the float64 reference (output, input grad, every weight grad),
counted bytes equal to the cost model, gradients kept in the run's dtype."""
from __future__ import annotations

import pytest

from methods.common.config import ModelConfig

from .dist import TINY, method_tests, problem

MHA = ModelConfig("tiny_mha", hidden=64, heads=8, kv_heads=8, head_dim=8, ffn_hidden=128, layers=2)
ONE_KV = ModelConfig("tiny_mqa", hidden=32, heads=4, kv_heads=1, head_dim=8, ffn_hidden=64, layers=1)

CASES = {}
for n in (1, 2, 4, 8):
    for causal in (True, False):
        CASES[f"ulysses-N{n}-causal{int(causal)}-gqa"] = problem("ulysses", n, causal=causal)
        tp_model = TINY if TINY.kv_heads % n == 0 else MHA  # TP-SP needs kv_heads % N == 0
        CASES[f"tp_sp-N{n}-causal{int(causal)}-{tp_model.name}"] = problem("tp_sp", n, causal=causal, model=tp_model)
# shapes that move the cost model: one head per rank, MQA repeated to every rank, odd batch, 3 layers
CASES["ulysses-N8-one-head-per-rank-mha"] = problem("ulysses", 8, model=MHA, seq_len=64, batch_size=1)
CASES["ulysses-N4-mqa-kv-repeated"] = problem("ulysses", 4, model=ONE_KV, seq_len=48, batch_size=3)
CASES["tp_sp-N2-3-layers"] = problem("tp_sp", 2, model=ModelConfig("l3", 32, 4, 2, 8, 96, 3), seq_len=40, batch_size=3)
# lower precision: gradients must stay in the run's dtype
for dtype in ("float32", "bfloat16"):
    for method in ("ulysses", "tp_sp"):
        for n in (1, 2):
            CASES[f"{method}-N{n}-{dtype}"] = problem(method, n, dtype=dtype, seq_len=64)




EXACT_CASES = [c for c in CASES if not c.endswith(("float32", "bfloat16"))]


outcomes, test_exact_against_reference, test_counted_bytes_equal_cost_model = method_tests(CASES, EXACT_CASES)


@pytest.mark.parametrize("method", ["ulysses", "tp_sp"])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 5e-2)])
def test_low_precision_keeps_gradient_dtype(outcomes, method, dtype, tol):
    single, parallel = outcomes[f"{method}-N1-{dtype}"][0], outcomes[f"{method}-N2-{dtype}"][0]
    assert set(parallel["verify_grad_dtypes"].values()) == {dtype}
    # within 2x of a same-dtype single-device run (plus a floor for runs that happen to be near-exact)
    for key in ("verify_out_rel_err", "verify_grad_rel_err"):
        assert parallel[key] <= 2 * single[key] + tol / 10, (key, parallel[key], single[key])
        assert parallel[key] <= tol
