"""The code passes the project's linters, as configured in pyproject.toml: ruff's checks and its
format, and mypy (basic mode) on methods/common and harness. Each runs as a subprocess of the
environment's own tools on the whole tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["ruff", "check", "."], id="ruff-check"),
        pytest.param(["ruff", "format", "--check", "."], id="ruff-format"),
        pytest.param(["mypy"], id="mypy"),  # the packages are named in [tool.mypy] files
    ],
)
def test_linter_passes(command: list[str]) -> None:
    res = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(command)} found:\n{res.stdout}{res.stderr}"
