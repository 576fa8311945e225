"""The Odysseus README cost table from our cost models (no run): per layer, forward + backward, per
rank, activation and parameter traffic of TP-SP, Ulysses+ZeRO3, Ring+ZeRO3 and Odysseus+ZeRO3,
with the README's O(...) entry beside our exact bytes.

    python -m harness.cost_table model=llama2_7b workload.seq_len=65536 world_size=8 dtype=bfloat16

Every number is a cost model the tests hold equal to counted bytes."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

import pandas as pd
from hydra import compose, initialize_config_dir

import methods
from methods.common.config import Problem
from methods.common.cost import CommCost
from methods.common.layers import llama_block_shapes
from methods.common.replicated import param_sync_cost
from methods.common.zero3 import unit_cost
from methods.odysseus import mlp_shapes
from methods.tp_sp import norm_sync_cost

from .groups import CONF_DIR
from .problem import problem_from_cfg

# (row, method, options, README activation entry, README parameter entry, parameter traffic of the method)
ROWS = [
    ("TP-SP", "tp_sp", {}, "6RS+4AG, 10O(Ld)", "0", norm_sync_cost),
    (
        "Ulysses+ZeRO3",
        "ulysses",
        {"zero3": True},
        "8All2All, 8O(Ld)/N",
        "RS+2AG (Full), 4O(d^2)+3O(di)",
        lambda p: param_sync_cost(p, llama_block_shapes(p.model), 1),
    ),
    (
        "Ring+ZeRO3",
        "ring",
        {"zero3": True, "layout": "zigzag"},
        "P2Ps, 4O(Ld)",
        "RS+2AG (Full), 4O(d^2)+3O(di)",
        lambda p: param_sync_cost(p, llama_block_shapes(p.model), 1),
    ),
    (
        "Odysseus+ZeRO3",
        "odysseus",
        {},
        "3RS+2AG, 5O(Ld)",
        "RS+2AG (MLP), 3O(di)",
        lambda p: unit_cost(p, mlp_shapes(p)) + norm_sync_cost(p),
    ),
]


def _total(cost: CommCost) -> float:
    return float(cost.total("fwd") + cost.total("bwd"))


def odysseus_table(base: Problem) -> pd.DataFrame:
    """One row per method for one layer of `base`'s model (fwd + bwd, per rank)."""
    one_layer = replace(base.model, layers=1)
    m, w, e = one_layer, base.workload, base.elem_bytes
    hidden_state = w.batch_size * w.seq_len * m.hidden * e  # one [B, L, d] tensor: "O(Ld)"
    rows = []
    for name, method, options, readme_act, readme_param, param_cost in ROWS:
        p = replace(base, method=method, model=one_layer, options=options)
        total, params = _total(methods.for_problem(p).comm_cost(p)), _total(param_cost(p))
        rows.append(
            {
                "method": name,
                "readme_activation": readme_act,
                "activation_MiB": (total - params) / 2**20,
                "activation_x_Ld": (total - params) / hidden_state,
                "readme_parameter": readme_param,
                "parameter_MiB": params / 2**20,
                "total_MiB": total / 2**20,
            }
        )
    return pd.DataFrame(rows)


# DSP paper's table (per layer = spatial + temporal block, forward), in units of M = B*T*S*C elements
DSP_PAPER: list[tuple[str, str, dict[str, Any], str]] = [
    ("Megatron-SP", "tp_sp", {}, "8M"),
    ("DeepSpeed-Ulysses", "ulysses", {}, "4M/N"),
    ("Ring attention", "ring", {}, "2M"),
    ("DSP", "dsp", {}, "2M/N"),
]


def dsp_table(base: Problem) -> pd.DataFrame:
    """Our exact per-rank forward bytes per layer for each method on the video block, in units of M
    (elements of one [B, T, S, C] activation), beside the paper's entry."""
    one_layer = replace(base.model, layers=1)
    w = base.workload
    m_bytes = w.batch_size * w.frames * w.spatial * base.model.hidden * base.elem_bytes
    rows = []
    for name, method, options, paper in DSP_PAPER:
        p = replace(base, method=method, model=one_layer, options=options)
        fwd = float(methods.for_problem(p).comm_cost(p).total("fwd"))
        rows.append(
            {"method": name, "paper_fwd_per_layer": paper, "fwd_MiB": fwd / 2**20, "fwd_x_M": fwd / m_bytes}
        )
    return pd.DataFrame(rows)


def main(overrides: list[str]) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["method=odysseus", *overrides])
    base = problem_from_cfg(cfg)
    m, w = base.model, base.workload
    print(
        f"Odysseus README cost table from the cost models: {m.name}, L={w.seq_len}, B={w.batch_size}, "
        f"N={base.world_size}, {base.dtype}; per layer, forward + backward, per rank"
    )
    print(
        "activation_x_Ld = activation bytes / bytes of one [B, L, d] hidden state "
        "(README counts drop (N-1)/N)"
    )

    with pd.option_context(
        "display.width", 200, "display.max_columns", 10, "display.float_format", "{:.4g}".format
    ):
        print(odysseus_table(base).to_string(index=False))


if __name__ == "__main__":
    main(sys.argv[1:])
