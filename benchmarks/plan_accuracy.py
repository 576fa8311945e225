"""How far can the planner's compute times be trusted? Calibrate the local device (harness.plan's
`calibrate_here`), then run emulate jobs of the tiny and a small model for every method the planner
proposes (ZeRO-3 left out: it changes only communication here), and compare:

- predicted compute time (harness/work.py over the profile) with the emulate job's measured compute
  time (the played rank's step; the busiest rank N-1 is played, the last of every layout);
- the ranking of configurations by predicted step time with the ranking by emulate-projected step time
  (measured compute + projected communication), over every pair of one model's configurations.

Each model is calibrated at its own shapes (calibrate_here with the model, length and world size of
its jobs). On a machine shared with other work a step's time only ever grows: the calibration and the
measured steps count this process's CPU time (one thread), take the fastest of their repeats, and the
jobs run in rounds so that a burst of other work slows one round, not one configuration (the median
and the wall time are recorded too).

    PYTHONPATH=$PWD python benchmarks/plan_accuracy.py [--out results/calibration/plan_accuracy_cpu.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

import torch
from omegaconf import OmegaConf

from harness.plan import calibrate_here, candidates, predict, probe_problem
from harness.projection import comm_seconds
from harness.work import step_work
from harness.worker import Job, entry_single
from methods.common.config import ModelConfig, Problem, Workload
from methods.common.options import MethodOptions

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "tiny": (ModelConfig("tiny", hidden=64, heads=8, kv_heads=4, head_dim=8, ffn_hidden=128, layers=2), 256),
    "small": (
        ModelConfig("small", hidden=256, heads=8, kv_heads=4, head_dim=32, ffn_hidden=768, layers=2),
        1024,
    ),
}
WORLD = 4


def configurations(model: ModelConfig, seq_len: int) -> list[Problem]:
    base = Problem("", model, Workload(batch_size=1, seq_len=seq_len), WORLD, "float32", MethodOptions())
    valid, _, _ = candidates(base)
    keep = [p for p in valid if not getattr(p.options, "zero3", False)]
    # USP: one split per placement (its other layouts repeat ring's)
    return [
        p
        for p in keep
        if p.method != "usp" or (p.options.ulysses_degree == 2 and p.options.layout == "zigzag")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "results" / "calibration" / "plan_accuracy_cpu.json"))
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # calibration and the measured steps on the same single thread

    hardware = OmegaConf.load(ROOT / "conf" / "hardware" / "cpu.yaml")
    rows, profiles = [], {}
    for name, (model, seq_len) in MODELS.items():
        problems = configurations(model, seq_len)
        jobs = [Job(p, mode="emulate", play_rank=WORLD - 1, warmup=1, iters=args.iters) for p in problems]
        # rounds of a calibration and all configurations: a burst of other work slows one round, not
        # one configuration or the calibration alone. Each side keeps its quietest: the steps their
        # fastest, the calibration the round whose probe step its profile predicts fastest.
        calibrations, rounds = [], []
        for _ in range(args.rounds):
            calibrations.append(calibrate_here("float32", model=model, seq_len=seq_len, world_size=WORLD))
            rounds.append(entry_single(jobs))
        probe = step_work(probe_problem(model, seq_len, WORLD, "float32", "cpu"))
        profile = min(
            calibrations, key=lambda c: c.seconds(probe.work, probe.calls, model.layers, probe.causal_work)
        )
        profiles[name] = profile.to_json()
        for i, p in enumerate(problems):
            result = rounds[0][i]
            cpu_times = [t for r in rounds for t in r[i]["step_cpu_times_s"]]
            predicted = predict(p, hardware, profile, None)
            measured_s = min(cpu_times)
            comm_s = comm_seconds(result["comm_records"], hardware)
            rows.append(
                {
                    "model": name,
                    "label": predicted["label"],
                    "predicted_compute_ms": predicted["compute_ms"],
                    "measured_compute_ms": 1e3 * measured_s,
                    "measured_compute_ms_median": 1e3 * statistics.median(cpu_times),
                    "measured_wall_ms": 1e3 * min(t for r in rounds for t in r[i]["step_times_s"]),
                    "compute_rel_err": predicted["compute_ms"] / (1e3 * measured_s) - 1,
                    "predicted_step_ms": predicted["step_ms_serial"],
                    "emulate_step_ms": 1e3 * (measured_s + comm_s),
                }
            )
    summary = {"profiles": profiles, "rows": rows, "models": {}}
    for name in MODELS:
        mine = [r for r in rows if r["model"] == name]
        pairs = list(itertools.combinations(mine, 2))
        agree = sum(
            (a["predicted_step_ms"] < b["predicted_step_ms"]) == (a["emulate_step_ms"] < b["emulate_step_ms"])
            for a, b in pairs
        )
        errors = [abs(r["compute_rel_err"]) for r in mine]
        summary["models"][name] = {
            "configurations": len(mine),
            "max_abs_compute_err": max(errors),
            "median_abs_compute_err": statistics.median(errors),
            "within_25pct": sum(e <= 0.25 for e in errors),
            "ranking_pairs": len(pairs),
            "ranking_agree": agree,
            "ranking_agreement": agree / len(pairs),
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    for r in rows:
        print(
            f"{r['model']:6} {r['label']:32} compute predicted {r['predicted_compute_ms']:8.2f} ms, measured "
            f"{r['measured_compute_ms']:8.2f} ms ({100 * r['compute_rel_err']:+.0f}%); step predicted "
            f"{r['predicted_step_ms']:8.2f}, emulate {r['emulate_step_ms']:8.2f}"
        )
    for name, s in summary["models"].items():
        print(
            f"{name}: {s['within_25pct']}/{s['configurations']} within 25% "
            f"(max {100 * s['max_abs_compute_err']:.0f}%), ranking agreement "
            f"{s['ranking_agree']}/{s['ranking_pairs']} = {100 * s['ranking_agreement']:.0f}%"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
