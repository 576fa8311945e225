"""The notebooks as a researcher opens them: each `.ipynb` in sync with its jupytext `.py` source, run
once each with papermill on a directory holding rows this test makes (dryrun at two depths, emulated
and real tiny rows, under `made/`) beside a copy of the committed fixture (paper-scale rows for the
papers' tables). Outputs land in `<rows>/analysis/<notebook>/`, never in the working directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import pandas as pd
import papermill
import pytest

from harness.results import load

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "results"
NOTEBOOKS = ("comm_volume", "memory", "throughput")
TINY = ["model=tiny", "bench.warmup=1", "bench.iters=2", "hardware=cpu"]
SWEEPS = {  # sub-directory of made/: overrides (each a multirun, the three launched at once)
    "dryrun": [
        "mode=dryrun",
        "method=ulysses,ring",
        "world_size=4",
        "workload.seq_len=256",
        "model.layers=1,2",
    ],
    "emulate": ["mode=emulate", "method=ulysses", "world_size=2", "workload.seq_len=128,256"],
    "real": ["mode=real", "method=ulysses", "world_size=2", "workload.seq_len=128"],
}
MADE = 7  # rows: 4 dryrun, 2 emulate, 1 real


def test_each_notebook_is_paired_with_its_source():
    for name in NOTEBOOKS:
        py, nb = (jupytext.read(REPO / "notebooks" / f"{name}.{ext}") for ext in ("py", "ipynb"))
        assert [(c.cell_type, c.source) for c in py.cells] == [(c.cell_type, c.source) for c in nb.cells], (
            name
        )
        assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
        assert ["parameters" in c.metadata.get("tags", []) for c in nb.cells].count(True) == 1, name
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
            f"{name}.ipynb has outputs"
        )


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    """A copy of the committed fixture, and under made/ rows of this checkout's harness made now."""
    rows = tmp_path_factory.mktemp("rows") / "results"
    shutil.copytree(FIXTURE, rows)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    jobs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness.run",
                "-m",
                *TINY,
                *overrides,
                f"hydra.sweep.dir={rows / 'made' / sub}",
            ],
            cwd=rows,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for sub, overrides in SWEEPS.items()
    ]
    for job in jobs:
        out, _ = job.communicate(timeout=300)
        assert job.returncode == 0, out
    assert len(load(rows / "made")) == MADE
    return rows


def _text(nb) -> str:
    return "".join(
        o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.output_type == "stream"
    )


@pytest.fixture(scope="module")
def printed(rows, tmp_path_factory) -> dict[str, str]:
    """Each notebook run by papermill with RESULTS set to the rows; returns name -> the text it printed."""
    cwd = tmp_path_factory.mktemp("cwd")
    text = {}
    for name in NOTEBOOKS:
        nb = papermill.execute_notebook(
            REPO / "notebooks" / f"{name}.ipynb",
            cwd / f"{name}.out.ipynb",
            parameters={"RESULTS": str(rows)},
            cwd=str(cwd),
            kernel_name="python3",
            progress_bar=False,
        )
        text[name] = _text(nb)
    assert sorted(p.name for p in cwd.iterdir()) == sorted(
        f"{n}.out.ipynb" for n in NOTEBOOKS
    )  # nothing else
    assert len(load(rows)) == len(load(FIXTURE)) + MADE  # the notebooks' files are not rows
    return text


def test_made_rows_in_every_notebook(rows, printed):
    made = load(rows / "made")
    comm = pd.read_csv(rows / "analysis" / "comm_volume" / "comm_counted_vs_theory.csv")
    tiny = comm[comm.model == "tiny"]
    assert len(tiny) == MADE + (load(FIXTURE).model == "tiny").sum() and tiny.equal.all()
    assert set(tiny.layers) == {1, 2}  # the fixture's tiny rows have 2 layers, the made dryrun rows 1 and 2
    assert "dropped 2 row(s), the papers' tables are per layer" in printed["comm_volume"]
    memory = pd.read_csv(rows / "analysis" / "memory" / "memory.csv")
    assert sorted(memory[memory.model == "tiny"].layers) == [1, 1, 2, 2]
    assert "dropped 2 row(s), the papers state memory per layer" in printed["memory"]
    throughput = pd.read_csv(rows / "analysis" / "throughput" / "throughput.csv")
    ours = throughput.merge(made[["mode", "tokens_per_s"]], on=["mode", "tokens_per_s"])
    assert sorted(ours["mode"]) == ["emulate", "emulate", "real"]
    assert (
        f"dropped {18 + 3} row(s), not run on a GPU" in printed["throughput"]
    )  # CPU MFU is not beside A800's
    for path in [
        "comm_volume/comm_by_kind.png",
        "memory/peak_memory.png",
        "throughput/tokens_per_s.png",
        "throughput/step_time.png",
        "throughput/projected_comm.png",
        "throughput/mfu_vs_published.png",
    ]:
        assert (rows / "analysis" / path).stat().st_size > 1000, path


def test_comm_volume_counted_equals_theory_and_papers(rows, printed):
    out = rows / "analysis" / "comm_volume"
    table = pd.read_csv(out / "comm_counted_vs_theory.csv")
    assert len(table) == (load(FIXTURE).status == "ok").sum() + MADE and table.equal.all()
    odysseus = pd.read_csv(out / "odysseus_table.csv").set_index(["seq_len", "method"])
    assert (odysseus.counted_MiB == odysseus.model_MiB).all()
    # README drops (N-1)/N = 7/8: TP-SP 10 O(Ld), Odysseus 5 O(Ld), Ulysses 8 O(Ld)/N
    for method, readme in [("TP-SP", 10), ("Odysseus+ZeRO3", 5), ("Ulysses+ZeRO3", 1)]:
        assert odysseus.loc[(65536, method), "readme_act_x_Ld"] == readme
        assert odysseus.loc[(65536, method), "act_x_Ld"] == pytest.approx(readme * 7 / 8)
    dsp = pd.read_csv(out / "dsp_table.csv")
    assert (dsp.counted_fwd_x_M == dsp.model_x_M).all()
    assert dsp.counted_fwd_x_M.to_numpy() == pytest.approx(dsp.paper_x_M.to_numpy() * 7 / 8)
    usp = pd.read_csv(out / "usp_table2.csv")
    ulysses = usp[usp.method == "ulysses"]
    assert ulysses.act_x_bsLd.to_numpy() == pytest.approx(ulysses.usp_act_x_bsLd.to_numpy() * 7 / 8)
    assert (usp[usp.upper_bound].act_x_bsLd <= usp[usp.upper_bound].usp_act_x_bsLd).all()
    lasp = pd.read_csv(out / "lasp2_cost.csv").set_index("method")
    paper = (7 * lasp.loc["LASP-2", "paper_d_head_MiB"]).tolist()
    assert lasp.loc["LASP-2", "counted_state_MiB"].tolist() == pytest.approx(paper)


def test_memory_fractions_and_formulas(rows, printed):
    out = rows / "analysis" / "memory"
    memory = pd.read_csv(out / "memory.csv")
    assert len(memory) == (load(FIXTURE)["mode"] == "dryrun").sum() + 4
    assert (memory.theory_act_GiB == memory.fwd_end_act_GiB).all()  # every memory model equals its dryrun
    odysseus = pd.read_csv(out / "odysseus_memory.csv")
    assert len(odysseus) == 8 and odysseus.param_fraction.to_numpy() == pytest.approx(1 / 8, rel=0.02)
    assert (odysseus.act_fraction >= 1 / 8).all() and (odysseus.act_fraction < 0.15).all()
    usp = pd.read_csv(out / "usp_memory.csv")
    replicated = usp[usp.usp_param_grad == "P+G"]
    assert replicated.param_fraction.to_numpy() == pytest.approx(1, rel=0.01)
    mega = pd.read_csv(out / "megatron_activation.csv")
    assert set(mega.megatron_row) >= {
        "no parallelism",
        "tensor + sequence parallel + selective recomputation",
    }


def test_throughput_both_mfu_conventions(rows, printed):
    table = pd.read_csv(rows / "analysis" / "throughput" / "throughput.csv")
    assert set(table["mode"]) == {"real", "emulate"} and table.tokens_per_s.gt(0).all()
    causal = table[table.model == "tiny"]  # causal softmax attention: the effective count is smaller
    assert (causal.mfu < causal.mfu_dense).all()
    linear = table[table.model == "tiny_linear"]
    assert linear.mfu_over_dense.to_numpy() == pytest.approx(1)
