"""`python -m harness.report DIR` on the committed fixture: the text table, report.md and the plots."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from harness import report
from harness.results import load

FIXTURE = Path(__file__).parent / "fixtures" / "results"


def test_report_writes_markdown_and_plots(tmp_path, capsys):
    rows = tmp_path / "rows"
    shutil.copytree(FIXTURE, rows)  # the report writes into the directory it reads
    report.main(str(rows))
    out = capsys.readouterr().out
    names = ["report.md", "tokens_per_s.png", "peak_memory.png", "comm_bytes.png"]
    for name in names:
        assert f"wrote {rows / name}" in out
        assert (rows / name).stat().st_size > 1000
    md = (rows / "report.md").read_text()
    n = len(load(FIXTURE))
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + n  # header and one line per row
    assert "mfu_dense" in table[0] and "theory_comm_MiB" in table[0]
    assert all(line.rstrip(" |").endswith("True") for line in table[1:])  # counted == theory on every fixture row
    assert load(rows).shape[0] == n  # the report's files are not rows


def test_table_handles_rows_without_times_or_bytes():
    rows = pd.DataFrame([{"method": "ulysses", "model": "tiny", "seq_len": 256, "world_size": 4, "status": "invalid",
                          "mode": "real", "error": "heads not divisible"}])
    assert report.table(rows).loc[0, "status"] == "invalid"
    assert "invalid" in report.markdown(rows)
