"""The causal linear-attention kernel (LinearKernel) beyond exactness (tests/test_lasp2.py checks it
against the quadratic reference): its aten-op count does not grow with L, it runs on the meta device
(every tensor it makes is on q's device), it stays finite and accurate in float32 and bfloat16 at
long L with a decay, and the optional fla GPU backend is only chosen on CUDA after its self-check."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from methods.common import linear_attention as la
from methods.common.linear_attention import (
    LinearKernel,
    head_decays,
    linear_backend_name,
    naive_linear_attention,
)


class OpCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def fwd_bwd_ops(length: int, decay: bool) -> int:
    q, k, v = (torch.randn(1, length, 2, 8, device="meta", requires_grad=True) for _ in range(3))
    kernel = LinearKernel(head_decays(2) if decay else None)
    with OpCount() as count:
        out = kernel(q, k, v, True)
        torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    return count.ops


@pytest.mark.parametrize("decay", [False, True])
def test_op_count_does_not_grow_with_length(decay):
    """One forward + backward, B=1, H=2, D=8, chunk 64. The per-chunk Python loop this kernel replaced
    measured 2240 ops at L=1K and 36080 at 16K without a decay, 2704 and 43504 with one (16x: linear
    in L), so this bound failed there. Now: 157 and 157 without a decay (a cumsum), 254 and 314 with
    one (the doubling scan adds a few ops per doubling of L)."""
    short, long = fwd_bwd_ops(1024, decay), fwd_bwd_ops(16384, decay)
    assert long <= 2 * short, (short, long)
    if not decay:
        assert long == short


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("length", [1, 40, 64, 200])
def test_runs_on_the_meta_device(dtype, decay, length):
    """Forward and backward on meta tensors: a tensor made on the CPU (a mask, an arange, the decay)
    meeting them would raise."""
    meta = torch.device("meta")
    q, k, v = (torch.empty(2, length, h, 8, device=meta, dtype=dtype, requires_grad=True) for h in (4, 2, 2))
    out = LinearKernel(head_decays(4) if decay else None)(q, k, v, True)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    assert out.device == meta and out.dtype == dtype and out.shape == q.shape
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("decay", [False, True])
def test_long_sequences_stay_accurate_in_low_precision(dtype, tolerance, decay):
    """L=16384 (256 chunks): output and q/k/v gradients finite and, relative to their largest entry,
    close to the float64 kernel on the same (rounded) inputs."""
    gen = torch.Generator().manual_seed(0)
    x = [torch.randn(1, 16384, h, 8, generator=gen).to(dtype) for h in (2, 1, 1)]
    dout = torch.randn(1, 16384, 2, 8, generator=gen).to(dtype)
    kernel = LinearKernel(head_decays(2) if decay else None)
    results = []
    for run_dtype in (torch.float64, dtype):
        inputs = [t.to(run_dtype).requires_grad_() for t in x]
        out = kernel(*inputs, True)
        assert out.dtype == run_dtype
        results.append([out.detach(), *torch.autograd.grad(out, inputs, dout.to(run_dtype))])
    for want, got in zip(*results):
        assert torch.isfinite(got).all()
        assert float((got.double() - want).abs().max()) <= tolerance * float(want.abs().max())


# ---- the optional fla backend, plumbing only (a stand-in for fla's chunk_simple_gla on CPU) ----------


def fla_stand_in(calls: list, ignore_decay: bool = False):
    """fla's signature and semantics: q/k/v [B, T, H, D], g_gamma the per-head natural-log decay."""

    def chunk_simple_gla(
        q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, output_final_state=False
    ):
        calls.append(q.device)
        assert g is None and initial_state is None and not output_final_state
        decay = None if g_gamma is None or ignore_decay else g_gamma.double().exp()
        return naive_linear_attention(q, k, v, True, decay) * scale, None

    return chunk_simple_gla


@pytest.fixture
def fla(monkeypatch):
    """Installs a stand-in (set `fla.wrong = True` before use for one that ignores the decay), with
    a fresh verdict cache, and a self-check that runs on CPU tensors whatever device it is asked
    for (so the CUDA branch can be exercised here)."""
    calls: list = []
    state = type("Fla", (), {"calls": calls, "wrong": False, "checks": []})()
    monkeypatch.setattr(la, "_fla_kernel", lambda: fla_stand_in(calls, state.wrong))
    monkeypatch.setattr(la, "_fla_verdicts", {})
    real_check = la._fla_self_check

    def check_on_cpu(device, dtype, head_dim):
        state.checks.append((str(device), dtype, head_dim))
        return real_check(torch.device("cpu"), dtype, head_dim)

    monkeypatch.setattr(la, "_fla_self_check", check_on_cpu)
    return state


def test_fla_is_only_chosen_on_cuda(fla):
    assert linear_backend_name("cpu", torch.float32) == "torch_chunked"
    assert linear_backend_name("cpu", torch.bfloat16, head_dim=8) == "torch_chunked"
    assert linear_backend_name("cuda", torch.float64) == "torch_chunked"  # no float64 Triton path
    q, k, v = (torch.randn(1, 100, h, 8, requires_grad=True) for h in (4, 2, 2))
    out = LinearKernel(head_decays(4))(q, k, v, True)  # CPU tensors: the torch path, no check
    assert fla.calls == [] and fla.checks == []
    assert torch.allclose(out, naive_linear_attention(q, k, v, True, head_decays(4)), atol=1e-4)
    assert linear_backend_name("cuda", torch.bfloat16) == "fla_chunk"  # nothing refused yet
    assert linear_backend_name("cuda:0", torch.float32, head_dim=8) == "fla_chunk"
    assert fla.checks == [("cuda:0", torch.float32, 8)] and fla.calls  # the self-check ran the stand-in
    assert linear_backend_name("cuda:0", torch.float32, head_dim=8) == "fla_chunk"
    assert len(fla.checks) == 1  # once per (device, dtype, head_dim)


def test_fla_stand_in_matches_the_torch_path():
    calls: list = []
    kernel = LinearKernel(head_decays(4))
    q, k, v = (torch.randn(1, 150, h, 8) for h in (4, 2, 2))
    original = la._fla_kernel
    try:
        la._fla_kernel = lambda: fla_stand_in(calls)
        got = kernel._fla(q, k, v)
    finally:
        la._fla_kernel = original
    assert calls and torch.allclose(got, kernel._chunked(q, k, v), atol=1e-4)


def test_a_wrong_fla_is_refused_by_the_self_check(fla):
    fla.wrong = True  # ignores the decay: right without one, wrong with one
    with pytest.warns(RuntimeWarning, match="fla chunk kernel refused .*: out off by .*decay=True"):
        assert linear_backend_name("cuda:0", torch.float32, head_dim=8) == "torch_chunked"
    assert linear_backend_name("cuda:0", torch.float32) == "torch_chunked"  # a failed check is remembered
    assert linear_backend_name("cuda:0", torch.bfloat16) == "fla_chunk"  # another dtype is not judged by it


def test_a_raising_fla_is_refused(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no Triton here")

    monkeypatch.setattr(la, "_fla_kernel", lambda: broken)
    with pytest.warns(RuntimeWarning, match="no Triton here"):
        assert la._fla_self_check(torch.device("cpu"), torch.float32, 8) is False


def test_without_fla_the_backend_is_torch():
    if la._fla_kernel() is not None:
        pytest.skip("fla is installed here")
    assert linear_backend_name("cuda", torch.bfloat16) == "torch_chunked"


def test_fla_self_check_runs_inside_a_no_grad_forward(monkeypatch):
    """The first CUDA call may come from LASP's no-grad autograd.Function forward (or inference)."""
    monkeypatch.setattr(la, "_fla_kernel", lambda: fla_stand_in([]))
    with torch.no_grad():
        assert la._fla_self_check(torch.device("cpu"), torch.float32, 8)
    with torch.inference_mode():
        assert la._fla_self_check(torch.device("cpu"), torch.float32, 8)


def test_decay_tables_at_16_heads():
    """RetNet's table (the default) is 1 - 2^(-5-h); `scaled`, spbench's earlier one, 1 - 2^(-5-8h/H).
    They agree at H = 8 only: at H = 16 head 15 decays with 1 - 2^-20 under RetNet's rule."""
    h = torch.arange(16, dtype=torch.float64)
    assert torch.equal(head_decays(16), 1 - 2.0 ** (-5 - h))
    assert torch.equal(head_decays(16, "retnet"), head_decays(16))
    assert torch.equal(head_decays(16, "scaled"), 1 - 2.0 ** (-5 - h / 2))
    assert head_decays(16)[15] == 1 - 2.0**-20 and head_decays(16, "scaled")[15] == 1 - 2.0**-12.5
    assert torch.equal(head_decays(8), head_decays(8, "scaled"))
    with pytest.raises(ValueError, match="unknown decay rule 'lightning'"):
        head_decays(4, "lightning")


def test_a_model_takes_its_decay_rule():
    from methods.common.config import ModelConfig
    from methods.common.linear_attention import model_decays

    m = ModelConfig("m", hidden=64, heads=16, kv_heads=4, head_dim=4, ffn_hidden=64, kind="linear")
    assert model_decays(m) is None
    assert torch.equal(model_decays(replace(m, extra={"decay": True})), head_decays(16, "retnet"))
    scaled = model_decays(replace(m, extra={"decay": True, "decay_rule": "scaled"}))
    assert torch.equal(scaled, head_decays(16, "scaled"))
