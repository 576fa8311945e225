"""Single-process pieces every method stands on: the LSE attention kernels against the float64 math
path (output, LSE and every gradient given the final out/LSE), the LSE merge, and the layouts."""
from __future__ import annotations

import pytest
import torch

from methods.common import layout as layouts
from methods.common.attention import KERNELS, merge_lse


def _qkv(lq: int, lk: int, heads: int = 4, kv_heads: int = 2):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(2, lq, heads, 8, generator=gen, dtype=torch.float64),
            torch.randn(2, lk, kv_heads, 8, generator=gen, dtype=torch.float64),
            torch.randn(2, lk, kv_heads, 8, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize("causal,lq,lk", [(True, 12, 12), (False, 12, 12), (False, 5, 12)])
def test_cpu_flash_matches_math_forward_and_backward(causal, lq, lk):
    q, k, v = _qkv(lq, lk)
    (math_fwd, math_bwd), (flash_fwd, flash_bwd) = KERNELS["math"], KERNELS["cpu_flash"]
    out_ref, lse_ref = math_fwd(q, k, v, causal)
    out, lse = flash_fwd(q, k, v, causal)
    assert torch.allclose(out, out_ref, atol=1e-12) and torch.allclose(lse, lse_ref, atol=1e-12)
    dout = torch.randn_like(out_ref)
    for g, g_ref in zip(flash_bwd(dout, q, k, v, out, lse, causal), math_bwd(dout, q, k, v, out_ref, lse_ref, causal)):
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
        with pytest.raises(ValueError, match="'cudnn' cannot run torch.float64 on cpu; usable here: cpu_flash, math"):
            A.choose_backend(q)
        with pytest.raises(ValueError, match="unknown attention backend 'fa9'"):
            A.use_backend("fa9")
    finally:
        A.use_backend("auto")
    assert A.choose_backend(q) == "cpu_flash"


def test_self_check_accepts_a_working_kernel_and_skips_a_broken_one(monkeypatch):
    from methods.common import attention as A
    cpu = torch.device("cpu")
    assert A._passes_self_check("cpu_flash", cpu, torch.float32)
    monkeypatch.setitem(A.KERNELS, "broken", (lambda q, k, v, c: (q * 0, torch.zeros(q.shape[0], q.shape[2], q.shape[1])),
                                              A.KERNELS["math"][1]))
    assert not A._passes_self_check("broken", cpu, torch.float32)  # wrong numbers
    monkeypatch.setitem(A.KERNELS, "raises", (lambda *a: 1 / 0, None))
    assert not A._passes_self_check("raises", cpu, torch.float32)
