"""Ulysses and TP-SP: exact against the float64 reference (output, input grad, every weight grad),
counted bytes equal to the cost model, gradients kept in the run's dtype."""

from __future__ import annotations

import pytest

from methods.common.config import ModelConfig

from .dist import CAUSAL, TEST_TIMEOUT_S, TINY, Launches, assert_method_case, problem

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

MHA = ModelConfig("tiny_mha", hidden=64, heads=8, kv_heads=8, head_dim=8, ffn_hidden=128, layers=2)
ONE_KV = ModelConfig("tiny_mqa", hidden=32, heads=4, kv_heads=1, head_dim=8, ffn_hidden=64, layers=1)

ULYSSES, TP_SP = {}, {}
for n in (1, 2, 4, 8):
    for causal in (True, False):
        ULYSSES[f"ulysses-N{n}-{CAUSAL[causal]}-gqa"] = problem("ulysses", n, causal=causal)
        tp_model = TINY if TINY.kv_heads % n == 0 else MHA  # TP-SP needs kv_heads % N == 0
        TP_SP[f"tp_sp-N{n}-{CAUSAL[causal]}-{tp_model.name}"] = problem(
            "tp_sp", n, causal=causal, model=tp_model
        )
# shapes that move the cost model: one head per rank, MQA repeated to every rank, odd batch, 3 layers
ULYSSES["ulysses-N8-one-head-per-rank-mha"] = problem("ulysses", 8, model=MHA, seq_len=64, batch_size=1)
ULYSSES["ulysses-N4-mqa-kv-repeated"] = problem("ulysses", 4, model=ONE_KV, seq_len=48, batch_size=3)
TP_SP["tp_sp-N2-3-layers"] = problem(
    "tp_sp", 2, model=ModelConfig("l3", 32, 4, 2, 8, 96, 3), seq_len=40, batch_size=3
)
# lower precision: gradients must stay in the run's dtype
LOW_PRECISION = {}
for dtype in ("float32", "bfloat16"):
    for method in ("ulysses", "tp_sp"):
        for n in (1, 2):
            LOW_PRECISION[f"{method}-N{n}-{dtype}"] = problem(method, n, dtype=dtype, seq_len=64)
CASES = ULYSSES | TP_SP | LOW_PRECISION


@pytest.fixture(scope="module")
def outcomes() -> Launches:
    return Launches(CASES)


@pytest.mark.parametrize("case", ULYSSES)
def test_ulysses_exact_with_counted_bytes_of_its_model(outcomes, case):
    assert_method_case(outcomes[case], CASES[case])


@pytest.mark.parametrize("case", TP_SP)
def test_tp_sp_exact_with_counted_bytes_of_its_model(outcomes, case):
    assert_method_case(outcomes[case], CASES[case])


@pytest.mark.parametrize("case", LOW_PRECISION)
def test_low_precision_counted_bytes_of_its_model(outcomes, case):
    assert_method_case(outcomes[case], CASES[case])


@pytest.mark.parametrize("method", ["ulysses", "tp_sp"])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 5e-2)])
def test_low_precision_keeps_gradient_dtype(outcomes, method, dtype, tol):
    single, parallel = outcomes[f"{method}-N1-{dtype}"][0], outcomes[f"{method}-N2-{dtype}"][0]
    assert set(parallel["verify_grad_dtypes"].values()) == {dtype}
    # within 2x of a same-dtype single-device run (plus a floor for runs that happen to be near-exact)
    for key in ("verify_out_rel_err", "verify_grad_rel_err"):
        assert parallel[key] <= 2 * single[key] + tol / 10, (key, parallel[key], single[key])
        assert parallel[key] <= tol
