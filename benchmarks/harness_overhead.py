"""Benchmark: at world size 1 the harness's timed step costs the same as a plain loop over the same
block (the harness adds no hidden work to what it times).

    .venv/bin/python benchmarks/harness_overhead.py [--method ulysses] [--seq-len 2048] [--repeats 3]

Both sides run in a launched rank with the same thread count: the harness job (counted step, then
warm-up and timed steps) and a bare loop of forward + backward over the reference stack with the
same local attention kernel, the same shapes and dtype. Prints the medians and their ratio."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.launch import launch
from harness.worker import Job, call_in_group, entry
from methods.common.config import ModelConfig, Problem, Workload
from methods.common.layers import build_reference, local_core

MODEL = ModelConfig("bench", hidden=256, heads=8, kv_heads=4, head_dim=32, ffn_hidden=768, layers=2)


def plain_loop(p: Problem, warmup: int, iters: int) -> list[float]:
    model = build_reference(p.model, 0, p.torch_dtype)
    x = torch.randn(
        p.workload.batch_size, p.workload.seq_len, p.model.hidden, dtype=p.torch_dtype, requires_grad=True
    )
    dy = torch.randn_like(x)
    times = []
    for _ in range(warmup + iters):
        for prm in model.parameters():
            prm.grad = None
        x.grad = None
        t0 = time.perf_counter()
        model(x, p.workload.causal, core=local_core).backward(dy)  # the ranks' kernel, no SP
        times.append(time.perf_counter() - t0)
    return times[warmup:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="ulysses")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    p = Problem(args.method, MODEL, Workload(batch_size=1, seq_len=args.seq_len), 1, "float32")
    harness_ms, plain_ms = [], []
    for _ in range(args.repeats):  # alternate the two to spread machine noise evenly
        res = launch(entry, ([Job(p, warmup=3, iters=args.iters)],), 1)[0][0]
        harness_ms.append(1e3 * statistics.median(res["step_times_s"]))
        plain_ms.append(
            1e3 * statistics.median(launch(call_in_group, (plain_loop, (p, 3, args.iters)), 1)[0])
        )
    h, b = statistics.median(harness_ms), statistics.median(plain_ms)
    print(f"method={args.method} seq_len={args.seq_len} float32 world_size=1 torch={torch.__version__}")
    print(f"harness timed step  median {h:8.2f} ms   (repeats {', '.join(f'{t:.2f}' for t in harness_ms)})")
    print(f"plain loop          median {b:8.2f} ms   (repeats {', '.join(f'{t:.2f}' for t in plain_ms)})")
    print(f"ratio harness/plain {h / b:.3f}")


if __name__ == "__main__":
    main()
