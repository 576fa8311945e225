"""Every typed value is checked inside the job, before any rank starts (item 7), a real job whose
per-rank memory model exceeds a rank's memory is refused (item 8), and a rank killed by the kernel's
OOM killer is classified `oom` (item 8, on synthetic failure records).

Before (main at 1d9d6a2, recorded): `world_size=abc` (TypeError: '>=' not supported ...),
`workload.seq_len=abc` / `model.heads=abc` (TypeError: not all arguments converted during string
formatting), `workload.batch_size=abc` (TypeError: '<' not supported ...), `fault.rank=abc` (ValueError:
invalid literal for int()) and `bench.timeout_s=abc` (TypeError: can't multiply sequence by non-int)
ended in raw tracebacks, exit code 1, no row; `world_size=true`, `workload.seq_len=0` / `-8`,
`bench.iters=0` / `-1`, `bench.warmup=-1`, `bench.timeout_s=0` / `-5`, `model.heads=0` and `fault.rank=2`
(world of 2) passed every check and were launched; nothing compared the memory model with the machine
(a ~32 GiB-per-rank llama3_8b real job on this 23 GiB CPU machine was launched); and a rank dead by
SIGKILL was never `oom` ("signal 9" counted as a peer's echo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from harness.groups import CONF_DIR
from harness.problem import problem_from_cfg
from harness.run import _check_memory, classify_failure, execute

REPO = Path(__file__).resolve().parent.parent


def job(tmp_path: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["world_size=2", "workload.seq_len=32", *overrides])
    return execute(cfg, tmp_path)


@pytest.mark.parametrize(
    "override,words",
    [
        ("world_size=abc", "world_size='abc': Value 'abc' of type 'str' could not be converted to Integer"),
        ("world_size=true", "world_size=True: Value 'True' of type 'bool' could not be converted to Integer"),
        ("workload.seq_len=abc", "workload.seq_len='abc'"),
        ("model.heads=abc", "model.heads='abc'"),
        ("workload.batch_size=abc", "workload.batch_size='abc'"),
        ("fault.rank=abc", "fault.rank='abc'"),
        (
            "bench.timeout_s=abc",
            "bench.timeout_s='abc': Value 'abc' of type 'str' could not be converted to Float",
        ),
        ("verify=maybe", "verify='maybe'"),
        ("workload.seq_len=0", "workload.seq_len must be at least 1, got 0"),
        ("workload.seq_len=-8", "workload.seq_len must be at least 1, got -8"),
        ("bench.iters=0", "bench.iters must be at least 1"),
        ("bench.iters=-1", "bench.iters must be at least 1"),
        ("bench.warmup=-1", "bench.warmup must be at least 0, got -1"),
        ("bench.timeout_s=0", "bench.timeout_s must be positive"),
        ("bench.timeout_s=-5", "bench.timeout_s must be positive"),
        ("model.heads=0", "model.heads must be at least 1, got 0"),
        ("fault.rank=2", "fault.rank must be a rank of the world (0..1), got 2"),
        ("fault.rank=-1", "fault.rank must be a rank of the world (0..1), got -1"),
    ],
)
def test_a_wrong_value_is_an_invalid_row_naming_its_key(tmp_path, override, words):
    row = job(tmp_path, override)
    assert row["status"] == "invalid", row
    assert words in row["error"], row["error"]
    assert not (tmp_path / "ranks").exists()  # no rank was started


def test_typed_values_are_converted(tmp_path):
    from harness.schema import validate

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["world_size='2'", "bench.timeout_s=30", "fault.kind=nan", "+model.extra_knob=1"],
        )
    typed = validate(cfg)
    assert typed.world_size == 2 and isinstance(typed.bench.timeout_s, float) and typed.fault.kind == "nan"
    # nothing added that the config lacks (the schema types hybrid_period, tiny.yaml has none)
    assert typed.model.extra_knob == 1 and "hybrid_period" not in typed.model
    assert typed.method == cfg.method


def test_a_wrong_type_on_the_command_line_is_a_row_not_a_traceback(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "harness.run", "world_size=abc", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]  # 2: an invalid row
    row = json.loads((tmp_path / "run" / "result.json").read_text())
    assert row["status"] == "invalid" and row["error"].startswith("world_size='abc'")


def test_a_job_larger_than_a_rank_s_memory_is_refused(tmp_path):
    row = job(tmp_path, "model=llama3_8b", "workload.seq_len=256")  # ~32 GiB of float32 weights per rank
    assert row["status"] == "invalid", row
    assert "per-rank memory model needs" in row["error"] and "available RAM" in row["error"]
    assert "bench.allow_oversubscribe=true" in row["error"]
    assert not (tmp_path / "ranks").exists()


def test_allow_oversubscribe_lets_it_through():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        big = compose(
            "config", overrides=["world_size=2", "model=llama3_8b", "bench.allow_oversubscribe=true"]
        )
        small = compose("config", overrides=["world_size=2", "workload.seq_len=32"])
    _check_memory(big, problem_from_cfg(big), "gloo", 2)  # no exception
    _check_memory(small, problem_from_cfg(small), "gloo", 2)


def _failures(tmp_path: Path) -> dict[int, ProcessFailure]:
    """Rank 1 dead by SIGKILL without an error file; rank 0 lost its connection to it."""
    peer = tmp_path / "0" / "error.json"
    peer.parent.mkdir()
    peer.write_text(
        json.dumps(
            {
                "message": {
                    "message": "RuntimeError: [pair.cc:553] Connection closed by peer",
                    "extraInfo": {"py_callstack": "", "timestamp": "0"},
                }
            }
        )
    )
    return {
        0: ProcessFailure(local_rank=0, pid=11, exitcode=1, error_file=str(peer)),
        1: ProcessFailure(local_rank=1, pid=12, exitcode=-9, error_file=str(tmp_path / "1" / "error.json")),
    }


def test_a_rank_killed_by_the_oom_killer_is_oom(tmp_path):
    err = ChildFailedError("entry", _failures(tmp_path))
    status, reason = classify_failure(err, oom_kills=1, available_frac=0.6)
    assert status == "oom" and reason.startswith("rank 1: out of memory: killed by SIGKILL"), reason
    assert "OOM-kill counter rose by 1" in reason
    status, reason = classify_failure(err, oom_kills=0, available_frac=0.01)  # counter unreadable or missed
    assert status == "oom" and "available memory 1.0%" in reason, reason


def test_a_sigkill_without_memory_pressure_is_an_error_of_that_rank(tmp_path):
    status, reason = classify_failure(
        ChildFailedError("entry", _failures(tmp_path)), oom_kills=0, available_frac=0.6
    )
    assert status == "error" and reason.startswith("rank 1 failed: Signal 9 (SIGKILL)"), reason
