"""What names a configuration: the row fields that together identify one, and a short human label of
the method and its options (`usp u2xr4 zigzag ulysses_inner`, `ring zigzag zero3`, `ulysses`). The
report, the console table, the progress lines and the notebooks all name configurations with these."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

import methods
from methods.common.config import Problem

# the method options that shape a run; a row holds None where an option does not apply to its method
OPTION_COLUMNS = [
    "ulysses_degree",
    "ring_degree",
    "layout",
    "placement",
    "zero3",
    "video_attention",
    "decay",
    "adaln",  # video block conventions (model.adaln, model.qk_norm): None outside video models
    "qk_norm",
]
# the row fields that together name one configuration: rows equal on all of them are repeats of one point
CONFIG_COLUMNS = [
    "method",
    "world_size",
    "seq_len",
    "frames",
    "spatial",
    "batch_size",
    "model",
    "layers",
    "hidden",  # the model's shape, which a command line may change under one model name
    "heads",
    "kv_heads",
    "head_dim",
    "ffn_hidden",
    "causal",
    "dtype",
    "mode",
    *OPTION_COLUMNS,
]


def _set(value: Any) -> bool:
    """An option that says something: not missing (None, NaN) and not a switched-off flag."""
    return value is not None and value is not False and not (isinstance(value, float) and pd.isna(value))


def label(row: Mapping[str, Any]) -> str:
    """The method and the options set on it, in a fixed order: degrees as `u<U>xr<R>` (or `u<U>`, `r<R>`
    alone), then layout, placement, video attention, decay, and `zero3` when parameters are sharded.
    Reads only the fields the row has (a dict, or a DataFrame row)."""
    opts: dict[str, Any] = {name: row.get(name) for name in OPTION_COLUMNS}
    parts = [str(row.get("method"))]
    degrees = [
        f"{prefix}{int(opts[name])}"
        for prefix, name in (("u", "ulysses_degree"), ("r", "ring_degree"))
        if _set(opts[name])
    ]
    if degrees:
        parts.append("x".join(degrees))
    parts += [
        str(opts[name]) for name in ("layout", "placement", "video_attention", "decay") if _set(opts[name])
    ]
    parts += [name for name in ("zero3", "adaln", "qk_norm") if _set(opts[name])]
    return " ".join(parts)


def column(df: pd.DataFrame, name: str) -> pd.Series:
    """A column, or all-missing when no row has it (dryrun rows have no times, invalid rows no bytes)."""
    return df[name] if name in df else pd.Series(float("nan"), index=df.index)


def config_columns(df: pd.DataFrame) -> list[str]:
    """The configuration columns that `df` has (older rows lack the option fields)."""
    return [c for c in CONFIG_COLUMNS if c in df.columns]


def with_labels(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with a `label` column (computed for every row, so old and new rows read alike) and `tokens`:
    tokens per step, B*L for language rows and B*T*S for video rows (whose seq_len is 0)."""
    if df.empty:
        return df.assign(label=pd.Series(dtype=str), tokens=pd.Series(dtype=float))
    video = column(df, "frames").fillna(0) * column(df, "spatial").fillna(0)
    tokens = video.where(video > 0, column(df, "seq_len")) * column(df, "batch_size").fillna(1)
    return df.assign(label=[label(r) for r in df.to_dict("records")], tokens=tokens.astype(float))


def keep(df: pd.DataFrame, mask: pd.Series, why: str) -> pd.DataFrame:
    """The rows where `mask` holds. The others are dropped with a printed line saying how many, why, and
    which configurations (notebooks say what they leave out instead of averaging it in)."""
    dropped = df[~mask]
    if len(dropped):
        names = sorted(set(with_labels(dropped)["label"]))
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        print(f"dropped {len(dropped)} row(s), {why}: {shown}")
    return df[mask]


def resolved_options(problem: Problem) -> dict:
    """Every option column with the value the run used; None where the option does not apply (the
    method has no such option, video attention outside video workloads, decay outside linear models).
    `decay` is a model option, recorded with the method's because it shapes the run the same way."""
    effective = methods.resolve_options(problem)
    options = {name: effective.get(name) for name in OPTION_COLUMNS}
    if not problem.workload.frames:
        options["video_attention"] = None
    if problem.model.kind in ("linear", "hybrid"):  # the decay table's name (model.decay_rule), or False
        extra = problem.model.extra
        options["decay"] = extra.get("decay_rule") if extra.get("decay") else False
    if problem.model.kind == "video":
        options["adaln"] = bool(problem.model.extra.get("adaln"))
        options["qk_norm"] = bool(problem.model.extra.get("qk_norm"))
    return options


def problem_label(p: Problem) -> str:
    """The label of a problem's configuration, as its row will read (the planner names its rows so)."""
    return label({"method": p.method, **resolved_options(p)})
