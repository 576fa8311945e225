"""The micro-benchmarks under benchmarks/ run once, timing disabled, so they cannot rot."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

from methods.common.attention import available_backends

REPO = Path(__file__).resolve().parent.parent


def test_micro_benchmarks_run_and_check_their_results():
    res = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/", "-q", "-p", "no:cacheprovider",
                          "--benchmark-disable", "-rs"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    summary = res.stdout.strip().splitlines()[-1]
    # attention forward and forward+backward per usable backend, the merge, 3 layouts, counter off/on
    gpu = torch.cuda.is_available()  # the benchmarks take GPU sizes and kernels there
    backends = available_backends(torch.device("cuda" if gpu else "cpu"), torch.bfloat16 if gpu else torch.float32)
    expected = 2 * len(backends) + 1 + 3 + 2
    assert re.search(rf"\b{expected} passed", summary) and "skipped" not in summary, summary
