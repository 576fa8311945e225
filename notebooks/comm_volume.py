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
# # Communication volume: counted vs cost model vs the papers
#
# Every row carries `comm_detail` (bytes the harness counted on a step, per rank, split by phase and
# collective kind) and `theory_comm_detail` (the method's cost model for the same configuration).
# Bytes follow the nccl-tests **bus** convention: all_gather / reduce_scatter / all_to_all move
# (n-1)/n of the full tensor, all_reduce 2(n-1)/n, send its bytes (recv counts 0).
#
# The papers state volumes in **elements**, mostly **dropping (n-1)/n**, and not always for the same
# scope (USP and Odysseus: forward + backward per layer; DSP: forward only per 2D layer; LASP-2: per
# communication step). Below, each published expression (`results/reference/*.csv`, `*_expr` columns)
# is evaluated at the row's shapes and converted to bytes with the row's element size, so the two
# numbers sit side by side in the same unit. The papers' tables are per layer: they are set beside
# dryrun rows (fake tensors, exact bytes) of `model.layers=1` only; rows of other depths are dropped
# there, and the cell says so.
#
# `RESULTS` (the parameters cell; papermill can set it, or `$SPBENCH_RESULTS`) names the rows'
# directory; tables and figures go to `RESULTS/analysis/comm_volume/`, beside the rows. A section with
# no rows says so.

# %%
import os
from pathlib import Path

import pandas as pd
import seaborn as sns
from hydra import compose, initialize_config_dir

from harness import reference
from harness.cost_table import DSP_PAPER, dsp_table, odysseus_table
from harness.groups import CONF_DIR
from harness.labels import keep, with_labels
from harness.problem import problem_from_cfg
from harness.results import load
from harness.units import fmt_tokens, unit_for

# %% tags=["parameters"]
RESULTS = os.environ.get("SPBENCH_RESULTS", "results/")

# %%
OUT = Path(RESULTS) / "analysis" / "comm_volume"
OUT.mkdir(parents=True, exist_ok=True)
df = with_labels(load(RESULTS))
ok = df[df.status == "ok"].copy() if not df.empty else df
print(f"{len(df)} rows under {RESULTS}, {len(ok)} ok; outputs in {OUT}")
pd.set_option("display.width", 200)
pd.set_option("display.float_format", "{:.4g}".format)


def shapes(row: pd.Series):
    """A row's model, workload, world size and dtype as the harness's Problem, composed from the same
    Hydra config the run used (the cost tables set each method and its options themselves)."""
    size = (
        [f"workload.frames={int(row.frames)}", f"workload.spatial={int(row.spatial)}"]
        if row.workload == "video"
        else [f"workload.seq_len={int(row.seq_len)}"]
    )
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"method={row.method}",
                f"model={row.model}",
                f"model.layers={row.layers}",
                f"workload={row.workload}",
                *size,
                f"world_size={row.world_size}",
                f"dtype={row['dtype']}",
            ],
        )
    return problem_from_cfg(cfg)


def total(detail: dict, skip: tuple = ()) -> int:
    """Bytes of fwd + bwd, leaving out the collective kinds in `skip`."""
    return sum(b for phase in detail.values() for kind, b in phase.items() if kind not in skip)


def show(records: list[dict], csv: str, missing: str) -> pd.DataFrame:
    """The table of `records`, saved as `csv` and printed; or the line saying which rows are missing."""
    table = pd.DataFrame(records)
    if table.empty:
        print(f"missing: {missing}")
    else:
        table.to_csv(OUT / csv, index=False)
        print(table.to_string(index=False))
    return table


ELEM_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
MiB = 2.0**20

# %% [markdown]
# ## 1. Counted vs cost model, every row
#
# `equal` is True when every (phase, kind) entry of the counted bytes equals the cost model's.

# %%
if ok.empty:
    print("missing: no ok rows")
    counted_vs_theory = pd.DataFrame()
else:
    counted_vs_theory = (
        pd.DataFrame(
            {
                "mode": ok["mode"],
                "method": ok["label"],
                "model": ok["model"],
                "layers": ok["layers"],
                "world_size": ok["world_size"],
                "tokens": ok["tokens"].astype(int),
                "counted_fwd_MiB": ok.comm_bytes_fwd / MiB,
                "theory_fwd_MiB": ok.theory_comm_bytes_fwd / MiB,
                "counted_bwd_MiB": ok.comm_bytes_bwd / MiB,
                "theory_bwd_MiB": ok.theory_comm_bytes_bwd / MiB,
                "equal": ok.comm_detail == ok.theory_comm_detail,
            }
        )
        .sort_values(["mode", "model", "layers", "method", "tokens"])
        .reset_index(drop=True)
    )
    counted_vs_theory.to_csv(OUT / "comm_counted_vs_theory.csv", index=False)
    print(counted_vs_theory.to_string(index=False))
    print(f"\n{counted_vs_theory.equal.sum()} of {len(counted_vs_theory)} rows: counted == cost model")

# %% [markdown]
# Counted bytes per configuration and collective kind (dryrun rows at the longest sequence of each
# model and depth; one panel per model and layer count, each in the unit that fits it).

# %%
dry = ok[ok["mode"] == "dryrun"] if not ok.empty else ok
dry = keep(dry, dry.world_size > 1, "world size 1 communicates nothing") if not dry.empty else dry
if dry.empty:
    print("missing: no dryrun rows")
else:
    depth = dry.model + ", " + dry.layers.astype(str) + " layer(s)"
    longest = dry[dry.tokens == dry.groupby(depth).tokens.transform("max")]
    by_kind = []
    for _, group in longest.groupby(depth):
        divisor, unit = unit_for([total(d) for d in group.comm_detail], "bytes")  # each panel in its own unit
        by_kind += [
            {
                "panel": f"{r.model}, {r.layers} layer{'s' if r.layers != 1 else ''}, "
                f"{fmt_tokens(r.tokens)} tokens ({unit})",
                "config": r.label,
                "kind": kind,
                "bytes": b / divisor,
            }
            for _, r in group.iterrows()
            for kinds in r.comm_detail.values()
            for kind, b in kinds.items()
        ]
    by_kind = pd.DataFrame(by_kind)
    g = sns.catplot(
        data=by_kind,
        x="config",
        y="bytes",
        hue="kind",
        col="panel",
        col_wrap=2,
        kind="bar",
        errorbar=None,
        sharex=False,
        sharey=False,
        height=3.2,
        aspect=1.6,
        estimator="sum",
    )
    g.set_titles("{col_name}")
    g.set_axis_labels("", "bytes per rank, fwd + bwd (unit in the title)")
    g.set_xticklabels(rotation=30, ha="right")
    g.tight_layout()
    g.savefig(OUT / "comm_by_kind.png")

# %% [markdown]
# The papers' tables below are per layer: only rows of one layer are set beside them.

# %%
dry = (
    keep(dry, dry.layers == 1, "the papers' tables are per layer (model.layers=1 rows only)")
    if not dry.empty
    else dry
)

# %% [markdown]
# ## 2. Odysseus README cost table (Llama2-7B, per layer, fwd + bwd, per device)
#
# The README counts elements and drops (N-1)/N; its gradient column counts the parameters once
# although RS + 2AG moves them three times. `counted_MiB` is our counted total; `model_MiB` is
# `harness.cost_table.odysseus_table` (our cost model) at the same shapes; `readme_MiB` is the README's
# activation + gradient expressions evaluated at the row's L, d, i, N times the element size.
# `act_x_Ld` is the activation traffic in units of one [B, L, d] hidden state, ours vs the README's.

# %%
ODYSSEUS = {
    "TP-SP": ("tp_sp", False),
    "Ulysses+ZeRO3": ("ulysses", True),
    "Ring+ZeRO3": ("ring", True),
    "Odysseus+ZeRO3": ("odysseus", False),
}
readme = reference.load("odysseus_readme_cost").set_index("method")
rows = dry[(dry.model == "llama2_7b")] if not dry.empty else dry
odysseus = []
for seq_len, group in rows.groupby("seq_len") if not rows.empty else []:
    model_table = odysseus_table(shapes(group.iloc[0])).set_index("method")
    for name, (method, zero3) in ODYSSEUS.items():
        match = group[(group.method == method) & (group.zero3 == zero3)]
        if match.empty:
            print(f"missing: {name} at L={seq_len}")
            continue
        r = match.iloc[0]
        sym = {"L": r.batch_size * r.seq_len, "d": r.hidden, "i": r.ffn_hidden, "N": r.world_size}
        act, grad = (
            reference.evaluate(readme.loc[name, c], **sym) for c in ("act_comm_expr", "grad_comm_expr")
        )
        odysseus.append(
            {
                "seq_len": seq_len,
                "method": name,
                "counted_MiB": (r.comm_bytes_fwd + r.comm_bytes_bwd) / MiB,
                "model_MiB": model_table.loc[name, "total_MiB"],
                "readme": f"{readme.loc[name, 'act_comm_formula']} + {readme.loc[name, 'grad_comm_formula']}",
                "readme_MiB": (act + grad) * ELEM_BYTES[r["dtype"]] / MiB,
                "act_x_Ld": model_table.loc[name, "activation_x_Ld"],
                "readme_act_x_Ld": reference.evaluate(
                    readme.loc[name, "act_comm_expr"], L=1, d=1, N=r.world_size
                ),
            }
        )
odysseus = show(odysseus, "odysseus_table.csv", "no llama2_7b dryrun rows for the Odysseus table")

# %% [markdown]
# Reading the table: TP-SP, Ulysses and Odysseus move (N-1)/N of the README's activation volume (the
# factor the README drops). Ring moves more than 4 O(Ld): K and V go round the ring forward and again
# backward, and dK, dV travel in float32 (the accumulation dtype) for N steps. The README's gradient
# column counts the parameters once; ZeRO-3 all-gathers them twice and reduce-scatters the gradients
# once, so `readme_MiB` sits below our totals wherever parameters dominate.

# %% [markdown]
# ## 3. USP Table 2 (Llama3-8B, per block, fwd + bwd, per device)
#
# USP splits traffic into parameters (the gradient all-reduce of a replicated block: our `all_reduce`
# kind) and activations (everything else). Units: activations in bs·L·d elements, parameters in d²
# elements; USP drops (N-1)/N and counts its parameter unit for a GPT-2 block (12d²; Llama3-8B's block
# holds 13d² with GQA). Llama3-8B has GQA (G = heads / kv_heads = 4), so Ulysses is set beside the
# GQA expression from the text under the table; USP's own row is an upper bound (≤).

# %%
USP = {"ulysses": "SP-Ulysses (GQA)", "ring": "SP-Ring", "usp": "SP-Unified+ZeRO1", "tp_sp": "TP-sp"}
usp_ref = reference.load("usp_table2_cost").set_index("method")
rows = dry[(dry.model == "llama3_8b") & dry.method.isin(list(USP)) & ~dry.zero3] if not dry.empty else dry
usp = []
for _, r in rows.iterrows():
    e, name = ELEM_BYTES[r["dtype"]], USP[r.method]
    sym = {"bs": 1, "L": 1, "d": 1, "N": r.world_size, "n_kv_groups": r.heads // r.kv_heads}
    param = usp_ref.loc[name.replace(" (GQA)", ""), "param_comm_expr"]  # the GQA row states activations only
    usp.append(
        {
            "method": r.method,
            "seq_len": r.seq_len,
            "usp_row": name,
            "act_x_bsLd": total(r.comm_detail, skip=("all_reduce",))
            / (r.batch_size * r.seq_len * r.hidden * e),
            "usp_act_x_bsLd": reference.evaluate(usp_ref.loc[name, "act_comm_expr"], **sym),
            "upper_bound": bool(usp_ref.loc[name, "act_comm_is_upper_bound"]),
            "param_x_d2": (total(r.comm_detail) - total(r.comm_detail, skip=("all_reduce",)))
            / (r.hidden**2 * e),
            "usp_param_x_d2": reference.evaluate(param, d=1),
        }
    )
usp = show(
    sorted(usp, key=lambda u: (u["method"], u["seq_len"])),
    "usp_table2.csv",
    "no llama3_8b dryrun rows of ulysses / ring / usp / tp_sp",
)

# %% [markdown]
# The activation coefficients do not depend on L, as the table says. Ulysses is (N-1)/N times the GQA
# expression and TP-sp (N-1)/N x 10. Ring sits under 4 because GQA shrinks K and V to 1/G of Q's
# size (forward and backward K/V passes, plus dK/dV in float32). USP's ulysses x ring mesh stays under
# its ≤ 4 bound. The parameter all-reduce is 2(N-1)/N x 13 d² for a Llama3-8B block against USP's 12
# (a GPT-2 block, algorithm factor dropped).

# %% [markdown]
# ## 4. DSP 2D-layer table (DSP-720M video block, forward only, per device)
#
# Units of M = B·T·S·C elements (one activation). The paper's table mixes **total** volume
# (Megatron-SP, Ring) with **per-device** volume (Ulysses, DSP) and drops (N-1)/N; ours is always per
# device, bus bytes. `model_x_M` is `harness.cost_table.dsp_table`.

# %%
DSP = {"tp_sp": "Megatron-SP", "ulysses": "DeepSpeed-Ulysses", "ring": "Ring Attention", "dsp": "DSP"}
MODEL_NAME = {method: name for name, method, _, _ in DSP_PAPER}  # dsp_table's row names
dsp_ref = reference.load("dsp_comm_2d_layer").set_index("method")
rows = dry[dry.workload == "video"] if not dry.empty else dry
dsp = []
for frames, group in rows.groupby("frames") if not rows.empty else []:
    model_table = dsp_table(shapes(group.iloc[0])).set_index("method")
    for _, r in group.iterrows():
        name = DSP[r.method]
        m_bytes = r.batch_size * r.frames * r.spatial * r.hidden * ELEM_BYTES[r["dtype"]]
        dsp.append(
            {
                "frames": frames,
                "spatial": r.spatial,
                "method": name,
                "counted_fwd_x_M": r.comm_bytes_fwd / m_bytes,
                "model_x_M": model_table.loc[MODEL_NAME[r.method], "fwd_x_M"],
                "paper": dsp_ref.loc[name, "comm_volume_formula"],
                "paper_x_M": reference.evaluate(dsp_ref.loc[name, "comm_volume_expr"], M=1, N=r.world_size),
                "paper_counts": dsp_ref.loc[name, "counted_as"],
            }
        )
dsp = show(dsp, "dsp_table.csv", "no video dryrun rows for the DSP table")

# %% [markdown]
# ## 5. LASP-2 cost model (Linear-Llama3-1B, pure SP)
#
# The paper: LASP-1 passes the memory state in 2(W-1) sequential steps per iteration, LASP-2 in 2
# all-gathers; each step carries BHd² elements with d = hidden. The state is really per head,
# [B, H, d_head, d_head], and travels in float32. Our count per rank: the state traffic (everything
# but the parameters' gradient all-reduce), beside the paper's expression at d = hidden and at
# d = d_head (both converted at 4 bytes per element, I = 1 iteration).

# %%
lasp_ref = reference.load("lasp2_cost_model").set_index("method")
rows = dry[dry.method.isin(["lasp1", "lasp2"])] if not dry.empty else dry
lasp = []
for _, r in rows.iterrows():
    name = {"lasp1": "LASP-1", "lasp2": "LASP-2"}[r.method]
    expr = lasp_ref.loc[name, "traffic_over_iterations_expr"]

    def paper(d, expr=expr, r=r):
        return 4 * reference.evaluate(expr, W=r.world_size, I=1, B=r.batch_size, H=r.heads, d=d)

    lasp.append(
        {
            "method": name,
            "seq_len": r.seq_len,
            "W": r.world_size,
            "counted_state_MiB": total(r.comm_detail, skip=("all_reduce",)) / MiB,
            "counted_kinds": "+".join(
                sorted({k for p in r.comm_detail.values() for k in p if k != "all_reduce"})
            ),
            "paper_d_hidden_MiB": paper(r.hidden) / MiB,
            "paper_d_head_MiB": paper(r.head_dim) / MiB,
            "paper": lasp_ref.loc[name, "traffic_over_iterations_formula"],
        }
    )
lasp = show(lasp, "lasp2_cost.csv", "no lasp1 / lasp2 dryrun rows")

# %% [markdown]
# The state traffic does not grow with the sequence length (the point of LASP). Per rank, a LASP-2
# all-gather moves W-1 states (bus bytes), so LASP-2 counts (W-1) x the paper's 2 messages, while a
# LASP-1 rank (the fixture plays a middle rank of the chain) sends one state forward and one backward:
# the paper's 2(W-1) is the whole chain's sequential steps. LASP-2's gain is W-1 fewer *sequential*
# steps, not fewer bytes per rank. With d = hidden the paper's message is (hidden / d_head)² times the
# per-head state the code really moves.
