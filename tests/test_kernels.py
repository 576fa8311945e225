"""Single-process pieces every method stands on: the LSE attention kernels against the float64 math
path (output, LSE and every gradient given the final out/LSE), the LSE merge, and the layouts."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from methods.common import layout as layouts
from methods.common.attention import KERNELS, merge_lse

# module-level names for the stand-in custom ops' annotations (torch.library resolves them here)
Tensor, OptTensor = torch.Tensor, torch.Tensor | None
Four = tuple[Tensor, Tensor, Tensor, Tensor]


def _qkv(lq: int, lk: int, heads: int = 4, kv_heads: int = 2):
    gen = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, lq, heads, 8, generator=gen, dtype=torch.float64),
        torch.randn(2, lk, kv_heads, 8, generator=gen, dtype=torch.float64),
        torch.randn(2, lk, kv_heads, 8, generator=gen, dtype=torch.float64),
    )


@pytest.mark.parametrize("causal,lq,lk", [(True, 12, 12), (False, 12, 12), (False, 5, 12)])
def test_cpu_flash_matches_math_forward_and_backward(causal, lq, lk):
    q, k, v = _qkv(lq, lk)
    (math_fwd, math_bwd), (flash_fwd, flash_bwd) = KERNELS["math"], KERNELS["cpu_flash"]
    out_ref, lse_ref = math_fwd(q, k, v, causal)
    out, lse = flash_fwd(q, k, v, causal)
    assert torch.allclose(out, out_ref, atol=1e-12) and torch.allclose(lse, lse_ref, atol=1e-12)
    dout = torch.randn_like(out_ref)
    for g, g_ref in zip(
        flash_bwd(dout, q, k, v, out, lse, causal), math_bwd(dout, q, k, v, out_ref, lse_ref, causal)
    ):
        assert g.shape == g_ref.shape and torch.allclose(g, g_ref, atol=1e-12)


def test_math_path_gradients_match_autograd():
    q, k, v = (t.requires_grad_() for t in _qkv(10, 10))
    out, lse = KERNELS["math"][0](q, k, v, True)
    dout = torch.randn_like(out)
    expected = torch.autograd.grad(out, (q, k, v), dout)
    for g, e in zip(KERNELS["math"][1](dout, q, k, v, out.detach(), lse.detach(), True), expected):
        assert torch.allclose(g, e, atol=1e-12)


def test_merging_two_key_blocks_equals_attention_over_both():
    q, k, v = _qkv(6, 10)
    fwd = KERNELS["math"][0]
    out_ref, lse_ref = fwd(q, k, v, False)
    out_a, lse_a = fwd(q, k[:, :4], v[:, :4], False)
    out_b, lse_b = fwd(q, k[:, 4:], v[:, 4:], False)
    out, lse = merge_lse(out_a, lse_a, out_b, lse_b)
    assert torch.allclose(out, out_ref, atol=1e-12) and torch.allclose(lse, lse_ref, atol=1e-12)


@pytest.mark.parametrize("name", ["contiguous", "zigzag", "stripe"])
def test_layouts_partition_the_sequence_and_unshard_inverts_shard(name):
    indices = layouts.make(name, 48, 4)
    assert sorted(torch.cat(indices).tolist()) == list(range(48))
    assert all(i.numel() == 12 for i in indices)
    x = torch.arange(2 * 48 * 3).view(2, 48, 3)
    assert torch.equal(layouts.unshard([layouts.shard(x, i) for i in indices], indices), x)


def test_zigzag_gives_rank_r_chunks_r_and_2n_minus_1_minus_r():
    chunks = torch.arange(16).view(8, 2)
    assert torch.equal(layouts.zigzag(16, 4)[1], torch.cat([chunks[1], chunks[6]]))
    with pytest.raises(ValueError, match="not divisible by 8"):
        layouts.make("zigzag", 12, 4)


def test_backend_preference_and_what_cpu_offers():
    from methods.common.attention import PREFERENCE, available_backends

    assert PREFERENCE == ("flash_attn3", "flash_attn", "cudnn", "cuda_flash", "cuda_efficient", "math")
    assert available_backends(torch.device("cpu"), torch.bfloat16) == ["cpu_flash", "math"]


def test_a_forced_backend_routes_every_call(monkeypatch):
    from methods.common import attention as A

    q, k, v = (torch.randn(1, 16, h, 8, dtype=torch.float64) for h in (4, 2, 2))
    calls = []
    monkeypatch.setitem(A.KERNELS, "math", (lambda *a: calls.append(1) or A._math_fwd(*a), A._math_bwd))
    try:
        A.use_backend("math")
        assert A.choose_backend(q) == "math"
        A.attn_forward(q, k, v, True)
        assert calls == [1]
        A.use_backend("cudnn")
        with pytest.raises(
            ValueError, match="'cudnn' cannot run torch.float64 on cpu; usable here: cpu_flash, math"
        ):
            A.choose_backend(q)
        with pytest.raises(ValueError, match="unknown attention backend 'fa9'"):
            A.use_backend("fa9")
    finally:
        A.use_backend("auto")
    assert A.choose_backend(q) == "cpu_flash"


def test_self_check_accepts_a_working_kernel_and_skips_a_broken_one(monkeypatch):
    from methods.common import attention as A

    cpu = torch.device("cpu")
    assert A._passes_self_check("cpu_flash", cpu, torch.float32, 64)
    monkeypatch.setitem(
        A.KERNELS,
        "broken",
        (lambda q, k, v, c: (q * 0, torch.zeros(q.shape[0], q.shape[2], q.shape[1])), A.KERNELS["math"][1]),
    )
    with pytest.warns(
        UserWarning, match="'broken' skipped on cpu torch.float32 head_dim=64: causal LSE differs"
    ):
        assert not A._passes_self_check("broken", cpu, torch.float32, 64)  # wrong numbers
    monkeypatch.setitem(A.KERNELS, "raises", (lambda *a: 1 / 0, None))
    with pytest.warns(
        UserWarning, match="'raises' skipped on cpu torch.float32 head_dim=64: causal: ZeroDivisionError"
    ):
        assert not A._passes_self_check("raises", cpu, torch.float32, 64)


def _transposed_lse(q, k, v, causal):
    out, lse = KERNELS["math"][0](q, k, v, causal)
    return out, lse.transpose(1, 2).contiguous()  # [B, L, H]: a kernel of the other LSE layout


def _permuted_lse(q, k, v, causal):
    out, lse = KERNELS["math"][0](q, k, v, causal)
    return out, lse.transpose(1, 2).reshape(lse.shape)  # right shape, rows of the other layout


def _shifted_causal(q, k, v, causal):
    """Causal aligned to the bottom-right of a block one key longer (flash-attn's convention on a
    non-square block, where math aligns top-left): every query sees one key too many."""
    if not causal:
        return KERNELS["math"][0](q, k, v, False)
    scores = torch.einsum(
        "bqhd,bkhd->bhqk", q.float(), k.repeat_interleave(q.shape[2] // k.shape[2], 2).float()
    )
    scores = scores / math.sqrt(q.shape[-1])
    keep = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).tril(diagonal=1)
    scores = scores.masked_fill(~keep, float("-inf"))
    lse = scores.logsumexp(-1)
    vr = v.repeat_interleave(q.shape[2] // v.shape[2], 2).float()
    out = torch.einsum("bhqk,bkhd->bqhd", (scores - lse[..., None]).exp(), vr)
    return out.to(q.dtype), lse


def _unscaled(q, k, v, causal):
    return KERNELS["math"][0](q * math.sqrt(q.shape[-1]), k, v, causal)  # the 1/sqrt(d) scale dropped


def _scaled_grads_wrong(dout, q, k, v, out, lse, causal):
    dq, dk, dv = KERNELS["math"][1](dout, q, k, v, out, lse, causal)
    return dq * 1.1, dk, dv  # a 10% gradient error: the forward alone would pass


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "wrong,expect",
    [
        ((_transposed_lse, None), "lse is"),
        ((_permuted_lse, None), "LSE differs"),
        ((_shifted_causal, None), "causal LSE differs"),
        ((_unscaled, None), "LSE differs"),
        ((None, _scaled_grads_wrong), "dq differs"),
    ],
)
def test_self_check_refuses_deliberately_wrong_kernels(wrong, expect, dtype):
    """Each defect a real release could have: the LSE in [B, L, H], LSE rows permuted in the right
    shape, causal alignment off by one (bottom-right vs top-left), the softmax scale dropped, a wrong
    gradient. Right kernels pass at the same dtype and at the jobs' head sizes."""
    from methods.common import attention as A

    fwd, bwd = wrong
    kernel = (fwd or KERNELS["math"][0], bwd or KERNELS["math"][1])
    reason = A.check_kernel(kernel, torch.device("cpu"), dtype, 64)
    assert reason is not None and expect in reason, reason
    for head_dim in (8, 64, 72, 128):
        assert A.check_kernel(KERNELS["cpu_flash"], torch.device("cpu"), dtype, head_dim) is None


def test_self_check_runs_at_the_jobs_head_dim_and_dtype(monkeypatch):
    """The cache key holds the head size and dtype: a kernel that fails only at head_dim 72 is
    refused there and still used at 64."""
    from methods.common import attention as A

    math_fwd = KERNELS["math"][0]

    def fails_at_72(q, k, v, causal):
        if q.shape[-1] == 72:
            raise RuntimeError("head_dim 72 not supported by this build")
        return math_fwd(q, k, v, causal)

    monkeypatch.setitem(A.KERNELS, "picky", (fails_at_72, KERNELS["math"][1]))
    monkeypatch.setattr(A, "_candidates", lambda device, dtype: ["picky", "math"])
    monkeypatch.setattr(A, "is_gpu_like", lambda device: True)
    A._passes_self_check.cache_clear()
    try:
        with pytest.warns(UserWarning, match="head_dim=72: causal: RuntimeError: head_dim 72 not supported"):
            assert A.backend_name(torch.device("cpu"), torch.bfloat16, 72) == "math"
        assert A.backend_name(torch.device("cpu"), torch.bfloat16, 64) == "picky"
    finally:
        A._passes_self_check.cache_clear()


def test_self_check_synchronises_inside_its_guard(monkeypatch):
    """CUDA reports a kernel's error at the next synchronisation: the check synchronises before it
    reads results, inside the guarded region, so an asynchronous error is a refusal, not a crash."""
    from methods.common import attention as A

    def sync(device):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(A, "synchronize", sync)
    reason = A.check_kernel(KERNELS["math"], torch.device("cpu"), torch.float32, 64)
    assert reason is not None and "illegal memory access" in reason


def test_forcing_math_gives_cpu_flash_results_through_the_autograd_path():
    from methods.common import attention as A

    runs = {}
    for name in ("math", "auto"):
        q, k, v = (t.requires_grad_() for t in _qkv(12, 12))
        A.use_backend(name)
        try:
            runs[A.choose_backend(q)] = (A.attention(q, k, v, True), q, k, v)
        finally:
            A.use_backend(None)
    assert sorted(runs) == ["cpu_flash", "math"]
    (out_m, *in_m), (out_f, *in_f) = runs["math"], runs["cpu_flash"]
    dout = torch.randn_like(out_m)
    assert torch.allclose(out_m, out_f, atol=1e-12)
    for a, b in zip(torch.autograd.grad(out_m, in_m, dout), torch.autograd.grad(out_f, in_f, dout)):
        assert torch.allclose(a, b, atol=1e-12)


def test_backend_name_and_unknown_or_unusable_forced_names():
    from methods.common import attention as A

    cpu = torch.device("cpu")
    assert A.backend_name(cpu, torch.float32) == "cpu_flash"
    with pytest.raises(ValueError, match="choose auto or one of"):
        A.use_backend("flash")
    assert A.backend_name(cpu, torch.float32) == "cpu_flash"  # a rejected name leaves the setting alone
    try:
        A.use_backend("flash_attn3")
        with pytest.raises(ValueError, match="'flash_attn3' cannot run torch.bfloat16 on cpu"):
            A.backend_name(cpu, torch.bfloat16)
    finally:
        A.use_backend(None)


# ---- GPU kernels' plumbing, checked on CPU with stand-ins for the ops that compute with the math path.
# They take arguments as the real ones do (positions from torch's schemas, flash-attn's names), so a
# wrong position, a mislabelled flag or a wrongly shaped LSE shows up as wrong numbers or a failed assert.


def _gqa_case(lq: int = 40):
    q, k, v = _qkv(lq, lq)
    dout = torch.randn(q.shape, dtype=q.dtype, generator=torch.Generator().manual_seed(1))
    out, lse = KERNELS["math"][0](q, k, v, True)
    return q, k, v, dout, (out, lse, *KERNELS["math"][1](dout, q, k, v, out, lse, True))


def _check_kernel(name: str, lq: int = 40):
    q, k, v, dout, expected = _gqa_case(lq)
    fwd, bwd = KERNELS[name]
    out, lse = fwd(q, k, v, True)
    got = (out, lse, *bwd(dout, q, k, v, out, lse, True))
    for g, e in zip(got, expected):
        assert g.shape == e.shape and torch.allclose(g, e, atol=1e-10)


def _bhld_math(q, k, v, causal):  # q/k/v in [B, H, L, D], as aten's SDPA ops take them
    out, lse = KERNELS["math"][0](q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal)
    return out.transpose(1, 2), lse


def _bhld_math_bwd(dout, q, k, v, out, lse, causal):
    t = lambda x: x.transpose(1, 2)  # noqa: E731
    return tuple(t(g) for g in KERNELS["math"][1](t(dout), t(q), t(k), t(v), t(out), lse, causal))


def test_cudnn_plumbing_lse_layout_and_dense_backward_arguments(monkeypatch):
    seen = {}

    def fwd(q, k, v, attn_bias, compute_log_sumexp, dropout_p, is_causal):
        assert attn_bias is None and compute_log_sumexp and q.shape[1] == k.shape[1]  # kv heads repeated
        out, lse = _bhld_math(q, k, v, is_causal)
        seed = torch.zeros((), dtype=torch.int64)
        return out, lse.unsqueeze(-1), None, None, q.shape[2], k.shape[2], seed, seed, None

    def bwd(
        dout,
        q,
        k,
        v,
        out,
        lse,
        seed,
        offset,
        attn_bias,
        cum_seq_q,
        cum_seq_k,
        max_q,
        max_k,
        dropout_p,
        is_causal,
    ):
        seen.update(
            lse=lse.shape,
            dense=(attn_bias, cum_seq_q, cum_seq_k) == (None, None, None),
            max=(max_q, max_k),
            seed=seed is not None and offset is not None,
            same_strides=dout.stride() == out.stride(),
        )
        return _bhld_math_bwd(dout, q, k, v, out, lse.squeeze(-1), is_causal)

    monkeypatch.setattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention", fwd)
    monkeypatch.setattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention_backward", bwd)
    _check_kernel("cudnn")
    assert seen == {"lse": (2, 4, 40, 1), "dense": True, "seed": True, "max": (40, 40), "same_strides": True}


@pytest.mark.parametrize("keepdim", [True, False])
def test_cudnn_lse_goes_back_in_the_rank_its_forward_gave(monkeypatch, keepdim):
    """torch releases differ: some return cuDNN's LSE as [B, H, L, 1] and want it back so, others
    return [B, H, L] and unsqueeze inside the backward. Whatever the forward gave, the backward gets."""
    seen = {}

    def fwd(q, k, v, attn_bias, compute_log_sumexp, dropout_p, is_causal):
        out, lse = _bhld_math(q, k, v, is_causal)
        seed = torch.zeros((), dtype=torch.int64)
        return (
            out,
            lse.unsqueeze(-1) if keepdim else lse,
            None,
            None,
            q.shape[2],
            k.shape[2],
            seed,
            seed,
            None,
        )

    def bwd(
        dout,
        q,
        k,
        v,
        out,
        lse,
        seed,
        offset,
        attn_bias,
        cum_seq_q,
        cum_seq_k,
        max_q,
        max_k,
        dropout_p,
        is_causal,
    ):
        seen["lse"] = tuple(lse.shape)
        return _bhld_math_bwd(dout, q, k, v, out, lse.reshape(lse.shape[:3]), is_causal)

    monkeypatch.setattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention", fwd)
    monkeypatch.setattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention_backward", bwd)
    _check_kernel("cudnn")
    assert seen["lse"] == ((2, 4, 40, 1) if keepdim else (2, 4, 40))


def test_cuda_flash_and_efficient_plumbing(monkeypatch):
    seen = {}

    def flash_fwd(q, k, v, dropout_p, is_causal):
        out, lse = _bhld_math(q, k, v, is_causal)
        return out, lse, None, None, q.shape[2], k.shape[2], None, None, None

    def flash_bwd(
        dout, q, k, v, out, lse, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal, seed, offset
    ):
        seen["flash_dense"] = (
            cum_seq_q is None and cum_seq_k is None and (max_q, max_k) == (q.shape[2], k.shape[2])
        )
        return _bhld_math_bwd(dout, q, k, v, out, lse, is_causal)

    def eff_fwd(q, k, v, attn_bias, compute_log_sumexp, dropout_p, is_causal):
        out, lse = _bhld_math(q, k, v, is_causal)
        padded = torch.nn.functional.pad(lse, (0, -lse.shape[-1] % 32), value=float("inf"))
        return out, padded, None, None

    def eff_bwd(dout, q, k, v, attn_bias, out, lse, seed, offset, dropout_p, grad_input_mask, is_causal):
        seen["eff_lse"] = lse.shape[-1], bool(lse[..., q.shape[2] :].eq(float("inf")).all())
        grads = _bhld_math_bwd(dout, q, k, v, out, lse[..., : q.shape[2]], is_causal)
        return (*grads, None)

    for op, fake in [
        ("_scaled_dot_product_flash_attention", flash_fwd),
        ("_scaled_dot_product_flash_attention_backward", flash_bwd),
        ("_scaled_dot_product_efficient_attention", eff_fwd),
        ("_scaled_dot_product_efficient_attention_backward", eff_bwd),
    ]:
        monkeypatch.setattr(torch.ops.aten, op, fake)
    _check_kernel("cuda_flash")
    _check_kernel("cuda_efficient")
    assert seen == {"flash_dense": True, "eff_lse": (64, True)}


def _fa_stand_ins(style: str):
    """flash-attn entry points with the signatures of a release: fa2_2.6 (window_size pair, 8-tuple
    return), fa2_2.8 (custom op, window ints), fa3_2025.01 (`causal`, `out` required, window pair),
    fa3_2025.08 (custom op, backward flag `is_causal`). Gradients are written into dq/dk/dv."""

    def fill(dq, dk, dv, grads):
        for buf, g in zip((dq, dk, dv), grads):
            buf.copy_(g)

    if style == "fa2_2.6":

        def fwd(
            q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, return_softmax
        ):
            assert window_size == (-1, -1) and softmax_scale == q.shape[-1] ** -0.5
            out, lse = KERNELS["math"][0](q, k, v, causal)
            return out, q, k, v, out, lse, None, None

        def bwd(
            dout,
            q,
            k,
            v,
            out,
            softmax_lse,
            dq,
            dk,
            dv,
            dropout_p,
            softmax_scale,
            causal,
            window_size,
            softcap,
            alibi_slopes,
            deterministic,
            rng_state=None,
        ):
            fill(dq, dk, dv, KERNELS["math"][1](dout, q, k, v, out, softmax_lse, causal))

        return SimpleNamespace(_flash_attn_forward=fwd, _flash_attn_backward=bwd)
    if style == "fa3_2025.01":

        def fwd(
            q,
            k,
            v,
            k_new,
            v_new,
            qv,
            out,
            cu_seqlens_q,
            cu_seqlens_k,
            cu_seqlens_k_new,
            seqused_q,
            seqused_k,
            max_seqlen_q,
            max_seqlen_k,
            page_table,
            kv_batch_idx,
            leftpad_k,
            rotary_cos,
            rotary_sin,
            q_descale,
            k_descale,
            v_descale,
            softmax_scale,
            causal,
            window_size=(-1, -1),
            softcap=0.0,
            rotary_interleaved=True,
            num_splits=1,
            pack_gqa=None,
            sm_margin=0,
        ):
            assert out is None and cu_seqlens_q is None and window_size == (-1, -1)
            return (*KERNELS["math"][0](q, k, v, causal), None, None)

        def bwd(
            dout,
            q,
            k,
            v,
            out,
            softmax_lse,
            cu_seqlens_q,
            cu_seqlens_k,
            sequed_q,
            sequed_k,
            max_seqlen_q,
            max_seqlen_k,
            dq,
            dk,
            dv,
            softmax_scale,
            causal,
            window_size=(-1, -1),
            softcap=0.0,
            deterministic=False,
            sm_margin=0,
        ):
            fill(dq, dk, dv, KERNELS["math"][1](dout, q, k, v, out, softmax_lse, causal))

        return SimpleNamespace(_flash_attn_forward=fwd, _flash_attn_backward=bwd)

    ns = f"spbench_test_{style.replace('.', '_')}"  # torch.library names: a fresh namespace per release
    if style == "fa2_2.8":

        @torch.library.custom_op(f"{ns}::fwd", mutates_args=())
        def fwd(
            q: Tensor,
            k: Tensor,
            v: Tensor,
            dropout_p: float,
            softmax_scale: float,
            causal: bool,
            window_size_left: int,
            window_size_right: int,
            softcap: float,
            alibi_slopes: OptTensor,
            return_softmax: bool,
        ) -> Four:
            assert (window_size_left, window_size_right) == (-1, -1)
            out, lse = KERNELS["math"][0](q, k, v, causal)
            return out, lse, q.new_empty(0), q.new_empty(0)

        @torch.library.custom_op(f"{ns}::bwd", mutates_args=("dq", "dk", "dv"))
        def bwd(
            dout: Tensor,
            q: Tensor,
            k: Tensor,
            v: Tensor,
            out: Tensor,
            softmax_lse: Tensor,
            dq: OptTensor,
            dk: OptTensor,
            dv: OptTensor,
            dropout_p: float,
            softmax_scale: float,
            causal: bool,
            window_size_left: int,
            window_size_right: int,
            softcap: float,
            alibi_slopes: OptTensor,
            deterministic: bool,
            rng_state: OptTensor = None,
        ) -> Tensor:
            fill(dq, dk, dv, KERNELS["math"][1](dout, q, k, v, out, softmax_lse, causal))
            return q.new_empty(0)

        _register_fakes(fwd, bwd)
        return SimpleNamespace(_flash_attn_forward=fwd, _flash_attn_backward=bwd)

    @torch.library.custom_op(f"{ns}::fwd", mutates_args=())
    def fwd(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        k_new: OptTensor = None,
        out_: OptTensor = None,
        cu_seqlens_q: OptTensor = None,
        max_seqlen_q: int | None = None,
        softmax_scale: float | None = None,
        causal: bool = False,
        window_size_left: int = -1,
        window_size_right: int = -1,
        attention_chunk: int = 0,
        softcap: float = 0.0,
        num_splits: int = 1,
        pack_gqa: bool | None = None,
        sm_margin: int = 0,
    ) -> Four:
        out, lse = KERNELS["math"][0](q, k, v, causal)
        return out, lse, q.new_empty(0), q.new_empty(0)

    @torch.library.custom_op(f"{ns}::bwd", mutates_args=("dq", "dk", "dv"))
    def bwd(
        dout: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        out: Tensor,
        softmax_lse: Tensor,
        cu_seqlens_q: OptTensor = None,
        sequed_q: OptTensor = None,
        max_seqlen_q: int | None = None,
        dq: OptTensor = None,
        dk: OptTensor = None,
        dv: OptTensor = None,
        softmax_scale: float | None = None,
        is_causal: bool = False,
        window_size_left: int = -1,
        window_size_right: int = -1,
        softcap: float = 0.0,
        deterministic: bool = False,
        sm_margin: int = 0,
    ) -> Tensor:
        fill(dq, dk, dv, KERNELS["math"][1](dout, q, k, v, out, softmax_lse, is_causal))
        return q.new_empty(0)

    _register_fakes(fwd, bwd)
    return SimpleNamespace(_flash_attn_forward=fwd, _flash_attn_backward=bwd)


def _register_fakes(fwd, bwd) -> None:
    """Shapes-only implementations, as the releases register for their custom ops (what the meta
    device and fake tensors run): out like q, the LSE [B, H, L] in float32."""

    @fwd.register_fake
    def _(q, k, v, *args, **kwargs):
        return (
            torch.empty_like(q),
            q.new_empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32),
            q.new_empty(0),
            q.new_empty(0),
        )

    @bwd.register_fake
    def _(dout, q, *args, **kwargs):
        return q.new_empty(0)


@pytest.mark.parametrize("style", ["fa2_2.6", "fa2_2.8", "fa3_2025.01", "fa3_2025.08"])
def test_flash_attn_releases_get_their_arguments_by_name(monkeypatch, style):
    from methods.common import attention as A

    fa3 = style.startswith("fa3")
    monkeypatch.setattr(A, "_fa3" if fa3 else "_fa", _fa_stand_ins(style))
    _check_kernel("flash_attn3" if fa3 else "flash_attn")
