"""Ring (basic, zigzag, stripe), all-gather CP and USP: exact against the float64 reference (output,
input grad, every weight grad), counted bytes equal to the cost model, gradients kept in the run's
dtype with errors within 2x of a same-dtype single-device run."""
from __future__ import annotations

import pytest

from .dist import method_tests, problem

CASES = {}
for n in (2, 4, 8):
    for layout in ("basic", "zigzag", "stripe"):
        for causal in (True, False):
            CASES[f"ring-N{n}-{layout}-causal{int(causal)}"] = problem("ring", n, causal=causal, layout=layout)
for n in (2, 4):
    for layout in ("zigzag", "contiguous"):
        for causal in (True, False):
            CASES[f"allgather_cp-N{n}-{layout}-causal{int(causal)}"] = problem("allgather_cp", n, causal=causal,
                                                                               layout=layout)
for ud, rd in ((1, 4), (2, 2), (4, 1), (2, 4), (4, 2)):
    for placement in ("ulysses_inner", "ring_inner"):
        CASES[f"usp-{ud}x{rd}-{placement}"] = problem("usp", ud * rd, ulysses_degree=ud, ring_degree=rd,
                                                      placement=placement, layout="zigzag")
CASES["usp-2x2-stripe-noncausal-batch3"] = problem("usp", 4, causal=False, batch_size=3, seq_len=48,
                                                    ulysses_degree=2, ring_degree=2, layout="stripe")
CASES["usp-8x1-kv-repeated-basic"] = problem("usp", 8, seq_len=64, ulysses_degree=8, ring_degree=1, layout="basic")
EXACT_CASES = list(CASES)
LOW_PRECISION = {}
for dtype in ("float32", "bfloat16"):
    for method, opts in (("ring", {"layout": "zigzag"}), ("allgather_cp", {}), ("usp", {})):
        for n in (1, 2) if method != "usp" else (1, 4):
            LOW_PRECISION[f"{method}-N{n}-{dtype}"] = problem(method, n, dtype=dtype, seq_len=64, **opts)
CASES.update(LOW_PRECISION)




outcomes, test_exact_against_reference, test_counted_bytes_equal_cost_model = method_tests(CASES, EXACT_CASES)


@pytest.mark.parametrize("method,n", [("ring", 2), ("allgather_cp", 2), ("usp", 4)])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 5e-2)])
def test_low_precision_keeps_gradient_dtype(outcomes, method, n, dtype, tol):
    single, parallel = outcomes[f"{method}-N1-{dtype}"][0], outcomes[f"{method}-N{n}-{dtype}"][0]
    assert set(parallel["verify_grad_dtypes"].values()) == {dtype}
    for key in ("verify_out_rel_err", "verify_grad_rel_err"):
        assert parallel[key] <= 2 * single[key] + tol / 10, (key, parallel[key], single[key])
        assert parallel[key] <= tol


def test_ring_never_holds_the_full_sequence_kv(outcomes):
    # K/V travel one block at a time: every send is one rank's block (B x L/N x Hkv x D), never more
    p = CASES["ring-N4-zigzag-causal1"]
    block = p.workload.batch_size * p.workload.seq_len // 4 * p.model.kv_heads * p.model.head_dim * 8
    calls = outcomes["ring-N4-zigzag-causal1"][0]["comm_calls"]
    assert calls["fwd"]["send"] == 2 * 3 * p.model.layers  # K and V, N-1 hops, per layer
    assert outcomes["ring-N4-zigzag-causal1"][0]["comm"]["fwd"]["send"] == calls["fwd"]["send"] * block
