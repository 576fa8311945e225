"""conf/sweep/: every experiment composes, and every point of its sweep is a valid problem (checked
the way a job checks it, without starting ranks); the GPU emulate experiments run CPU-sized."""

from __future__ import annotations

import itertools
import json

import pytest
from hydra import compose, initialize_config_dir

from harness.groups import CONF_DIR, options
from harness.problem import problem_from_cfg
from harness.run import _check_mode

from .test_harness import harness_run

EXPERIMENTS = options("sweep")


def points(experiment: str) -> list[list[str]]:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"+sweep={experiment}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    axes = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]
    return [list(p) for p in itertools.product(*axes)]


def test_the_published_experiments_are_there():
    assert {
        "odysseus_perf",
        "usp_table4",
        "usp_table6",
        "dsp_scaling",
        "lasp2_table6",
        "dryrun_1m",
        "gpu_emulate",
        "gpu_emulate_video",
        "gpu_emulate_linear",
    } <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_point_is_a_valid_problem(experiment):
    grid = points(experiment)
    assert len(grid) >= 2
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for point in grid:
            cfg = compose("config", overrides=[f"+sweep={experiment}", *point])
            problem = problem_from_cfg(cfg)  # raises InvalidConfig with the reason
            _check_mode(cfg, problem)
            assert cfg.dtype == "bfloat16" and problem.model.name not in ("tiny", "tiny_linear", "tiny_video")


CPU_SIZED = {
    "gpu_emulate": ["model=tiny", "workload.seq_len=128", "world_size=4"],
    "gpu_emulate_video": ["model=tiny_video", "workload.frames=8", "workload.spatial=16"],
    "gpu_emulate_linear": ["model=tiny_linear", "workload.seq_len=256", "world_size=4"],  # plays rank 1
}


@pytest.mark.parametrize("experiment", CPU_SIZED)
def test_gpu_emulate_runs_cpu_sized(tmp_path, experiment):
    sweep = tmp_path / "s"
    res = harness_run(
        "-m",
        f"+sweep={experiment}",
        *CPU_SIZED[experiment],
        "dtype=float32",
        "bench.warmup=0",
        "bench.iters=1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/result.json"))]
    overridden = {o.split("=")[0] for o in CPU_SIZED[experiment]}  # a command-line value replaces its axis
    assert len(rows) == len(
        {tuple(o for o in point if o.split("=")[0] not in overridden) for point in points(experiment)}
    )
    for row in rows:
        assert row["status"] == "ok" and row["mode"] == "emulate", (row["method"], row["error"])
        assert (
            row["comm_detail"] == row["theory_comm_detail"] and row["step_time_ms"] > row["compute_time_ms"]
        )
