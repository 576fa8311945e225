"""`python -m harness.report DIR`: the one table, the provenance header, one figure per question, and
series that never merge two configurations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from harness import report
from harness.results import load

FIXTURE = Path(__file__).parent / "fixtures" / "results"


def test_report_writes_markdown_and_plots(tmp_path, capsys):
    rows = tmp_path / "rows"
    shutil.copytree(FIXTURE, rows)  # the report writes into the directory it reads
    assert report.main([str(rows)]) == 0
    out = capsys.readouterr().out
    for name in ["report.md", "step_time.png", "peak_memory.png", "comm_bytes.png"]:
        assert f"wrote {rows / name}" in out
        assert (rows / name).stat().st_size > 1000
    md = (rows / "report.md").read_text()
    assert (
        "- torch_version: 2.13.0+cpu" in md
        and "- mode: dryrun (43 rows), emulate (12 rows), real (6 rows)" in md
    )
    n = len(load(FIXTURE))
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + n  # header and one line per row
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert {"label", "mfu_dense", "peak_mem", "model_comm", "comm=model"} <= set(header)
    column = header.index("comm=model")
    assert all(line.strip("|").split("|")[column].strip() == "True" for line in table[1:])  # counted == model
    assert "GiB" in md and "KiB" in md  # each size in its own unit: 30 GiB dryrun rows beside 1 MiB CPU rows
    assert load(rows).shape[0] == n  # the report's files are not rows


def test_usage_without_a_directory(capsys):
    with pytest.raises(SystemExit) as exit_:
        report.main([])
    assert exit_.value.code == 2 and "usage: python -m harness.report" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        report.main(["--help"])
    assert exit_.value.code == 0 and "usage: python -m harness.report" in capsys.readouterr().out


def test_table_handles_rows_without_times_or_bytes():
    rows = pd.DataFrame(
        [
            {
                "method": "ulysses",
                "model": "tiny",
                "seq_len": 256,
                "world_size": 4,
                "status": "invalid",
                "mode": "real",
                "error": "heads not divisible",
            }
        ]
    )
    table = report.table(rows)
    assert table.loc[0, "status"] == "invalid" and table.loc[0, "error"] == "heads not divisible"


def _usp_row(u: int, r: int, seq_len: int, layers: int = 1, **extra) -> dict:
    """A dryrun USP row as the harness writes it (only the fields the report reads)."""
    mem = 2**30 * seq_len / 32768 * (1 + u / 16)
    return {
        "method": "usp",
        "ulysses_degree": u,
        "ring_degree": r,
        "layout": "zigzag",
        "placement": "ulysses_inner",
        "zero3": False,
        "model": "llama3_8b",
        "layers": layers,
        "world_size": u * r,
        "seq_len": seq_len,
        "batch_size": 1,
        "dtype": "bfloat16",
        "mode": "dryrun",
        "hardware": "h100_nvlink_8x",
        "status": "ok",
        "peak_mem_bytes": mem,
        "theory_mem_bytes": mem * 0.9,
        "comm_bytes_fwd": seq_len * (100 + r),
        "comm_bytes_bwd": seq_len * 200,
        "theory_comm_bytes_fwd": seq_len * (100 + r),
        "theory_comm_bytes_bwd": seq_len * 200,
        **extra,
    }


def _write(directory: Path, rows: list[dict]) -> None:
    for i, row in enumerate(rows):
        (directory / str(i)).mkdir(parents=True)
        (directory / str(i) / "result.json").write_text(json.dumps(row))


def test_two_usp_splits_are_two_series(tmp_path):
    rows = [_usp_row(u, 8 // u, L) for u in (2, 4) for L in (32768, 131072)]
    rows.append(_usp_row(2, 4, 32768, timestamp="2026-12-01T00:00:00"))  # a rerun of one point: not a third
    rows.append(_usp_row(2, 4, 32768, layers=32))  # another depth: its own panel
    _write(tmp_path, rows)
    series = report.series(load(tmp_path))
    one_layer = series[series.layers == 1]
    assert sorted(one_layer.series.unique()) == [
        "usp u2xr4 zigzag ulysses_inner",
        "usp u4xr2 zigzag ulysses_inner",
    ]
    assert one_layer.groupby("series").size().tolist() == [2, 2]  # each split: its two lengths, once each
    assert series.groupby("panel").ngroups == 2 and set(series[series.layers == 32].panel) == {
        "llama3_8b, 32 layers, h100_nvlink_8x, dryrun"
    }
    report.write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "usp u2xr4 zigzag ulysses_inner" in md and "usp u4xr2 zigzag ulysses_inner" in md


def test_rows_differing_only_in_causality_or_kv_heads_are_separate_series(tmp_path):
    rows = [_usp_row(2, 4, L, causal=c, kv_heads=8) for L in (32768, 131072) for c in (True, False)]
    rows += [_usp_row(2, 4, L, causal=True, kv_heads=2) for L in (32768, 131072)]
    _write(tmp_path, rows)
    series = report.series(load(tmp_path))
    assert series.groupby("series").size().to_dict() == {
        "usp u2xr4 zigzag ulysses_inner causal=True kv=8": 2,
        "usp u2xr4 zigzag ulysses_inner causal=False kv=8": 2,
        "usp u2xr4 zigzag ulysses_inner causal=True kv=2": 2,
    }


def test_fit_boundary_only_when_rows_carry_it(tmp_path):
    capacity = 80 * 2**30
    rows = [_usp_row(2, 4, L, mem_capacity_bytes=capacity, fits=bool(L < 2**20)) for L in (32768, 2**21)]
    labels = [h.get_label() for h in report.PeakMemory.legend(pd.DataFrame(rows))]
    assert "capacity of the hardware profile" in labels and "does not fit" in labels
    plain = [h.get_label() for h in report.PeakMemory.legend(pd.DataFrame([_usp_row(2, 4, 32768)]))]
    assert "does not fit" not in plain and "capacity of the hardware profile" not in plain
    _write(tmp_path, rows)
    assert [p.name for p in report.plots(load(tmp_path), tmp_path)] == ["peak_memory.png", "comm_bytes.png"]
    assert report.table(load(tmp_path)).fits.tolist() == [True, False]
