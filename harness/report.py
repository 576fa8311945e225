"""`python -m harness.report DIR`: one table of every row under DIR (printed, and in DIR/report.md under a
provenance header) and one figure per question, written beside the rows:

- step_time.png: which method is fastest as length grows (measured step time with p10/p90 error bars;
  emulated = compute + projected communication, dashed, beside the real step of the same configuration);
- peak_memory.png: which uses least memory (peak per rank, dashed: the memory model; dotted: the hardware
  profile's capacity, crosses: points that do not fit);
- comm_bytes.png: which moves least data (counted bytes per rank per step, markers, against the cost model).

Every series is one full configuration (harness.labels.CONFIG_COLUMNS): two configurations are never
averaged together. Panels split what must not share an axis: model, layer count, hardware profile, mode."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from .labels import CONFIG_COLUMNS, column, with_labels
from .results import load
from .units import Kind, fmt, fmt_tokens, unit_for

log = logging.getLogger(__name__)

PROVENANCE = [
    "mode",
    "hardware",
    "device_name",
    "torch_version",
    "cuda_version",
    "nccl_version",
    "git_sha",
    "git_dirty",
    "hostname",
    "cpu_model",
    "python_version",
]
PANEL = ["model", "layers", "hardware", "mode"]  # never mixed on one axis
SIZE = ["seq_len", "frames", "spatial"]  # the x axis (tokens per step)
# named in the series when they vary within a panel (everything else in CONFIG_COLUMNS is in the label)
SHOWN_IN_SERIES = {
    "world_size": "N={}",
    "batch_size": "B={}",
    "dtype": "{}",
    "causal": "causal={}",
    "hidden": "d={}",
    "heads": "H={}",
    "kv_heads": "kv={}",
    "head_dim": "hd={}",
    "ffn_hidden": "ffn={}",
}
MARKERS = "osD^v<>p"


def table(df: pd.DataFrame) -> pd.DataFrame:
    """The one table of the report and the console: a line per row, every time and size in the unit that
    fits it, counted communication and memory beside their models."""
    df = with_labels(df)
    comm = column(df, "comm_bytes_fwd") + column(df, "comm_bytes_bwd")
    theory = column(df, "theory_comm_bytes_fwd") + column(df, "theory_comm_bytes_bwd")
    out = pd.DataFrame(
        {
            "label": df["label"],
            "mode": column(df, "mode"),
            "model": column(df, "model"),
            "layers": column(df, "layers"),
            "N": column(df, "world_size"),
            "tokens": df["tokens"].map(fmt_tokens, na_action="ignore"),
            "hardware": column(df, "hardware"),
            "status": column(df, "status"),
        }
    )
    out = out.assign(_model=df["model"].astype(str), _tokens=df["tokens"])
    scaled: list[tuple[str, pd.Series, Kind]] = [
        ("step", column(df, "step_time_ms") / 1e3, "seconds"),
        ("tokens/s", column(df, "tokens_per_s"), "count"),
    ]
    for name, values, kind in scaled:
        _scaled(out, name, values, kind)
    for name in ("mfu", "mfu_dense"):
        out[name] = column(df, name).map("{:.3g}".format, na_action="ignore")
    for name, values in [
        ("peak_mem", column(df, "peak_mem_bytes")),
        ("model_mem", column(df, "theory_mem_bytes")),
        ("comm", comm),
        ("model_comm", theory),
    ]:
        _scaled(out, name, values, "bytes")
    out["comm=model"] = (comm == theory).where(comm.notna())
    if "fits" in df:
        out["fits"] = df["fits"]
    out["error"] = column(df, "error").map(lambda e: str(e)[:80], na_action="ignore")
    out = out.dropna(axis=1, how="all")  # a dryrun sweep has no times: no empty columns
    keys = ["_model", "layers", "mode", "label", "N", "_tokens"]
    out = out.sort_values([k for k in keys if k in out], na_position="last", kind="stable")
    return out.drop(columns=["_model", "_tokens"]).reset_index(drop=True)


def _scaled(out: pd.DataFrame, name: str, values: pd.Series, kind: Kind) -> None:
    """A column of `values`, each in the unit that fits it (a table mixes 1 MiB CPU rows with 30 GiB ones)."""
    out[name] = values.map(lambda v: fmt(v, kind), na_action="ignore")


def provenance(df: pd.DataFrame) -> list[str]:
    """Markdown lines naming where the rows come from: each field's values, with counts when they differ."""
    lines = []
    for field in PROVENANCE:
        counts = column(df, field).dropna().astype(str).value_counts()
        if counts.empty:
            continue
        values = (
            counts.index[0] if len(counts) == 1 else ", ".join(f"{v} ({n} rows)" for v, n in counts.items())
        )
        lines.append(f"- {field}: {values}")
    return lines


def series(df: pd.DataFrame) -> pd.DataFrame:
    """The ok rows, one per configuration (a repeated configuration keeps its latest row), with `panel`
    (what may share an axis) and `series` (one name per configuration within a panel's axis)."""
    ok = with_labels(df[column(df, "status") == "ok"])
    keys = [c for c in CONFIG_COLUMNS + ["hardware"] if c in ok]
    if "timestamp" in ok:
        ok = ok.sort_values("timestamp", kind="stable")
    repeats = ok.duplicated(subset=keys, keep="last")
    if repeats.any():
        log.info("%d repeated configuration(s): the latest row of each is plotted", repeats.sum())
    ok = ok[~repeats]
    ok = ok.assign(
        panel=[", ".join(_panel_part(k, r.get(k)) for k in PANEL if k in ok) for r in ok.to_dict("records")]
    )
    varying = [c for c in SHOWN_IN_SERIES if c in ok and ok[c].nunique(dropna=True) > 1]
    names = ok["label"]
    for c in varying:
        names = names + " " + ok[c].map(SHOWN_IN_SERIES[c].format)
    return ok.assign(series=names)


def _panel_part(key: str, value: Any) -> str:
    if key == "layers":
        return f"{int(value)} layer" + ("s" if int(value) != 1 else "")
    return str(value)


def _common_words(names: list[str]) -> list[str]:
    """The words every series name shares (said once in the title, not in every legend entry)."""
    if len(names) < 2:
        return []
    shared = set(names[0].split()).intersection(*(n.split() for n in names[1:]))
    return [w for w in names[0].split() if w in shared]


def _figure(rows: pd.DataFrame, title: str, ylabel: str, kind: Kind, draw, path: Path) -> Path:
    """One figure: a panel per `panel` value (sorted), `draw(ax, rows of one series, colour, marker, divisor)`
    for each series, a log token axis ticked at the sizes present, and beside each panel a legend of what
    varies there (what all its series share goes into the panel's title)."""
    panels = sorted(rows["panel"].unique())
    cols = min(2, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(8.4 * cols, 4.2 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        here = rows[rows["panel"] == panel]
        names = sorted(here["series"].unique())
        shared = _common_words(names)
        divisor, unit = unit_for(draw.values(here), kind)
        handles = []
        for i, (name, one) in enumerate(here.groupby("series", sort=True)):
            colour, marker = f"C{i % 10}", MARKERS[i % len(MARKERS)]  # equal values stay visible
            draw(ax, one.sort_values("tokens"), colour, marker, divisor)
            short = " ".join(w for w in name.split() if w not in shared) or name
            handles.append(Line2D([], [], color=colour, marker=marker, label=short))
        _axes(ax, here, f"{ylabel} ({unit})" if unit else ylabel, draw.values(here) / divisor)
        ax.set_title(panel + (f"\nall: {' '.join(shared)}" if shared else ""), fontsize=10)
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    height = 4.2 * nrows  # inches; the title and the line-style legend take the top 0.7 inch
    fig.suptitle(title, fontsize=12, y=1 - 0.1 / height, va="top")
    styles = draw.legend(rows)
    fig.legend(
        handles=styles,
        loc="upper center",
        ncol=len(styles),
        fontsize=9,
        frameon=False,
        bbox_to_anchor=(0.5, 1 - 0.35 / height),
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / height))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def token_axis(ax: plt.Axes, tokens: pd.Series) -> None:
    """A log2 x axis ticked at the token counts present (at most 7 labels, written as 32K, 1M)."""
    sizes = sorted(tokens.dropna().unique())
    ax.set_xscale("log", base=2)
    step = max(1, -(-len(sizes) // 7))
    ax.xaxis.set_major_locator(FixedLocator(sizes[::step]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_tokens(v)))
    ax.xaxis.set_minor_locator(NullLocator())
    if len(sizes) == 1:
        ax.set_xlim(sizes[0] / 1.5, sizes[0] * 1.5)
    ax.set_xlabel("tokens per step")


def _axes(ax: plt.Axes, rows: pd.DataFrame, ylabel: str, yvalues: pd.Series) -> None:
    """Log token axis ticked at the sizes present; log y only when the values span more than 30x."""
    token_axis(ax, rows["tokens"])
    positive = yvalues[yvalues > 0]
    if len(positive) and positive.max() / positive.min() > 30:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # 1-2-5 ticks: labels even within a decade
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    elif len(positive):
        ax.set_ylim(0, positive.max() * 1.08)
    ax.set(xlabel="tokens per step", ylabel=ylabel)
    ax.grid(True, alpha=0.3)


class StepTime:
    """Step time: real rows solid with p10/p90 error bars, emulated rows dashed (a projection)."""

    @staticmethod
    def legend(rows: pd.DataFrame) -> list[Line2D]:
        modes = set(rows["mode"])
        return [
            h
            for mode, h in [
                ("real", Line2D([], [], color="grey", label="real: measured, p10-p90 bars")),
                ("emulate", Line2D([], [], color="grey", ls="--", label="emulate: compute + projected comm")),
            ]
            if mode in modes
        ]

    @staticmethod
    def values(rows: pd.DataFrame) -> pd.Series:
        return pd.concat([rows["step_time_ms"], column(rows, "step_time_ms_p90")]).dropna() / 1e3

    def __call__(self, ax: plt.Axes, rows: pd.DataFrame, colour: str, marker: str, divisor: float) -> None:
        for mode, one in rows.groupby("mode"):
            y = one["step_time_ms"] / 1e3 / divisor
            lo = (column(one, "step_time_ms_p10") / 1e3 / divisor).fillna(y)
            hi = (column(one, "step_time_ms_p90") / 1e3 / divisor).fillna(y)
            ax.errorbar(
                one["tokens"],
                y,
                yerr=[y - lo, hi - y],
                color=colour,
                marker=marker,
                capsize=3,
                ms=5,
                ls="--" if mode == "emulate" else "-",
            )


class PeakMemory:
    """Peak memory per rank (markers, solid), the memory model (dashed), the capacity (dotted) and the
    points that do not fit it (red crosses)."""

    @staticmethod
    def legend(rows: pd.DataFrame) -> list[Line2D]:
        handles = [
            Line2D([], [], color="grey", marker="o", label="peak (measured, or dryrun)"),
            Line2D([], [], color="grey", ls="--", label="memory model"),
        ]
        if PeakMemory.near_capacity(rows).any():
            handles.append(Line2D([], [], color="black", ls=":", label="capacity of the hardware profile"))
        if column(rows, "fits").eq(False).any():
            handles.append(Line2D([], [], color="red", marker="x", ls="", ms=8, mew=2, label="does not fit"))
        return handles

    @staticmethod
    def near_capacity(rows: pd.DataFrame) -> pd.Series:
        """The capacities within 3x of the largest peak (drawn; one far above would squash the data)."""
        capacity = column(rows, "mem_capacity_bytes").dropna()
        return capacity[capacity <= 3 * rows["peak_mem_bytes"].max()]

    def values(self, rows: pd.DataFrame) -> pd.Series:
        cols = [column(rows, "peak_mem_bytes"), column(rows, "theory_mem_bytes"), self.near_capacity(rows)]
        return pd.concat(cols).dropna()

    def __call__(self, ax: plt.Axes, rows: pd.DataFrame, colour: str, marker: str, divisor: float) -> None:
        ax.plot(rows["tokens"], rows["peak_mem_bytes"] / divisor, color=colour, marker=marker, ms=5)
        theory = column(rows, "theory_mem_bytes")
        if theory.notna().any():
            ax.plot(rows["tokens"], theory / divisor, color=colour, ls="--", lw=1)
        # a series draws the capacities near its own peak: together, those near the panel's largest peak
        near = self.near_capacity(rows)
        for capacity in near.unique():
            ax.axhline(capacity / divisor, color="black", ls=":", lw=1)
        far = sorted(set(column(rows, "mem_capacity_bytes").dropna()) - set(near))
        notes = [
            f"capacity {fmt(c, 'bytes')}" + ("" if c in set(near) else " (far above)")
            for c in sorted(set(near)) + far
        ]
        for note in notes:
            if note not in {t.get_text() for t in ax.texts}:
                ax.text(0.01, 0.97 - 0.07 * len(ax.texts), note, transform=ax.transAxes, fontsize=8, va="top")
        over = rows[column(rows, "fits").eq(False)]
        ax.plot(over["tokens"], over["peak_mem_bytes"] / divisor, "x", color="red", ms=8, mew=2)


class CommBytes:
    """Counted bytes per rank per step, fwd + bwd (markers), and the cost model (dashed line)."""

    @staticmethod
    def legend(rows: pd.DataFrame) -> list[Line2D]:
        return [
            Line2D([], [], color="grey", marker="o", ls="", label="counted"),
            Line2D([], [], color="grey", ls="--", label="cost model"),
        ]

    @staticmethod
    def values(rows: pd.DataFrame) -> pd.Series:
        return pd.concat([rows["comm"], rows["theory_comm"]]).dropna()

    def __call__(self, ax: plt.Axes, rows: pd.DataFrame, colour: str, marker: str, divisor: float) -> None:
        ax.plot(rows["tokens"], rows["comm"] / divisor, color=colour, marker=marker, ls="", ms=6)
        ax.plot(rows["tokens"], rows["theory_comm"] / divisor, color=colour, ls="--", lw=1)


def step_time_figure(df: pd.DataFrame, path: Path) -> Path | None:
    """Which method is fastest: the timed rows' step times (None when no row has one)."""
    rows = series(df)
    rows = rows[column(rows, "step_time_ms").notna()]
    if rows.empty:
        return None
    # real and emulated rows of one configuration share a panel: measured beside projected
    rows = rows.assign(
        panel=[", ".join(_panel_part(k, r[k]) for k in PANEL[:-1]) for _, r in rows.iterrows()]
    )
    title = "Which method is fastest as length grows? (time per training step, lower is better)"
    return _figure(rows, title, "step time", "seconds", StepTime(), path)


def memory_figure(df: pd.DataFrame, path: Path) -> Path | None:
    """Which method uses least memory: peak per rank against the memory model and the capacity."""
    rows = series(df)
    rows = rows[column(rows, "peak_mem_bytes").notna()]
    if rows.empty:
        return None
    return _figure(
        rows,
        "Which method uses least memory? (peak per rank)",
        "peak memory per rank",
        "bytes",
        PeakMemory(),
        path,
    )


def comm_figure(df: pd.DataFrame, path: Path) -> Path | None:
    """Which method moves least data: counted bytes per rank per step against the cost model."""
    rows = series(df)
    rows = rows.assign(
        comm=column(rows, "comm_bytes_fwd") + column(rows, "comm_bytes_bwd"),
        theory_comm=column(rows, "theory_comm_bytes_fwd") + column(rows, "theory_comm_bytes_bwd"),
    )
    rows = rows[rows["comm"] > 0]  # a world-size-1 row communicates nothing
    if rows.empty:
        return None
    return _figure(
        rows,
        "Which method moves least data? (bytes per rank per step, fwd + bwd)",
        "communication per rank",
        "bytes",
        CommBytes(),
        path,
    )


def plots(df: pd.DataFrame, directory: Path) -> list[Path]:
    """The three figures (those with data) into `directory`; returns their paths."""
    figures = [
        step_time_figure(df, directory / "step_time.png"),
        memory_figure(df, directory / "peak_memory.png"),
        comm_figure(df, directory / "comm_bytes.png"),
    ]
    return [path for path in figures if path is not None]


def write_report(directory: str | Path) -> list[Path]:
    """Write DIR/report.md and the figures; returns the paths written (report.md first)."""
    directory = Path(directory)
    df = load(directory)
    written = plots(df, directory)
    statuses = ", ".join(f"{n} {s}" for s, n in column(df, "status").value_counts().items())
    body = [
        f"# spbench report: {directory}",
        "",
        f"{len(df)} rows: {statuses}",
        "",
        "## Provenance",
        "",
        *provenance(df),
        "",
        "## Rows",
        "",
        (
            "Bytes are per rank per step (bus convention); `mfu` counts causal-effective FLOPs, "
            "`mfu_dense` dense; `model_*` columns are the methods' cost and memory models."
        ),
        "",
        table(df).astype(object).fillna("-").to_markdown(index=False),
        "",
        "## Figures",
        "",
        *[f"![{p.stem}]({p.name})" for p in written],
    ]
    report = directory / "report.md"
    report.write_text("\n".join(body) + "\n")
    return [report, *written]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.report",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", help="a results directory: every result.json under it is a row")
    args = parser.parse_args(argv)  # no argument: usage on stderr, exit 2
    df = load(args.directory)
    if df.empty:
        print(f"no result rows under {args.directory}", file=sys.stderr)
        return 1
    with pd.option_context(
        "display.width", 250, "display.max_columns", 40, "display.float_format", "{:.4g}".format
    ):
        print(table(df).to_string(index=False, na_rep="-"))
    print()
    for path in write_report(args.directory):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
