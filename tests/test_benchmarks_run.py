"""The micro-benchmarks under benchmarks/ run once, timing disabled, so they cannot rot: each one
checks its own result, and none may be skipped or left out."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from methods.common.attention import available_backends

REPO = Path(__file__).resolve().parent.parent


def test_micro_benchmarks_run_and_check_their_results(tmp_path: Path) -> None:
    report = tmp_path / "micro.xml"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks/",
            "--benchmark-disable",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]

    suite = ET.parse(report).getroot().find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "skipped", "failures", "errors")}
    assert counts["tests"] > 0 and counts["skipped"] == counts["failures"] == counts["errors"] == 0, counts
    names = {case.get("name") for case in suite.iter("testcase")}
    assert len(names) == counts["tests"]

    # the benchmarks describe their own configuration (benchmarks/conftest.py) ...
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    kernels = props["kernels"].split(",")
    expected = {
        f"test_{what}[{k}]" for k in kernels for what in ("attention_forward", "attention_forward_backward")
    }
    expected |= {"test_lse_merge", "test_comm_counter_overhead[bare]", "test_comm_counter_overhead[counted]"}
    expected |= {f"test_layout_extraction[{name}]" for name in ("contiguous", "zigzag", "stripe")}
    assert names == expected, names ^ expected
    # ... and the probe that picked the kernels may not drop one the library itself would use here
    # (on CPU: math and cpu_flash)
    library = available_backends(torch.device(props["device"]), getattr(torch, props["dtype"]))
    missing = set(library) - set(kernels)
    assert not missing, f"kernels the library uses here but the benchmarks left out: {missing}"
