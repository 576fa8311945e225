"""Benchmark: LASP-2 vs LASP-1 vs Ulysses vs TP-SP on the linear-attention block (tiny_linear, 4 ranks,
gloo on CPU, float32, causal) at two sequence lengths: counted bytes per rank and step time.

    .venv/bin/python benchmarks/lasp2_compare.py [--seq-lens 1024 4096]"""

from __future__ import annotations

import argparse
import statistics

from harness.launch import launch
from harness.metrics import max_comm
from harness.worker import Job, entry
from methods.common.config import ModelConfig, Problem, Workload

LINEAR = ModelConfig(
    "tiny_linear", hidden=64, heads=8, kv_heads=4, head_dim=8, ffn_hidden=128, layers=2, kind="linear"
)
METHODS = ("lasp2", "lasp1", "ulysses", "tp_sp")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--world-size", type=int, default=4)
    args = ap.parse_args()
    cases = [(m, L) for L in args.seq_lens for m in METHODS]
    jobs = [
        Job(
            Problem(m, LINEAR, Workload(batch_size=1, seq_len=L), args.world_size, "float32"),
            warmup=2,
            iters=5,
        )
        for m, L in cases
    ]
    per_rank = launch(entry, (jobs,), args.world_size)
    print(
        f"tiny_linear (2 layers), causal, float32, {args.world_size} ranks (gloo, CPU); "
        "bytes per rank per step"
    )
    print(
        f"{'method':8s} {'seq_len':>7s} {'fwd bytes':>10s} {'bwd bytes':>10s} {'step ms':>8s}   fwd by kind"
    )
    for i, (method, length) in enumerate(cases):
        ranks = [per_rank[r][i] for r in sorted(per_rank)]
        comm = max_comm(ranks)
        step = statistics.median(max(t) for t in zip(*(r["step_times_s"] for r in ranks)))
        print(
            f"{method:8s} {length:7d} {sum(comm['fwd'].values()):10.0f} {sum(comm['bwd'].values()):10.0f} "
            f"{1e3 * step:8.1f}   {comm['fwd']}"
        )


if __name__ == "__main__":
    main()
