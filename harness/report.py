"""`python -m harness.report DIR`: the table of every row under DIR."""
from __future__ import annotations

import sys

import pandas as pd

from .results import load

COLUMNS = ["method", "model", "seq_len", "frames", "world_size", "status", "step_time_ms", "tokens_per_s", "peak_mem_MiB",
           "comm_fwd_MiB", "theory_fwd_MiB", "comm_bwd_MiB", "theory_bwd_MiB", "verify_err", "error"]


def table(df: pd.DataFrame) -> pd.DataFrame:
    mib = 2.0 ** 20
    out = pd.DataFrame({
        "method": df["method"], "model": df["model"], "seq_len": df["seq_len"], "frames": df.get("frames"), "world_size": df["world_size"], "status": df["status"],
        "step_time_ms": df.get("step_time_ms"), "tokens_per_s": df.get("tokens_per_s"),
        "peak_mem_MiB": df.get("peak_mem_bytes", pd.Series(dtype=float)) / mib,
        "comm_fwd_MiB": df.get("comm_bytes_fwd", pd.Series(dtype=float)) / mib,
        "theory_fwd_MiB": df.get("theory_comm_bytes_fwd", pd.Series(dtype=float)) / mib,
        "comm_bwd_MiB": df.get("comm_bytes_bwd", pd.Series(dtype=float)) / mib,
        "theory_bwd_MiB": df.get("theory_comm_bytes_bwd", pd.Series(dtype=float)) / mib,
        "verify_err": df.get("verify_grad_rel_err"), "error": df.get("error"),
    })
    return out.reindex(columns=COLUMNS).sort_values(["model", "method", "seq_len", "frames"], na_position="last").reset_index(drop=True)


def main(directory: str) -> None:
    df = load(directory)
    if df.empty:
        sys.exit(f"no result rows under {directory}")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(table(df).to_string(index=False))


if __name__ == "__main__":
    main(sys.argv[1])
