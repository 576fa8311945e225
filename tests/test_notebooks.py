"""The notebooks as a researcher opens them: each `.ipynb` in sync with its jupytext `.py` source, run
with papermill on rows this test makes (a small dryrun sweep at two depths, emulated and real tiny rows),
and with `$SPBENCH_RESULTS` on a copy of the committed fixture for the papers' tables. Outputs land in
`<rows>/analysis/<notebook>/`, never in the working directory."""

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
from nbclient import NotebookClient

from harness.results import load

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "results"
NOTEBOOKS = ("comm_volume", "memory", "throughput")
TINY = ["model=tiny", "bench.warmup=1", "bench.iters=2", "hardware=cpu"]
SWEEPS = {  # sub-directory: overrides (each a multirun, all four launched at once)
    "dryrun": [
        "mode=dryrun",
        "method=ulysses,ring",
        "world_size=4",
        "workload.seq_len=256,512",
        "model.layers=1",
    ],
    "dryrun_deep": [
        "mode=dryrun",
        "method=ulysses",
        "world_size=4",
        "workload.seq_len=256",
        "model.layers=2",
    ],
    "emulate": ["mode=emulate", "method=ulysses,ring", "world_size=2", "workload.seq_len=128,256"],
    "real": ["mode=real", "method=ulysses", "world_size=2", "workload.seq_len=128,256"],
}


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
def made_rows(tmp_path_factory) -> Path:
    """Rows of this checkout's harness, made now: 5 dryrun (two depths), 4 emulated, 2 real."""
    rows = tmp_path_factory.mktemp("rows")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    jobs = [
        subprocess.Popen(
            [sys.executable, "-m", "harness.run", "-m", *TINY, *overrides, f"hydra.sweep.dir={rows / sub}"],
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
    return rows


def _text(nb) -> str:
    return "".join(
        o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.output_type == "stream"
    )


@pytest.fixture(scope="module")
def on_made_rows(made_rows, tmp_path_factory) -> dict[str, str]:
    """Each notebook run by papermill with RESULTS set to the made rows; returns name -> printed text."""
    cwd = tmp_path_factory.mktemp("cwd")
    text = {}
    for name in NOTEBOOKS:
        nb = papermill.execute_notebook(
            REPO / "notebooks" / f"{name}.ipynb",
            cwd / f"{name}.out.ipynb",
            parameters={"RESULTS": str(made_rows)},
            cwd=str(cwd),
            kernel_name="python3",
            progress_bar=False,
        )
        text[name] = _text(nb)
    assert sorted(p.name for p in cwd.iterdir()) == sorted(
        f"{n}.out.ipynb" for n in NOTEBOOKS
    )  # nothing else
    return text


def test_made_rows_comm_volume(made_rows, on_made_rows):
    out = made_rows / "analysis" / "comm_volume"
    table = pd.read_csv(out / "comm_counted_vs_theory.csv")
    assert len(table) == 11 and table.equal.all() and set(table.layers) == {1, 2}
    assert (out / "comm_by_kind.png").stat().st_size > 1000
    assert "dropped 1 row(s), the papers' tables are per layer" in on_made_rows["comm_volume"]
    assert "missing: no llama2_7b dryrun rows for the Odysseus table" in on_made_rows["comm_volume"]


def test_made_rows_memory(made_rows, on_made_rows):
    out = made_rows / "analysis" / "memory"
    memory = pd.read_csv(out / "memory.csv")
    assert len(memory) == 5 and sorted(memory.layers) == [1, 1, 1, 1, 2]
    assert (memory.theory_act_GiB == memory.fwd_end_act_GiB).all()
    assert "dropped 6 row(s), not dryrun" in on_made_rows["memory"]
    assert "dropped 1 row(s), the papers state memory per layer" in on_made_rows["memory"]
    assert (out / "peak_memory.png").stat().st_size > 1000


def test_made_rows_throughput(made_rows, on_made_rows):
    out = made_rows / "analysis" / "throughput"
    table = pd.read_csv(out / "throughput.csv")
    assert set(table["mode"]) == {"real", "emulate"} and len(table) == 6 and table.tokens_per_s.gt(0).all()
    assert (
        "dropped 6 row(s), not run on a GPU" in on_made_rows["throughput"]
    )  # CPU MFU is not set beside A800's
    for png in ("tokens_per_s.png", "step_time.png", "projected_comm.png", "mfu_vs_published.png"):
        assert (out / png).stat().st_size > 1000, png
    assert len(load(made_rows)) == 11  # the notebooks' files are not rows


@pytest.fixture(scope="module")
def on_fixture(tmp_path_factory) -> Path:
    """Each notebook run by nbclient with $SPBENCH_RESULTS on a copy of the committed fixture."""
    rows = tmp_path_factory.mktemp("fixture") / "results"
    shutil.copytree(FIXTURE, rows)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPBENCH_RESULTS", str(rows))  # the kernel inherits this process's environment
        mp.setenv("MPLBACKEND", "Agg")
        for name in NOTEBOOKS:
            nb = jupytext.read(REPO / "notebooks" / f"{name}.ipynb")
            NotebookClient(
                nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(rows)}}
            ).execute()
    return rows / "analysis"


def test_comm_volume_counted_equals_theory_and_papers(on_fixture):
    out = on_fixture / "comm_volume"
    table = pd.read_csv(out / "comm_counted_vs_theory.csv")
    assert len(table) == (load(FIXTURE).status == "ok").sum() and table.equal.all()
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
    assert lasp.loc["LASP-2", "counted_state_MiB"].tolist() == pytest.approx(
        (7 * lasp.loc["LASP-2", "paper_d_head_MiB"]).tolist()
    )


def test_memory_fractions_and_formulas(on_fixture):
    out = on_fixture / "memory"
    memory = pd.read_csv(out / "memory.csv")
    assert len(memory) == (load(FIXTURE)["mode"] == "dryrun").sum()
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


def test_throughput_both_mfu_conventions(on_fixture):
    table = pd.read_csv(on_fixture / "throughput" / "throughput.csv")
    assert set(table["mode"]) == {"real", "emulate"} and table.tokens_per_s.gt(0).all()
    causal = table[table.model == "tiny"]  # causal softmax attention: the effective count is smaller
    assert (causal.mfu < causal.mfu_dense).all()
    linear = table[table.model == "tiny_linear"]
    assert linear.mfu_over_dense.to_numpy() == pytest.approx(1)
