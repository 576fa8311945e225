"""Ring (basic, zigzag, stripe), all-gather CP and USP: exact against the float64 reference (output,
input grad, every weight grad), counted bytes equal to the cost model, gradients kept in the run's
dtype with errors within 2x of a same-dtype single-device run."""

from __future__ import annotations

import pytest

from .dist import CAUSAL, TEST_TIMEOUT_S, Launches, assert_method_case, problem

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

RING = {}
for n in (2, 4, 8):
    for layout in ("basic", "zigzag", "stripe"):
        for causal in (True, False):
            RING[f"ring-N{n}-{layout}-{CAUSAL[causal]}"] = problem("ring", n, causal=causal, layout=layout)
ALLGATHER_CP = {}
for n in (2, 4):
    for layout in ("zigzag", "contiguous"):
        for causal in (True, False):
            ALLGATHER_CP[f"allgather_cp-N{n}-{layout}-{CAUSAL[causal]}"] = problem(
                "allgather_cp", n, causal=causal, layout=layout
            )
USP = {}
for ud, rd in ((1, 4), (2, 2), (4, 1), (2, 4), (4, 2)):
    for placement in ("ulysses_inner", "ring_inner"):
        USP[f"usp-{ud}x{rd}-{placement}"] = problem(
            "usp", ud * rd, ulysses_degree=ud, ring_degree=rd, placement=placement, layout="zigzag"
        )
USP["usp-2x2-stripe-noncausal-batch3"] = problem(
    "usp", 4, causal=False, batch_size=3, seq_len=48, ulysses_degree=2, ring_degree=2, layout="stripe"
)
USP["usp-8x1-kv-repeated-basic"] = problem(
    "usp", 8, seq_len=64, ulysses_degree=8, ring_degree=1, layout="basic"
)
LOW_PRECISION = {}
for dtype in ("float32", "bfloat16"):
    for method, opts in (("ring", {"layout": "zigzag"}), ("allgather_cp", {}), ("usp", {})):
        for n in (1, 2) if method != "usp" else (1, 4):
            LOW_PRECISION[f"{method}-N{n}-{dtype}"] = problem(method, n, dtype=dtype, seq_len=64, **opts)
CASES = RING | ALLGATHER_CP | USP | LOW_PRECISION


@pytest.fixture(scope="module")
def outcomes() -> Launches:
    return Launches(CASES)


@pytest.mark.parametrize("case", RING)
def test_ring_exact_with_counted_bytes_of_its_model(outcomes, case):
    assert_method_case(outcomes[case], CASES[case])


@pytest.mark.parametrize("case", ALLGATHER_CP)
def test_allgather_cp_exact_with_counted_bytes_of_its_model(outcomes, case):
    assert_method_case(outcomes[case], CASES[case])


@pytest.mark.parametrize("case", USP)
def test_usp_exact_with_counted_bytes_of_its_model(outcomes, case):
    assert_method_case(outcomes[case], CASES[case])


@pytest.mark.parametrize("case", LOW_PRECISION)
def test_low_precision_counted_bytes_of_its_model(outcomes, case):
    assert_method_case(outcomes[case], CASES[case])


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
    p = CASES["ring-N4-zigzag-causal"]
    block = p.workload.batch_size * p.workload.seq_len // 4 * p.model.kv_heads * p.model.head_dim * 8
    calls = outcomes["ring-N4-zigzag-causal"][0]["comm_calls"]
    assert calls["fwd"]["send"] == 2 * 3 * p.model.layers  # K and V, N-1 hops, per layer
    assert outcomes["ring-N4-zigzag-causal"][0]["comm"]["fwd"]["send"] == calls["fwd"]["send"] * block
