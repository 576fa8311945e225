"""results/reference/*.csv: every table loads, cites its source, has numeric numbers, and a few spot values
equal what /work/shared/notes/published_figures.md prints (expected values below are typed from the notes)."""

from __future__ import annotations

import ast
import math

import pandas as pd
import pytest

from harness import reference

NAMES = reference.names()

# Columns that must be numeric wherever they occur.
NUMERIC = {
    "value",
    "gpus",
    "seq_len_tokens",
    "seq_len_per_gpu_tokens",
    "global_batch",
    "batch_size",
    "micro_batch",
    "tp_degree",
    "pp_degree",
    "dp_degree",
    "sp_degree",
    "ulysses_degree",
    "ring_degree",
    "num_layers",
    "hidden_size",
    "attention_heads",
    "vocab_size",
    "head_num",
    "head_size",
    "group_num",
    "temporal_size",
    "spatial_size",
    "frames",
    "gather_split_size",
    "num_splits",
    "train_tokens",
    "interleaving_stages",
}
BOOLEAN = {"approx", "oom", "act_comm_is_upper_bound"}

# One sample value per symbol used in the *_expr columns (documented in results/reference/README.md).
SYMBOLS = dict(
    s=2048,
    b=1,
    h=12288,
    a=96,
    t=8,  # Megatron-SP Table 2
    d=4096,
    bs=2,
    L=65536,
    N=8,
    P=14e9,
    G=14e9,
    A=3e10,
    alpha=0.5,
    n_kv_groups=4,  # USP Table 2
    i=11008,  # Odysseus
    M=2.4e9,  # DSP
    B=16,
    H=16,
    W=64,
    I=10,
)  # LASP-2


def rows(df: pd.DataFrame, **eq) -> pd.DataFrame:
    mask = pd.Series(True, index=df.index)
    for k, v in eq.items():
        mask &= df[k] == v
    return df[mask]


def one(df: pd.DataFrame, column: str, **eq):
    hit = rows(df, **eq)
    assert len(hit) == 1, f"{eq}: {len(hit)} rows"
    return hit[column].iloc[0]


def test_names_and_readme():
    assert len(NAMES) >= 20
    readme = (reference.REFERENCE_DIR / "README.md").read_text()
    for name in NAMES:
        assert f"`{name}.csv`" in readme, name
    with pytest.raises(KeyError):
        reference.load("no_such_table")
    assert reference.load("ulysses_table2.csv").equals(reference.load("ulysses_table2"))


@pytest.mark.parametrize("name", NAMES)
def test_table_shape(name):
    df = reference.load(name)
    assert len(df) > 0
    for col in df.columns:
        assert col == col.strip() and col.islower() and " " not in col, col
    for col in ("source", "table"):
        assert df[col].notna().all() and (df[col].astype(str).str.strip() != "").all(), col
    for col in NUMERIC & set(df.columns):
        assert pd.api.types.is_numeric_dtype(df[col]), col
    for col in BOOLEAN & set(df.columns):
        assert pd.api.types.is_bool_dtype(df[col]), col
    if "metric" in df.columns:
        assert {"value", "approx", "oom"} <= set(df.columns)
        assert df["value"].isna().equals(df["oom"]), "value empty exactly where OOM"
        assert df["metric"].str.fullmatch(r"[a-z0-9_]+").all()
    assert not df.duplicated().any()


@pytest.mark.parametrize(
    "name", [n for n in NAMES if any(c.endswith("_expr") for c in reference.load(n).columns)]
)
def test_formula_expressions_evaluate(name):
    df = reference.load(name)
    for col in [c for c in df.columns if c.endswith("_expr")]:
        assert col.replace("_expr", "_formula") in df.columns, col
        for expr in df[col].dropna():
            used = {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)}
            assert used <= SYMBOLS.keys(), (expr, used - SYMBOLS.keys())
            value = reference.evaluate(expr, **{k: SYMBOLS[k] for k in used})
            assert math.isfinite(value) and value >= 0, expr


def _megatron_t2(df):
    # GPT-3: 5as/h = 80, so no-parallelism memory is sbh(34 + 80); selective recompute saves 70% (§1.2, §10).
    g = dict(s=2048, b=1, h=12288, a=96, t=8)
    sbh = 2048 * 12288
    assert reference.evaluate(one(df, "memory_expr", configuration="no parallelism"), **g) == sbh * 114
    tpsp = reference.evaluate(one(df, "memory_expr", configuration="tensor + sequence parallel"), **g)
    assert tpsp == pytest.approx(sbh / 8 * (34 + 80))
    sel = reference.evaluate(
        one(df, "memory_expr", configuration="tensor + sequence parallel + selective recomputation"), **g
    )
    assert round(100 * (1 - sel / tpsp), 1) == 70.2
    assert one(df, "memory_formula", configuration="full activation recomputation") == "sbh(2)"


def _usp_t2(df):
    assert one(df, "act_comm_formula", method="TP-sp") == "10O(bs·L·d)"
    assert one(df, "act_comm_ops", method="TP-sp") == "6×allgather+4×reducescatter"
    assert one(df, "param_comm_formula", method="SP-Unified+ZeRO3") == "18O(d²)"
    assert one(df, "act_comm_is_upper_bound", method="SP-Unified+ZeRO2")
    assert (
        reference.evaluate(one(df, "act_comm_expr", method="SP-Ulysses"), N=8, bs=1, L=1024, d=64)
        == 8 * 1024 * 64 / 8
    )


def _lasp2_cost(df):
    assert one(df, "traffic_over_iterations_formula", method="LASP-1") == "2(W−1)IBHd²"
    # Linear-Llama3-1B example: B=16, H=16, d=2048 -> BHd² ≈ 1.07B elements.
    bhd2 = reference.evaluate(one(df, "traffic_per_step_expr", method="LASP-2"), B=16, H=16, d=2048)
    assert round(bhd2 / 1e9, 2) == 1.07
    l1 = reference.evaluate(
        one(df, "traffic_over_iterations_expr", method="LASP-1"), W=64, I=1, B=1, H=1, d=1
    )
    l2 = reference.evaluate(one(df, "traffic_over_iterations_expr", method="LASP-2"), I=1, B=1, H=1, d=1)
    assert l1 / l2 == 63


def _dsp_setup(df):
    assert one(df, "sp_degree", model="3B", seq_len_label="4M", method="DSP") == 32
    assert one(df, "dp_degree", model="3B", seq_len_label="4M", method="DSP") == 4
    assert rows(df, model="720M", seq_len_label="4M", method="Megatron-SP").empty  # printed "/"
    assert one(df, "dp_degree", model="720M", seq_len_label="0.5M", method="Ring Attention") == 46  # [sic]


def _value(expected, **eq):
    def check(df):
        assert one(df, "value", **eq) == expected

    return check


def _oom(**eq):
    def check(df):
        assert one(df, "oom", **eq) and pd.isna(one(df, "value", **eq))

    return check


SPOT = {
    "megatron_sp_table2_activation_memory": [_megatron_t2],
    "megatron_sp_table3_setup": [
        lambda df: one(df, "num_layers", model="530B (MT-NLG)") == 105,
        lambda df: one(df, "pp_degree", model="1T") == 64,
    ],
    "megatron_sp_table4_layer_time": [
        _value(20.3, experiment="Selective + Sequence", metric="combined_ms"),
        _value(-3, experiment="Sequence Parallelism", metric="overhead_pct"),
    ],
    "megatron_sp_table5_iteration_time": [
        _value(71.49, model="1T", method="present work", metric="iteration_time_s"),
        _value(43.7, model="22B", metric="hfu_pct"),
        _value(18.13, model="175B", method="full recompute", metric="iteration_time_s"),
    ],
    "ulysses_table2": [
        _value(9886.7, gpus=256, metric="iteration_time_ms"),
        _value(165.526667, gpus=64, metric="tflops_per_gpu"),
    ],
    "ulysses_table3": [
        _value(147.4, seq_len_tokens=262144, metric="tflops_per_gpu"),
        _value(9676.76, seq_len_tokens=65536, metric="iteration_time_ms"),
    ],
    "ulysses_fig4_fig5_approx": [
        _value(105, model="GPT-30B dense", seq_len_label="64K", method="Megatron-LM SP"),
        _oom(model="GPT-7B dense", seq_len_label="256K", method="Megatron-LM SP"),
        lambda df: df["approx"].all(),
    ],
    "usp_table2_cost": [_usp_t2],
    "usp_table3_attention": [_value(454.93, seq_len_label="8K", ulysses_degree=2, ring_variant="lb-ring")],
    "usp_table4_attention": [_value(2.91, seq_len_label="128K", ulysses_degree=1, ring_variant="lb-ring")],
    "usp_table5_megatron": [
        _value(
            163.42, seq_len_label="30K", tp_degree=1, ulysses_degree=8, ring_degree=1, metric="tflops_per_gpu"
        )
    ],
    "usp_table6_megatron": [
        _value(
            148.90,
            seq_len_label="80K",
            global_batch=1,
            tp_degree=1,
            ulysses_degree=4,
            ring_degree=4,
            metric="tflops_per_gpu",
        ),
        _value(
            0.48,
            seq_len_label="80K",
            global_batch=1,
            tp_degree=1,
            ulysses_degree=4,
            ring_degree=4,
            metric="mfu",
        ),
    ],
    "usp_table7_megatron": [
        _value(147.26, seq_len_label="208K", metric="tflops_per_gpu"),
        _value(0.47, seq_len_label="208K", metric="mfu"),
    ],
    "usp_repo_readme_benchmark": [
        _value(581.26, seq_len_label="8K", ulysses_degree=4, ring_variant="zigzag", packing="qkvpacked"),
        _oom(seq_len_label="128K", ulysses_degree=1, ring_variant="basic", packing="qkvpacked"),
    ],
    "dsp_primitives": [
        lambda df: one(df, "comm_volume_formula", primitive="Gather") == "M",
        lambda df: one(df, "comm_volume_formula", primitive="Switch") == "M/N",
    ],
    "dsp_comm_2d_layer": [
        lambda df: one(df, "comm_volume_formula", method="DSP") == "2M/N",
        lambda df: one(df, "counted_as", method="Megatron-SP") == "total",
    ],
    "dsp_setup_models": [
        lambda df: one(df, "hidden_size", model="720M") == 1152,
        lambda df: one(df, "hidden_size", model="3B") == 2038,
    ],
    "dsp_setup_sp_dp": [_dsp_setup],
    "dsp_videosys_fig3_approx": [_value(0.885, sp_degree=8, frames=256, spatial_size=4096, method="DSP")],
    "dsp_videosys_inference_latency": [_value(22, method="DSP"), _value(106, gpus=1)],
    "lasp2_cost_model": [_lasp2_cost],
    "lasp2_table2_convergence": [
        _value(2.754, attention="Based", variant="pure", metric="loss"),
        _value(17273.2, attention="GLA", variant="1/4 hybrid", metric="throughput_tokens_per_s"),
    ],
    "lasp2_table5_gather_split": [_value(486158, gather_split_size=32)],
    "lasp2_table6_scalability": [
        _value(769030, seq_len_label="2048K", gpus=128, metric="throughput_tokens_per_s"),
        _value(57.8, seq_len_label="2048K", gpus=128, metric="mem_per_gpu_gb"),
        _oom(seq_len_label="2048K", gpus=64, metric="throughput_tokens_per_s"),
    ],
    "odysseus_readme_cost": [
        lambda df: one(df, "act_comm_formula", method="Odysseus+ZeRO3") == "5O(Ld)",
        lambda df: one(df, "grad_comm_formula", method="Odysseus+ZeRO3") == "3O(di)",
        lambda df: one(df, "act_comm_ops", method="TP-SP") == "6RS+4AG",
    ],
    "odysseus_readme_perf": [
        _value(13.76, seq_len_label="32K", method="Ulysses", metric="elapsed_s"),
        _value(57.56, seq_len_label="64K", method="TP-SP", metric="mem_allocated_gb"),
        _oom(seq_len_label="96K", method="Odysseus", metric="elapsed_s"),
    ],
    "odysseus_readme_scaling": [
        _value(57.04, model="Llama2-3.1B (16 layers and GQA)", method="tpsp", gpus=8, metric="elapsed_s"),
        _value(
            73.87, model="Llama2-3.1B (16 layers and GQA)", method="tpsp", gpus=8, metric="mem_reserved_gb"
        ),
        _value(26.81, model="Llama2-7B", method="odysseus mlpzero3", gpus=4, metric="elapsed_s"),
    ],
}


def test_every_table_has_spot_checks():
    assert set(SPOT) == set(NAMES)


@pytest.mark.parametrize("name", sorted(SPOT))
def test_spot_values(name):
    df = reference.load(name)
    for check in SPOT[name]:
        assert check(df) is not False
