"""Benchmark: causal load balance of the ring layouts and per-rank memory of ring vs Ulysses.

    .venv/bin/python benchmarks/ring_balance.py [--seq-len 4096] [--world-size 4]

Runs each method as a harness job (counted step, then timed steps; gloo on CPU) on the tiny model in
float32 and prints step time (max over ranks, median over iterations) and per-rank peak memory."""

from __future__ import annotations

import argparse
import statistics

from harness.launch import launch
from harness.worker import Job, entry
from methods.common.config import ModelConfig, Problem, Workload

TINY = ModelConfig("tiny", hidden=64, heads=8, kv_heads=4, head_dim=8, ffn_hidden=128, layers=2)
VARIANTS = [
    ("ring", {"layout": "basic"}),
    ("ring", {"layout": "zigzag"}),
    ("ring", {"layout": "stripe"}),
    ("ulysses", {}),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--world-size", type=int, default=4)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    jobs = [
        Job(
            Problem(
                m,
                TINY,
                Workload(batch_size=1, seq_len=args.seq_len, causal=True),
                args.world_size,
                "float32",
                opts,
            ),
            warmup=2,
            iters=args.iters,
        )
        for m, opts in VARIANTS
    ]
    per_rank = launch(entry, (jobs,), args.world_size)
    print(f"tiny model, causal, float32, seq_len={args.seq_len}, {args.world_size} ranks (gloo, CPU)")
    for i, (method, opts) in enumerate(VARIANTS):
        ranks = [per_rank[r][i] for r in sorted(per_rank)]
        step = statistics.median(max(t) for t in zip(*(r["step_times_s"] for r in ranks)))
        peak = max(r["peak_mem_bytes"] for r in ranks)
        print(
            f"{method:8s} {opts.get('layout', 'contiguous'):8s} step {1e3 * step:8.1f} ms   "
            f"peak/rank {peak / 2**20:7.2f} MiB"
        )


if __name__ == "__main__":
    main()
