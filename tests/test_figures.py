"""harness/figures.py CPU-sized (--small): two figures end to end, from dryrun rows to CSV, PNG and
index.md, and the longest-sequence boundary re-checked on the rows it wrote."""

from __future__ import annotations

import json

import pandas as pd
from hydra import compose, initialize_config_dir

from harness.capacity import fit_fields
from harness.figures import main
from harness.groups import CONF_DIR
from harness.problem import problem_from_cfg


def test_small_figures(tmp_path):
    main([str(tmp_path), "--small", "--only", "dsp_2d_layer", "longest"])
    index = (tmp_path / "index.md").read_text()
    for name in ("dsp_2d_layer", "longest"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
        assert f"({name}.png)" in index and f"({name}.csv)" in index

    # DSP and Ulysses per-device entries: ours is the paper's volume times the bus factor (N-1)/N, N = 4
    dsp = pd.read_csv(tmp_path / "dsp_2d_layer.csv").set_index("method")
    assert dsp.loc["DSP", "ratio"] == dsp.loc["DeepSpeed-Ulysses", "ratio"] == 0.75
    assert (
        dsp.loc["DSP", "ours_elements_per_rank"] * 2 == dsp.loc["DeepSpeed-Ulysses", "ours_elements_per_rank"]
    )

    # every boundary: the longest length fits in its dryrun row, the next step does not
    longest = pd.read_csv(tmp_path / "longest.csv")
    assert len(longest) == 4  # ulysses with and without ZeRO-3 and recompute
    rows = [json.loads(p.read_text()) for p in sorted((tmp_path / "rows" / "longest").glob("*/result.json"))]
    step = 64
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for r in longest.itertuples():
            mine = [
                row
                for row in rows
                if f"method.zero3={r.zero3}".lower() in row["overrides"]
                and f"train.recompute={r.recompute}" in row["overrides"]
            ]
            by_len = {row["seq_len"]: row for row in mine}
            for seq_len, want in ((r.dryrun_longest_tokens, True), (r.dryrun_longest_tokens + step, False)):
                if seq_len == 0:
                    continue
                row = by_len[seq_len]
                cfg = compose(
                    "config",
                    overrides=[
                        "+sweep=fig_longest",
                        "model=tiny",
                        "model.kv_heads=8",
                        "model.layers=2",
                        "world_size=4",
                        "hardware.memory_GiB=0.0005",
                        *row["overrides"].split(),
                    ],
                )
                fit = fit_fields(
                    problem_from_cfg(cfg),
                    cfg.hardware,
                    row["peak_mem_bytes"],
                    {"optimizer": "adamw_mixed", "recompute": r.recompute},
                )
                assert fit["fits"] is want, (r, seq_len)
