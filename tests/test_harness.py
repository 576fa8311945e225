"""The Hydra app end to end: a multirun writes one row per point; bad input becomes an `invalid` row
before any rank starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.results import load

REPO = Path(__file__).resolve().parent.parent


def harness_run(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.run", *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )


def test_multirun_writes_one_row_per_point(tmp_path):
    sweep = tmp_path / "sweep"
    res = harness_run(
        "-m",
        "method=ulysses,tp_sp",
        "workload.seq_len=32,64",
        "world_size=2",
        "bench.warmup=0",
        "bench.iters=2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    df = load(sweep)
    assert len(df) == 4
    assert sorted(zip(df.method, df.seq_len)) == [
        ("tp_sp", 32),
        ("tp_sp", 64),
        ("ulysses", 32),
        ("ulysses", 64),
    ]
    assert (df.status == "ok").all(), df[["method", "error"]]
    assert (df.comm_bytes_fwd == df.theory_comm_bytes_fwd).all() and (
        df.comm_bytes_bwd == df.theory_comm_bytes_bwd
    ).all()
    assert (df.step_time_ms > 0).all() and (df.peak_mem_bytes > 0).all()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["method=ulysses", "world_size=3"], "heads=8 is not divisible by the Ulysses degree 3"),
        (["method=tp_sp", "world_size=4", "workload.seq_len=30"], "seq_len 30 is not divisible by 4"),
        (["method=ulysses", "world_size=0"], "world_size must be a positive integer"),
        (["method=no_such_method", "world_size=2"], "unknown method 'no_such_method'"),
        (
            ["method=ulysses", "backend=nccl", "world_size=1024"],
            "backend=nccl needs",
        ),  # CUDA / a GPU per rank
        (["method=ulysses", "world_size=2", "method.bogus=1"], "unknown option(s) method.bogus"),
        (
            ["method=usp", "world_size=4", "method.ulysses_degree=3", "method.ring_degree=2"],
            "ulysses_degree x method.ring_degree must equal world_size=4",
        ),
        (["method=ring", "world_size=4", "workload.seq_len=36"], "seq_len 36 is not divisible by 8"),
        (["method=ulysses", "world_size=2", "fault.kind=segfault"], "fault.kind='segfault' is not one of"),
        (
            ["method=ulysses", "world_size=2", "mode=simulate"],
            "mode='simulate' is not one of real, emulate, dryrun",
        ),
        (["method=ulysses", "world_size=2", "mode=dryrun", "verify=true"], "verify=true needs mode=real"),
        (
            ["method=ulysses", "world_size=2", "mode=emulate", "play_rank=2"],
            "play_rank must be a rank of the world",
        ),
        (
            ["method=ulysses", "world_size=2", "bench.attn_backend=fa9"],
            "bench.attn_backend='fa9': choose auto or one of",
        ),
    ],
)
def test_bad_input_is_an_invalid_row_without_ranks(tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    res = harness_run(*overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]  # a single run that is not ok exits non-zero (2: invalid)
    row = json.loads((run_dir / "result.json").read_text())
    assert row["status"] == "invalid"
    assert message in row["error"]
    assert not (run_dir / "ranks").exists()  # no rank was started


def test_unknown_choice_in_a_multirun_is_refused_up_front(tmp_path):
    res = harness_run("-m", "method=ulysses,nope", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert res.returncode != 0 and "unknown method 'nope'" in res.stderr
    assert not (tmp_path / "s").exists()
