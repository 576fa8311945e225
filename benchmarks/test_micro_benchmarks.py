"""Micro-benchmarks (pytest-benchmark) of the pieces every method's step is made of. CPU-sized by
default, GPU-sized (Llama3-8B attention, bf16) when CUDA is present. Each one also checks its result,
so a broken kernel fails here rather than timing garbage.

    .venv/bin/python -m pytest benchmarks/ --benchmark-enable [--benchmark-json=out.json]

The test suite runs them once with timing disabled (tests/test_benchmarks_run.py)."""
from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist

from harness.comm import CommCounter
from methods.common import layout as layouts
from methods.common.attention import KERNELS, available_backends, merge_lse

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# (batch, length, heads, kv heads, head dim, dtype)
SIZES = {"cpu": (1, 256, 8, 4, 64, torch.float32), "cuda": (1, 8192, 32, 8, 128, torch.bfloat16)}
B, L, H, HKV, D, DTYPE = SIZES[DEVICE.type]
BACKENDS = available_backends(DEVICE, DTYPE)


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _qkv(seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    q = torch.randn(B, L, H, D, device=DEVICE, dtype=DTYPE, generator=gen)
    k, v = (torch.randn(B, L, HKV, D, device=DEVICE, dtype=DTYPE, generator=gen) for _ in range(2))
    return q, k, v, torch.randn(q.shape, device=DEVICE, dtype=DTYPE, generator=gen)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-2) -> bool:
    a, b = a.float(), b.float()
    return bool((a - b).abs().max() <= tol * b.abs().max() + 1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_forward(benchmark, backend):
    q, k, v, _ = _qkv()
    fwd = KERNELS[backend][0]
    out, lse = benchmark(lambda: (fwd(q, k, v, True), _sync())[0])
    ref_out, ref_lse = KERNELS["math"][0](q[:, :512], k[:, :512], v[:, :512], True)  # causal: a prefix is exact
    assert _close(out[:, :512], ref_out) and _close(lse[..., :512], ref_lse)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_forward_backward(benchmark, backend):
    q, k, v, dout = _qkv()
    fwd, bwd = KERNELS[backend]

    def step():
        out, lse = fwd(q, k, v, True)
        grads = bwd(dout, q, k, v, out, lse, True)
        _sync()
        return grads
    dq, dk, dv = benchmark(step)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    assert all(bool(torch.isfinite(g).all()) for g in (dq, dk, dv))


def test_lse_merge(benchmark):
    q, k, v, _ = _qkv()
    half = L // 2
    o1, l1 = KERNELS[BACKENDS[0]][0](q, k[:, :half], v[:, :half], False)
    o2, l2 = KERNELS[BACKENDS[0]][0](q, k[:, half:], v[:, half:], False)
    o1, o2 = o1.float(), o2.float()
    out, lse = benchmark(lambda: (merge_lse(o1, l1, o2, l2), _sync())[0])
    whole, whole_lse = KERNELS[BACKENDS[0]][0](q, k, v, False)
    assert _close(out, whole) and _close(lse, whole_lse)


@pytest.mark.parametrize("name", ["contiguous", "zigzag", "stripe"])
def test_layout_extraction(benchmark, name):
    n = 8
    x = torch.randn(B, L, H * D, device=DEVICE, dtype=DTYPE)

    def extract():
        indices = layouts.make(name, L, n)
        parts = [layouts.shard(x, i) for i in indices]
        _sync()
        return indices, parts
    indices, parts = benchmark(extract)
    assert torch.equal(layouts.unshard(parts, indices), x)


@pytest.fixture(scope="module")
def single_rank_group():
    """A one-rank gloo group (a real process group: the counter sees real collectives)."""
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'store')}", rank=0, world_size=1)
        yield dist.group.WORLD
        dist.destroy_process_group()


def _collectives(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    dist.all_reduce(x)
    dist.all_gather_into_tensor(out, x)
    dist.reduce_scatter_tensor(x, out)
    return (x * 2).sum()


@pytest.mark.parametrize("counted", [False, True], ids=["bare", "counted"])
def test_comm_counter_overhead(benchmark, single_rank_group, counted):
    x = torch.randn(1 << 16)

    def step():
        if not counted:
            return _collectives(x), None
        with CommCounter() as counter:
            return _collectives(x), counter
    _, counter = benchmark(step)
    if counted:
        assert counter.calls()["fwd"] == {"all_reduce": 1, "all_gather": 1, "reduce_scatter": 1}
