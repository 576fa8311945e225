# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Throughput and MFU vs sequence length
#
# Three kinds of time, one row each:
#
# - **real**: `world_size` ranks run the step (NCCL on GPUs, gloo on CPU); `step_time_ms` is the median
#   over iterations of the slowest rank.
# - **emulate**: one process runs one rank's real compute (`compute_time_ms`) and the communication is
#   projected from the counted bytes and the hardware profile (`projected_comm_ms`).
#   `tokens_per_s` assumes no overlap (compute + comm), `tokens_per_s_overlap` perfect overlap
#   (max(compute, comm)), `tokens_per_s_compute` no communication at all.
# - **dryrun**: no time; only `projected_comm_ms` (the counted bytes on the profile's links).
#
# MFU has two conventions: `mfu` counts causal attention's effective FLOPs (the masked half removed;
# USP's tables do this), `mfu_dense` counts causal attention as dense (Megatron / PaLM style). The
# peak is the hardware profile's (`conf/hardware/`; the CPU profile's peak is nominal).
#
# **Devices.** Fixture and CPU rows are tiny models on a shared 2-core CPU: their absolute tokens/s
# and MFU say nothing about GPUs. Compare shapes (how a method scales with L) and ratios between
# methods, never absolute values against the papers' GPU numbers. Plot titles name the device, and
# the MFU figure beside USP's A800 numbers takes GPU rows only.
#
# `RESULTS` (the parameters cell; papermill can set it, or `$SPBENCH_RESULTS`) names the rows'
# directory; tables and figures go to `RESULTS/analysis/throughput/`, beside the rows.

# %%
import os
from pathlib import Path

import pandas as pd
import seaborn as sns

from harness import reference
from harness.labels import column, keep, with_labels
from harness.report import step_time_figure, token_axis
from harness.results import load

# %% tags=["parameters"]
RESULTS = os.environ.get("SPBENCH_RESULTS", "results/")

# %%
OUT = Path(RESULTS) / "analysis" / "throughput"
OUT.mkdir(parents=True, exist_ok=True)
df = with_labels(load(RESULTS))
ok = df[df.status == "ok"].copy() if not df.empty else df
timed = keep(ok, column(ok, "step_time_ms").notna(), "no step time (dryrun)") if not ok.empty else ok
print(f"{len(df)} rows under {RESULTS}, {len(timed)} ok rows with a step time; outputs in {OUT}")
pd.set_option("display.width", 200)
pd.set_option("display.float_format", "{:.4g}".format)


def device(row: pd.Series) -> str:
    return (
        f"{row['mode']}: {row.device_name}, {row.model} ({row.layers} layers), {row.world_size} ranks"
        f" ({row.hardware} profile)"
    )


# %% [markdown]
# ## 1. Our tokens/s and MFU (both conventions)

# %%
if timed.empty:
    print("missing: no timed (real or emulate) rows")
    throughput = pd.DataFrame()
else:
    cols = [
        "mode",
        "label",
        "model",
        "layers",
        "world_size",
        "tokens",
        "step_time_ms",
        "tokens_per_s",
        "mfu",
        "mfu_dense",
        "compute_time_ms",
        "projected_comm_ms",
        "tokens_per_s_overlap",
        "tokens_per_s_compute",
    ]
    throughput = timed.reindex(columns=cols).sort_values(["mode", "model", "layers", "label", "tokens"])
    throughput = throughput.reset_index(drop=True)
    # the effective/dense FLOP ratio is the same for every method at one L: the conventions differ only
    # in scale

    throughput["mfu_over_dense"] = throughput.mfu / throughput.mfu_dense
    throughput.to_csv(OUT / "throughput.csv", index=False)
    print(throughput.to_string(index=False))

# %%
if not throughput.empty:
    timed = timed.assign(device=timed.apply(device, axis=1))
    long = pd.concat(
        [
            timed.assign(time=q, rate=timed[c])
            for q, c in [
                ("compute + comm", "tokens_per_s"),
                ("perfect overlap", "tokens_per_s_overlap"),
                ("compute only", "tokens_per_s_compute"),
            ]
            if c in timed
        ]
    )
    long = long[long.rate.notna()].rename(columns={"rate": "tokens/s", "label": "config"})
    g = sns.relplot(
        data=long,
        x="tokens",
        y="tokens/s",
        hue="config",
        style="time",
        col="device",
        col_wrap=2,
        kind="line",
        marker="o",
        height=3.2,
        aspect=1.5,
        facet_kws={"sharex": False, "sharey": False},
    )
    for panel, ax in g.axes_dict.items():
        token_axis(ax, long[long.device == panel].tokens)
        ax.set_ylim(bottom=0)
    g.set_titles("{col_name}")
    g.tight_layout()
    g.savefig(OUT / "tokens_per_s.png")
    # the report's figure: measured step time (p10/p90 bars) beside the emulated projection
    step_time_figure(timed, OUT / "step_time.png")

# %% [markdown]
# ## 2. Projected communication at paper scale (dryrun rows)
#
# Time of the counted bytes on the row's hardware profile (bus bytes / link bandwidth + latency per
# collective, no overlap). Not a measurement: a lower bound on the communication time per step.

# %%
dry = ok[(ok["mode"] == "dryrun") & (ok.world_size > 1)] if not ok.empty else ok
if dry.empty:
    print("missing: no dryrun rows")
else:
    # one panel per model, depth and hardware profile: two profiles' times never share an axis
    dry = dry.assign(
        panel=dry.model + ", " + dry.layers.astype(str) + " layer(s), " + dry.hardware + " profile",
        config=dry.label + " N=" + dry.world_size.astype(str),
    )
    print(
        dry.pivot_table(index=["panel", "config"], columns="tokens", values="projected_comm_ms").to_string()
    )
    g = sns.relplot(
        data=dry,
        x="tokens",
        y="projected_comm_ms",
        hue="config",
        col="panel",
        col_wrap=2,
        kind="line",
        marker="o",
        height=3.2,
        aspect=1.5,
        facet_kws={"sharex": False, "sharey": False},
    )
    g.set(ylabel="projected comm per rank (ms)")
    for panel, ax in g.axes_dict.items():
        token_axis(ax, dry[dry.panel == panel].tokens)
    g.set_titles("{col_name}")
    g.tight_layout()
    g.savefig(OUT / "projected_comm.png")

# %% [markdown]
# ## 3. Beside the published numbers: ratios, not absolutes
#
# **Odysseus README perf** (Llama2-7B, 8× A100 NVLink, elapsed time of 7 steps): relative speed =
# fastest elapsed / elapsed at each length. Ours: relative tokens/s (compute + comm) at each length for
# the same methods (Odysseus-ZeRO3MLP is our `odysseus`: TP attention, ZeRO-3 MLP).

# %%
ODYSSEUS = {"ring": "Ring", "ulysses": "Ulysses", "odysseus": "Odysseus-ZeRO3MLP", "tp_sp": "TP-SP"}
perf = reference.load("odysseus_readme_perf")
perf = perf[(perf.metric == "elapsed_s") & perf.method.isin(ODYSSEUS.values()) & ~perf.oom]
perf = perf.assign(relative=perf.groupby("seq_len_tokens").value.transform("min") / perf.value)
published = perf.pivot_table(index="method", columns="seq_len_label", values="relative", sort=False)
print("published (8x A100 80GB NVLink, Llama2-7B): relative speed, fastest = 1")
print(published.to_string())
ours = timed[timed.method.isin(list(ODYSSEUS)) & ~timed.zero3] if not timed.empty else timed
if ours.empty:
    print("\nmissing: no timed rows of ring / ulysses / odysseus / tp_sp")
else:
    for dev, rows in ours.groupby(ours.apply(device, axis=1)):
        rows = rows.assign(relative=rows.tokens_per_s / rows.groupby("tokens").tokens_per_s.transform("max"))
        print(f"\nours ({dev}; not comparable in absolute terms): relative tokens/s, fastest = 1")
        print(rows.pivot_table(index="label", columns="tokens", values="relative").to_string())

# %% [markdown]
# **USP Table 6** (Llama3-8B, 2 nodes × 8 A800, MFU with causal-effective FLOPs, i.e. our `mfu`
# convention): pure sequence parallelism (TP degree 1) by Ulysses × Ring degree, against length.
# Ours: `mfu` of each configuration against length, GPU rows only: a CPU row's MFU is against a
# nominal peak and says nothing beside A800 MFU (the cell names the rows it drops).

# %%
usp = reference.load("usp_table6_megatron")
usp = usp[(usp.metric == "mfu") & (usp.tp_degree == 1) & ~usp.oom]
usp = usp.assign(
    config="ulysses " + usp.ulysses_degree.astype(str) + " x ring " + usp.ring_degree.astype(str)
)
print(usp.pivot_table(index="config", columns="seq_len_tokens", values="value").to_string())
fig_rows = [
    usp.assign(panel="USP Table 6: 16x A800 (published)", x=usp.seq_len_tokens, y=usp.value, hue=usp.config)
]
on_gpu = keep(
    timed, column(timed, "cuda_version").notna(), "not run on a GPU (MFU against a nominal CPU peak)"
)
if not on_gpu.empty:
    fig_rows.append(
        on_gpu.assign(
            panel=on_gpu.apply(device, axis=1) + " (ours)", x=on_gpu.tokens, y=on_gpu.mfu, hue=on_gpu.label
        )
    )
mfu_plot = pd.concat(fig_rows)[["panel", "x", "y", "hue"]]
g = sns.relplot(
    data=mfu_plot,
    x="x",
    y="y",
    hue="hue",
    col="panel",
    col_wrap=2,
    kind="line",
    marker="o",
    height=3.2,
    aspect=1.5,
    facet_kws={"sharex": False, "sharey": False},
)
g.set(ylabel="MFU (causal-effective)")
g.set_titles("{col_name}")
g.legend.set_title("configuration (ours) / degrees (USP)")
for panel, ax in g.axes_dict.items():
    token_axis(ax, mfu_plot[mfu_plot.panel == panel].x)
g.tight_layout()
g.savefig(OUT / "mfu_vs_published.png")

# %% [markdown]
# USP's MFU rises with length (attention's share of FLOPs grows, communication is hidden); the same
# shape in our rows would say the same about our kernels, nothing more.
