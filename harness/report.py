"""`python -m harness.report DIR`: the table of every row under DIR, printed, and DIR/report.md with
PNG plots (tokens/s and peak memory vs sequence length, counted comm bytes by kind) beside it."""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .results import load  # noqa: E402

COLUMNS = ["method", "model", "seq_len", "frames", "world_size", "status", "step_time_ms", "tokens_per_s", "peak_mem_MiB",
           "comm_fwd_MiB", "theory_fwd_MiB", "comm_bwd_MiB", "theory_bwd_MiB", "verify_err", "error"]
MiB = 2.0 ** 20


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    """A column, or all-missing when no row has it (dryrun sweeps have no times, invalid rows no bytes)."""
    return df[name] if name in df else pd.Series(None, index=df.index, dtype=float)


def table(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "method": df["method"], "model": df["model"], "seq_len": df["seq_len"], "frames": _col(df, "frames"),
        "world_size": df["world_size"], "status": df["status"],
        "step_time_ms": _col(df, "step_time_ms"), "tokens_per_s": _col(df, "tokens_per_s"),
        "peak_mem_MiB": _col(df, "peak_mem_bytes") / MiB,
        "comm_fwd_MiB": _col(df, "comm_bytes_fwd") / MiB, "theory_fwd_MiB": _col(df, "theory_comm_bytes_fwd") / MiB,
        "comm_bwd_MiB": _col(df, "comm_bytes_bwd") / MiB, "theory_bwd_MiB": _col(df, "theory_comm_bytes_bwd") / MiB,
        "verify_err": _col(df, "verify_grad_rel_err"), "error": _col(df, "error"),
    })
    return out.reindex(columns=COLUMNS).sort_values(["model", "method", "seq_len", "frames"], na_position="last").reset_index(drop=True)


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with a `label` (method, +ZeRO3 when sharded) and `tokens` per step (B*L, or B*T*S for video)."""
    zero3 = _col(df, "zero3").eq(True)  # missing (invalid rows) is not sharded
    tokens = _col(df, "frames").fillna(0) * _col(df, "spatial").fillna(0)
    tokens = tokens.where(tokens > 0, _col(df, "seq_len")) * _col(df, "batch_size").fillna(1)
    return df.assign(label=df["method"].astype(str) + zero3.map({True: "+ZeRO3", False: ""}), tokens=tokens)


def markdown(df: pd.DataFrame) -> str:
    """The report's table: one line per row, sizes, outcome, time, both MFUs, memory, comm counted vs theory."""
    df = _labelled(df)
    comm, theory = _col(df, "comm_bytes_fwd") + _col(df, "comm_bytes_bwd"), \
        _col(df, "theory_comm_bytes_fwd") + _col(df, "theory_comm_bytes_bwd")
    out = pd.DataFrame({
        "method": df["label"], "mode": _col(df, "mode"), "model": df["model"], "world_size": df["world_size"],
        "tokens": df["tokens"], "status": df["status"], "step_ms": _col(df, "step_time_ms"),
        "tokens/s": _col(df, "tokens_per_s"), "mfu": _col(df, "mfu"), "mfu_dense": _col(df, "mfu_dense"),
        "peak_GiB": _col(df, "peak_mem_bytes") / 2**30, "comm_MiB": comm / MiB, "theory_comm_MiB": theory / MiB,
        "comm_eq_theory": (comm == theory).where(comm.notna()),
    }).sort_values(["mode", "model", "method", "tokens"]).reset_index(drop=True)
    return out.to_markdown(index=False, floatfmt=".4g")


def plots(df: pd.DataFrame, directory: Path) -> list[Path]:
    """PNG plots of the ok rows into `directory`; a plot with no data is not written."""
    ok = _labelled(df[df["status"] == "ok"])
    written = []
    sns.set_theme(style="whitegrid")
    for name, y, ylabel in [("tokens_per_s.png", "tokens_per_s", "tokens/s"),
                            ("peak_memory.png", "peak_mem_bytes", "peak memory per rank (GiB)")]:
        rows = ok[_col(ok, y).notna()]
        if rows.empty:
            continue
        rows = rows.assign(y=rows[y] / (2**30 if y == "peak_mem_bytes" else 1),
                           series=rows["label"] + " N=" + rows["world_size"].astype(str))
        g = sns.relplot(data=rows, x="tokens", y="y", hue="series", style="mode", col="model", col_wrap=3, kind="line",
                        marker="o", errorbar=None, height=3, aspect=1.3, facet_kws={"sharex": False, "sharey": False})
        g.set(xscale="log", xlabel="tokens per step", ylabel=ylabel)
        g.tight_layout()  # the grid's own layout keeps its legend outside the panels
        written.append(_save(g.figure, directory / name))
    # bytes by kind: one stacked bar per method, its longest sequence that communicated (world size > 1)
    longest = ok[ok["world_size"] > 1].sort_values("tokens").drop_duplicates(["model", "label"], keep="last")
    comm = pd.DataFrame([{"model": r.model, "method": r.label, "kind": kind, "GiB": b / 2**30}
                         for _, r in longest.iterrows() if isinstance(r.get("comm_detail"), dict)
                         for phase in r.comm_detail.values() for kind, b in phase.items()])
    if not comm.empty:
        kinds = sorted(comm["kind"].unique())
        palette = dict(zip(kinds, sns.color_palette(n_colors=len(kinds))))  # one colour per kind in every panel
        models = sorted(comm["model"].unique())
        cols = min(3, len(models))
        fig, axes = plt.subplots(-(-len(models) // cols), cols, figsize=(4.5 * cols, 3.5 * -(-len(models) // cols)),
                                 squeeze=False)
        for ax, model in zip(axes.flat, models):
            sns.histplot(data=comm[comm["model"] == model], x="method", weights="GiB", hue="kind", hue_order=kinds,
                         palette=palette, multiple="stack", shrink=0.8, legend=False, ax=ax)
            ax.set(title=f"{model}, longest sequence per method", ylabel="GiB per rank (fwd + bwd)", xlabel="")
            ax.tick_params(axis="x", rotation=30)
        for ax in axes.flat[len(models):]:
            ax.set_visible(False)
        fig.legend(handles=[Patch(color=palette[k], label=k) for k in kinds], loc="center left", bbox_to_anchor=(1, 0.5),
                   title="kind")
        fig.tight_layout()
        written.append(_save(fig, directory / "comm_bytes.png"))
    return written


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(directory: str | Path) -> list[Path]:
    """Write DIR/report.md and the plots; returns the paths written (report.md first)."""
    directory = Path(directory)
    df = load(directory)
    written = plots(df, directory)
    body = [f"# spbench report: {directory}", "", f"{len(df)} rows, "
            + ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items()), "",
            "Bytes are per rank per step (bus convention); `mfu` counts causal-effective FLOPs, `mfu_dense` dense.",
            "", markdown(df), ""] + [f"![{p.stem}]({p.name})" for p in written]
    report = directory / "report.md"
    report.write_text("\n".join(body) + "\n")
    return [report, *written]


def main(directory: str) -> None:
    df = load(directory)
    if df.empty:
        sys.exit(f"no result rows under {directory}")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(table(df).to_string(index=False))
    print()
    for path in write_report(directory):
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1])
