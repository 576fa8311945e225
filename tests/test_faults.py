"""Sweeps that survive: a 5-point multirun with two ok points, two invalid ones and a crash yields 5
rows with the right statuses, leaves no rank process or temporary directory behind, and a second run
reruns only the 3 failed points. Every kind of fault (out of memory, crash, hang, non-finite values)
on the first and the last rank is in tests/test_fault_matrix.py."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.results import load

from .dist import MARK, rank_processes

REPO = Path(__file__).resolve().parent.parent

POINTS = {  # name -> (config of the point, expected status, expected words in the reason)
    "ok_ulysses": ({}, "ok", None),
    "ok_tp_sp": ({"defaults": [{"override /method": "tp_sp"}]}, "ok", None),
    "invalid_heads": ({"world_size": 3}, "invalid", "heads=8 is not divisible by the Ulysses degree 3"),
    "invalid_seq_len": ({"workload": {"seq_len": 31}}, "invalid", "seq_len 31 is not divisible by 2"),
    "crash": (
        {"fault": {"kind": "crash", "rank": 0, "step": 1}},
        "error",
        "rank 0 failed: RuntimeError: injected crash",
    ),
}
BASE = {"world_size": 2, "workload": {"seq_len": 32}}


def _sweep(tmp: Path, sweep_dir: Path) -> subprocess.CompletedProcess:
    names = ",".join(POINTS)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), MARK: str(tmp), "TMPDIR": str(tmp / "tmp")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.run",
            "-m",
            f"+point={names}",
            "bench.warmup=0",
            "bench.iters=2",
            "bench.timeout_s=20",
            f"hydra.searchpath=[file://{tmp / 'conf'}]",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    (tmp / "conf" / "point").mkdir(parents=True)
    for name, (point, _, _) in POINTS.items():
        config = OmegaConf.merge(BASE, point)
        (tmp / "conf" / "point" / f"{name}.yaml").write_text(
            "# @package _global_\n" + OmegaConf.to_yaml(config)
        )
    sweep_dir = tmp / "sweep"
    (tmp / "tmp").mkdir()  # the sweeps' temporary directory: other runs on the machine have their own
    t0 = time.monotonic()
    first = _sweep(tmp, sweep_dir)
    first_s = time.monotonic() - t0
    rows_first = load(sweep_dir)
    leftovers = rank_processes(str(tmp)), set((tmp / "tmp").glob("spbench-launch-*"))
    second = _sweep(tmp, sweep_dir)
    return {
        "first": first,
        "first_s": first_s,
        "rows_first": rows_first,
        "leftovers": leftovers,
        "second": second,
        "rows_second": load(sweep_dir),
    }


def _by_point(df):
    points = {}
    for _, row in df.iterrows():
        overrides = (Path(row.job_dir) / ".hydra" / "overrides.yaml").read_text()
        name = next(n for n in POINTS if f"+point={n}\n" in overrides + "\n")
        points[name] = row
    return points


def test_every_point_is_a_row_with_its_status_and_reason(sweeps):
    assert sweeps["first"].returncode == 0, sweeps["first"].stderr[-3000:]
    assert sweeps["first_s"] < 180
    points = _by_point(sweeps["rows_first"])
    assert sorted(points) == sorted(POINTS)
    for name, (_, status, words) in POINTS.items():
        assert points[name].status == status, (name, points[name].error)
        if words:
            assert words in points[name].error, (name, points[name].error)


def test_invalid_points_start_no_rank(sweeps):
    points = _by_point(sweeps["rows_first"])
    for name in ("invalid_heads", "invalid_seq_len"):
        assert not (Path(points[name].job_dir) / "ranks").exists()


def test_no_rank_process_or_temporary_directory_is_left(sweeps):
    ranks, temp_dirs = sweeps["leftovers"]
    assert ranks == [] and temp_dirs == set()


def test_rerun_skips_ok_points_and_reruns_the_failed_ones(sweeps):
    assert sweeps["second"].returncode == 0, sweeps["second"].stderr[-3000:]
    before, after = _by_point(sweeps["rows_first"]), _by_point(sweeps["rows_second"])
    rerun = sorted(n for n in POINTS if before[n].run_id != after[n].run_id)
    assert rerun == sorted(n for n, (_, status, _) in POINTS.items() if status != "ok")
    assert sweeps["second"].stdout.count("[skip]") == 2


def test_load_reports_unreadable_rows(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "result.json").write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable result file"):
        df = load(tmp_path)
    assert len(df) == 0 and str(tmp_path / "a" / "result.json") in df.attrs["unreadable"][0]
