"""benchmarks/gpu_check.sh --cpu: the device check's every step at CPU sizes, so the script that a lent
GPU runs once cannot rot. One run (about a minute on an idle 2-core box) checks what it wrote."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import harness.methods

REPO = Path(__file__).resolve().parent.parent
STEPS = [
    "versions",
    "kernels",
    "blocks",
    "micro",
    "emulate_llm_32k",
    "emulate_llm_128k",
    "emulate_video",
    "emulate_linear",
    "real",
    "summary",
]


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def check(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHON": sys.executable}
    res = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--cpu", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return res, out


def test_every_step_passes(check):
    res, out = check
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    steps = rows(out / "steps.csv")
    assert sorted(s["step"] for s in steps) == sorted(STEPS)
    assert all(s["status"] == "passed" for s in steps), steps
    assert (out / "COMMAND.txt").read_text().startswith("# produced by: bash benchmarks/gpu_check.sh --cpu")
    assert json.loads((out / "versions.json").read_text())["torch"]
    assert json.loads((out / "micro_benchmarks.json").read_text())["benchmarks"]


def test_summary_has_the_target_rows(check):
    _, out = check
    text = (out / "summary.md").read_text()
    table = rows(out / "summary.csv")
    sections = {r["section"] for r in table}
    assert sections == {"a", "b", "c", "d"}, sections
    a, b = (next(r for r in table if r["section"] == s) for s in "ab")
    assert "Ulysses" in a["item"] and a["target"] == ">= 40%" and a["measured"] != "-"
    assert "ring (zigzag)" in b["item"] and b["target"] == "<= 1.15" and b["measured"] != "-"
    kernels = {r["item"].split()[1] for r in table if r["section"] == "c"}
    assert {"math", "cpu_flash"} <= kernels
    assert all(r["met"] == "yes" for r in table if r["section"] in "cd"), table
    assert {f"step {s}" for s in STEPS[:-1]} <= {r["item"] for r in table if r["section"] == "d"}
    assert "| a |" in text and "| b |" in text


def test_kernel_and_block_errors_within_tolerance(check):
    _, out = check
    kernels = rows(out / "kernels.csv")
    assert {r["kernel"] for r in kernels} >= {"math", "cpu_flash"}
    assert {r["head_dim"] for r in kernels} == {"64", "72", "128"} and {r["causal"] for r in kernels} == {
        "True",
        "False",
    }
    for r in kernels + rows(out / "blocks.csv"):
        tol, lse_tol = float(r["tol"]), float(r["lse_tol"])
        assert r["ok"] == "True" and not r["error"], r
        assert float(r["lse_abs_err"]) <= lse_tol and all(
            float(r[f"{t}_rel_err"]) <= tol for t in ("out", "dq", "dk", "dv")
        ), r
    blocks = rows(out / "blocks.csv")
    assert {(r["method"], r["layout"]) for r in blocks} == {
        ("ring", "basic"),
        ("ring", "zigzag"),
        ("ring", "stripe"),
        ("allgather_cp", "zigzag"),
        ("allgather_cp", "contiguous"),
    }
    timing = rows(out / "kernel_timing.csv")
    assert all(float(r["fwd_bwd_tflops"]) > 0 for r in timing), timing


def _job_rows(directory: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(directory.rglob("result.json"))]


def test_emulate_rows_are_ok_and_count_the_theory(check):
    _, out = check
    parts = {part: _job_rows(out / "emulate" / part) for part in ("llm_32k", "llm_128k", "video", "linear")}
    assert sorted(r["method"] for r in parts["llm_32k"]) == harness.methods.for_workload("llm", "llama")
    assert sorted(r["method"] for r in parts["llm_128k"]) == ["ring", "ulysses"]
    assert [r["method"] for r in parts["video"]] == ["dsp"] and [r["method"] for r in parts["linear"]] == [
        "lasp2"
    ]
    for row in sum(parts.values(), []):
        assert row["status"] == "ok" and row["mode"] == "emulate", (row["method"], row["error"])
        assert (
            row["comm_bytes_fwd"] == row["theory_comm_bytes_fwd"]
            and row["comm_bytes_bwd"] == row["theory_comm_bytes_bwd"]
        )
        assert row["comm_detail"] == row["theory_comm_detail"]
        assert row["compute_time_ms"] > 0 and row["mfu_compute"] > 0
    assert next(r for r in parts["llm_128k"] if r["method"] == "ring")["layout"] == "zigzag"


def test_real_verify_rows_are_exact(check):
    _, out = check
    real = _job_rows(out / "real")
    assert sorted((r["method"], r["zero3"]) for r in real) == [
        ("odysseus", None),  # no zero3 option: its MLP is always FSDP2-sharded
        ("ring", False),
        ("ulysses", False),
        ("ulysses", True),
    ]
    for row in real:
        assert row["status"] == "ok" and row["mode"] == "real" and row["backend"] == "gloo", row["error"]
        assert row["verify_out_rel_err"] <= 1e-4 and row["verify_grad_rel_err"] <= 1e-4, row
