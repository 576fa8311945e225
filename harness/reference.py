"""Published reference numbers (results/reference/*.csv) as DataFrames, to set beside our own results.

    from harness import reference
    reference.names()                      # ['dsp_comm_2d_layer', ..., 'usp_table7_megatron']
    df = reference.load("usp_table6_megatron")
    df[df.metric == "tflops_per_gpu"]

Each CSV is one published table; every row carries `source` and `table`. Result tables are long-form
(`metric`, `value`, `approx`, `oom`); formula tables keep the printed text in `*_formula` columns and a
python expression over named symbols in `*_expr` columns. See results/reference/README.md."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "results" / "reference"


def names() -> list[str]:
    """Names (file stems) of the reference tables, sorted."""
    return sorted(p.stem for p in REFERENCE_DIR.glob("*.csv"))


def load(name: str) -> pd.DataFrame:
    """One reference table by name (with or without `.csv`); empty cells read as NaN."""
    stem = name[:-4] if name.endswith(".csv") else name
    path = REFERENCE_DIR / f"{stem}.csv"
    if not path.is_file():
        raise KeyError(f"no reference table {name!r}; known: {', '.join(names())}")
    return pd.read_csv(path)


def evaluate(expr: str, **symbols: float) -> float:
    """Value of one `*_expr` cell for the given symbol values (arithmetic only, no builtins)."""
    return eval(compile(expr, "<reference expr>", "eval"), {"__builtins__": {}}, dict(symbols))
