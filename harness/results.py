"""Result rows: one `result.json` per job, written atomically; `load` gathers them into a DataFrame."""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import pandas as pd

ROW_FILE = "result.json"


def write_row(job_dir: str | Path, row: dict) -> Path:
    """Write the row as job_dir/result.json via a temporary file and a rename (never half a row)."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=job_dir, prefix=".result.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(row, f, indent=1, sort_keys=True, default=str)
    path = job_dir / ROW_FILE
    os.replace(tmp, path)
    return path


def read_row(path: str | Path) -> dict:
    with open(path) as f:
        return json.load(f)


def load(directory: str | Path) -> pd.DataFrame:
    """Every row under `directory` (recursively) as one DataFrame, with the row's `job_dir`. Files that
    cannot be read are reported by path (a warning, and `df.attrs["unreadable"]`), never dropped silently."""
    rows, unreadable = [], []
    for path in sorted(Path(directory).rglob(ROW_FILE)):
        try:
            row = read_row(path)
        except (OSError, ValueError) as e:
            unreadable.append(f"{path}: {e}")
            continue
        row["job_dir"] = str(path.parent)
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["unreadable"] = unreadable
    if unreadable:
        warnings.warn(f"{len(unreadable)} unreadable result file(s): " + "; ".join(unreadable), stacklevel=2)
    return df
