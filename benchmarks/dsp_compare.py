"""Benchmark: DSP vs the embedded baselines on the spatial-temporal block.

    .venv/bin/python benchmarks/dsp_compare.py

1. tiny_video on 4 ranks (gloo, CPU, float32): counted bytes per rank per step and step time.
2. dsp_720m at the paper's 0.5M-token point (T=128 x S=4096, B=1, bf16, SP size 2 as in the paper's
   end-to-end table, and 8): per-layer forward bytes from the cost models (which the tests hold equal
   to counted bytes), beside the paper's 8M / 4M/N / 2M / 2M/N."""

from __future__ import annotations

import statistics

import pandas as pd

from harness.cost_table import dsp_table
from harness.launch import launch
from harness.metrics import max_comm
from harness.worker import Job, entry
from methods.common.config import ModelConfig, Problem, Workload

TINY_VIDEO = ModelConfig(
    "tiny_video",
    hidden=32,
    heads=4,
    kv_heads=4,
    head_dim=8,
    ffn_hidden=128,
    layers=2,
    kind="video",
    extra={"temporal_rope": True},
)
DSP_720M = ModelConfig(
    "dsp_720m",
    hidden=1152,
    heads=16,
    kv_heads=16,
    head_dim=72,
    ffn_hidden=4608,
    layers=28,
    kind="video",
    extra={"temporal_rope": True},
)
VARIANTS = [
    ("dsp", {}),
    ("ulysses", {"video_attention": "temporal"}),
    ("ulysses", {"video_attention": "all"}),
    ("ring", {}),
    ("tp_sp", {}),
]


def main() -> None:
    workload = Workload("video", batch_size=1, frames=16, spatial=256)
    jobs = [Job(Problem(m, TINY_VIDEO, workload, 4, "float32", o), warmup=2, iters=5) for m, o in VARIANTS]
    per_rank = launch(entry, (jobs,), 4)
    print("tiny_video (2 layers), T=16 x S=256, B=1, float32, 4 ranks (gloo, CPU); bytes per rank per step")
    for i, (method, opts) in enumerate(VARIANTS):
        ranks = [per_rank[r][i] for r in sorted(per_rank)]
        comm = max_comm(ranks)
        step = statistics.median(max(t) for t in zip(*(r["step_times_s"] for r in ranks)))
        label = method + (f"({opts['video_attention']})" if opts else "")
        print(
            f"  {label:18s} fwd {sum(comm['fwd'].values()):9.0f}  bwd {sum(comm['bwd'].values()):9.0f}  "
            f"step {1e3 * step:7.1f} ms   fwd {comm['fwd']}"
        )
    for n in (2, 8):
        point = Problem(
            "dsp", DSP_720M, Workload("video", batch_size=1, frames=128, spatial=4096), n, "bfloat16"
        )
        print(f"\ndsp_720m, T=128 x S=4096 (0.5M tokens), B=1, bf16, N={n}: per layer, forward, per rank")
        with pd.option_context("display.float_format", "{:.4g}".format):
            print(dsp_table(point).to_string(index=False))


if __name__ == "__main__":
    main()
