"""Micro-benchmarks (pytest-benchmark) of the pieces every method's step is built from: attention
with LSE per kernel, the LSE merge, layout extraction and the communication counter. Sizes and the
kernel list come from benchmarks/conftest.py (CPU-sized by default, Llama3-8B attention when CUDA is
present). Each benchmark also checks its result, so a broken kernel fails instead of being timed.

    .venv/bin/python -m pytest benchmarks/ --benchmark-enable [--benchmark-json=out.json]

The test suite runs them once with timing disabled (tests/test_benchmarks_run.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
from conftest import DEVICE, SIZE

from harness.comm import CommCounter
from methods.common import layout
from methods.common.attention import KERNELS, acc_dtype, backend_name, merge_lse

# torch >= 2.13 names these *_single; older releases only have the *_tensor spelling
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _synced(fn: Callable[[], object]) -> Callable[[], object]:
    """CUDA kernels are asynchronous: time until they finish, not until they are queued."""
    if DEVICE.type != "cuda":
        return fn

    def run():
        result = fn()
        torch.cuda.synchronize()
        return result

    return run


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v and an output gradient at the configured size (GQA: fewer KV heads)."""
    s = SIZE
    gen = torch.Generator(device=DEVICE).manual_seed(seed)

    def rand(heads: int) -> torch.Tensor:
        return torch.randn(s.batch, s.length, heads, s.head_dim, device=DEVICE, dtype=s.dtype, generator=gen)

    return rand(s.heads), rand(s.kv_heads), rand(s.kv_heads), rand(s.heads)


def _assert_close(what: str, got: torch.Tensor, ref: torch.Tensor, tol: float = SIZE.tol) -> None:
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    got, ref = got.double(), ref.double()
    assert bool(torch.isfinite(got).all()), f"{what}: not finite"
    err, scale = (got - ref).abs().max().item(), ref.abs().max().item()
    assert err <= tol * scale + tol, f"{what}: max error {err:.3g} vs max |ref| {scale:.3g} (tol {tol})"


def _math_on_prefix(q, k, v, dout, n: int):
    """Math kernel (float32 accumulation, the reference path) on the first n tokens. Causal, so its
    out, lse and dq rows are exactly the full problem's first n rows; dk and dv are not (later queries
    also attend to early keys), so those are compared with the kernel run on the same prefix."""
    q, k, v, dout = (t[:, :n] for t in (q, k, v, dout))
    out, lse = KERNELS["math"][0](q, k, v, True)
    return (out, lse), KERNELS["math"][1](dout, q, k, v, out, lse, True)


# ---- 1. attention with LSE, per kernel ------------------------------------------------------------


def test_attention_forward(benchmark, kernel: str) -> None:
    q, k, v, dout = _inputs()
    fwd = KERNELS[kernel][0]
    out, lse = benchmark(_synced(lambda: fwd(q, k, v, True)))
    assert out.dtype == q.dtype and lse.shape == (SIZE.batch, SIZE.heads, SIZE.length)
    n = SIZE.ref_length
    (ref_out, ref_lse), _ = _math_on_prefix(q, k, v, dout, n)
    _assert_close("out", out[:, :n], ref_out)
    _assert_close("lse", lse[..., :n], ref_lse)


def test_attention_forward_backward(benchmark, kernel: str) -> None:
    """The kernel-level step ring attention runs per block: forward, then backward from the final
    out/LSE (no autograd bookkeeping)."""
    q, k, v, dout = _inputs()
    fwd, bwd = KERNELS[kernel]

    def step():
        out, lse = fwd(q, k, v, True)
        return out, lse, bwd(dout, q, k, v, out, lse, True)

    out, lse, (dq, dk, dv) = benchmark(_synced(step))
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)
    n = SIZE.ref_length
    (ref_out, ref_lse), (ref_dq, ref_dk, ref_dv) = _math_on_prefix(q, k, v, dout, n)
    _assert_close("out", out[:, :n], ref_out)
    _assert_close("lse", lse[..., :n], ref_lse)
    _assert_close("dq", dq[:, :n], ref_dq)
    if n < SIZE.length:  # dk/dv of the full run have no cheap reference: rerun the kernel on the prefix
        p = [t[:, :n].contiguous() for t in (q, k, v, dout)]
        o, lse_prefix = fwd(*p[:3], True)
        dk, dv = bwd(p[3], *p[:3], o, lse_prefix, True)[1:]
    _assert_close("dk", dk[:, :n], ref_dk)
    _assert_close("dv", dv[:, :n], ref_dv)
    assert all(bool(torch.isfinite(g).all()) for g in (dq, dk, dv))


# ---- 2. LSE merge ---------------------------------------------------------------------------------


def test_lse_merge(benchmark) -> None:
    """Merging two key blocks' (out, lse), as ring attention does once per step, in the accumulation
    dtype; inputs from the kernel the harness picks here."""
    q, k, v, _ = _inputs()
    fwd = KERNELS[backend_name(DEVICE, SIZE.dtype)][0]
    half = SIZE.length // 2
    acc = acc_dtype(SIZE.dtype)
    o1, l1 = fwd(q, k[:, :half], v[:, :half], False)
    o2, l2 = fwd(q, k[:, half:], v[:, half:], False)
    o1, o2 = o1.to(acc), o2.to(acc)
    out, lse = benchmark(_synced(lambda: merge_lse(o1, l1, o2, l2)))
    assert out.dtype == acc and lse.dtype == acc
    whole_out, whole_lse = fwd(q, k, v, False)
    _assert_close("merged out", out, whole_out)
    _assert_close("merged lse", lse, whole_lse)


# ---- 3. layout extraction -------------------------------------------------------------------------

RANKS = 8


@pytest.mark.parametrize("name", ["contiguous", "zigzag", "stripe"])
def test_layout_extraction(benchmark, name: str) -> None:
    """Index lists for 8 ranks plus every rank's shard of a [B, L, hidden] activation."""
    x = torch.randn(SIZE.batch, SIZE.length, SIZE.heads * SIZE.head_dim, device=DEVICE, dtype=SIZE.dtype)

    def extract():
        indices = layout.make(name, SIZE.length, RANKS)
        return indices, [layout.shard(x, i) for i in indices]

    indices, parts = benchmark(_synced(extract))
    assert [p.shape[1] for p in parts] == [SIZE.length // RANKS] * RANKS
    assert torch.equal(torch.cat(indices).sort().values, torch.arange(SIZE.length))  # a partition
    assert torch.equal(layout.unshard(parts, indices), x)


# ---- 4. the communication counter's overhead ------------------------------------------------------


def _collective_step(x: torch.Tensor, buf: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """One of each collective kind the methods issue, with a little compute between them: the
    counter's dispatch mode sees every op, not only collectives, so compute is part of its cost."""
    dist.all_reduce(x)
    _all_gather(buf, x)
    _reduce_scatter(x, buf)
    dist.all_to_all_single(buf, x)
    return buf.view(-1, w.shape[0]) @ w


@pytest.mark.parametrize("counted", [False, True], ids=["bare", "counted"])
def test_comm_counter_overhead(benchmark, single_rank_group: dist.ProcessGroup, counted: bool) -> None:
    x0 = torch.randn(1 << 16)
    x, buf, w = x0.clone(), torch.empty_like(x0), torch.randn(256, 256)

    def step():
        if not counted:
            return _collective_step(x, buf, w), None
        with CommCounter() as counter:
            return _collective_step(x, buf, w), counter

    step()  # the first counted step pays one-time set-up (about 0.7 s here): keep it out of the rounds
    y, counter = benchmark(step)
    # one rank: every collective is the identity, so the data must come through unchanged
    assert torch.equal(x, x0) and torch.equal(buf, x0)
    torch.testing.assert_close(y, x0.view(-1, 256) @ w)
    if counted:
        kinds = [r.kind for r in counter.records]
        assert kinds == ["all_reduce", "all_gather", "reduce_scatter", "all_to_all"], kinds
        assert all(r.full_bytes == x0.nbytes and r.group_size == 1 for r in counter.records)
        assert counter.cost().bytes == {"fwd": {}, "bwd": {}}  # one-rank groups move nothing
