"""Benchmark: the causal linear-attention kernel (methods/common/linear_attention.py) is not
launch-bound. Prints, for one tiny_linear block (conf/model/tiny_linear.yaml, one layer) on CPU,
the median forward + backward step time at L=4096 without and with decay, and the aten-op count of
one forward + backward of the bare kernel at L=1K and L=16K (B=1, H=2, D=8, on the meta device).

    .venv/bin/python benchmarks/linear_kernel.py [--seq-len 4096] [--repeats 5] [--threads N]

Numbers measured before and after the batched rewrite are in benchmarks/README.md."""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from methods.common.config import ModelConfig
from methods.common.layers import build_reference, local_core
from methods.common.linear_attention import LinearKernel, head_decays

TINY_LINEAR = ModelConfig(
    "tiny_linear", hidden=64, heads=8, kv_heads=4, head_dim=8, ffn_hidden=128, layers=1, kind="linear"
)


class OpCount(TorchDispatchMode):
    """Counts every aten op dispatched while it is on."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def kernel_ops(length: int, decay: bool, heads: int = 2, dim: int = 8, device: str = "meta") -> int:
    """aten ops of one forward + backward of the causal kernel at `length` tokens (B=1)."""
    q, k, v = (torch.randn(1, length, heads, dim, device=device, requires_grad=True) for _ in range(3))
    kernel = LinearKernel(head_decays(heads) if decay else None)
    with OpCount() as count:
        out = kernel(q, k, v, True)
        torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    return count.ops


def block_step_ms(length: int, decay: bool, repeats: int, warmup: int = 1) -> float:
    """Median ms of forward + backward of one tiny_linear block through the layer's kernel (float32)."""
    cfg = replace(TINY_LINEAR, extra={"decay": True}) if decay else TINY_LINEAR
    model = build_reference(cfg, 0, torch.float32)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, length, cfg.hidden, generator=gen, requires_grad=True)
    dy = torch.randn(x.shape, generator=gen)
    times = []
    for _ in range(warmup + repeats):
        for prm in model.parameters():
            prm.grad = None
        x.grad = None
        t0 = time.perf_counter()
        model(x, True, core=local_core).backward(dy)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times[warmup:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for decay in (False, True):
        ops = {n: kernel_ops(n, decay) for n in (1024, 16384)}
        ms = block_step_ms(args.seq_len, decay, args.repeats)
        print(
            f"decay={decay!s:5}  block step L={args.seq_len}: {ms:8.1f} ms   "
            f"kernel fwd+bwd aten ops: L=1K {ops[1024]:6d}, L=16K {ops[16384]:6d}"
        )


if __name__ == "__main__":
    main()
