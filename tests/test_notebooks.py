"""Execute each notebook (jupytext source -> nbclient, kernel python3) on the committed fixture in a
temporary working directory, then check the tables it saved."""
from __future__ import annotations

from pathlib import Path

import jupytext
import pandas as pd
import pytest
from nbclient import NotebookClient

from harness.results import load

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "results"


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict[str, Path]:
    """Each notebook run once, in a directory of its own; returns notebook name -> that directory."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPBENCH_RESULTS", str(FIXTURE))  # the kernel inherits this process's environment
        mp.setenv("MPLBACKEND", "Agg")
        for name in ("comm_volume", "memory", "throughput"):
            cwd = tmp_path_factory.mktemp(name)
            nb = jupytext.read(REPO / "notebooks" / f"{name}.py")
            NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
            out[name] = cwd
    return out


def test_comm_volume_counted_equals_theory_and_papers(executed):
    cwd = executed["comm_volume"]
    table = pd.read_csv(cwd / "comm_counted_vs_theory.csv")
    assert len(table) == (load(FIXTURE).status == "ok").sum() and table.equal.all()
    odysseus = pd.read_csv(cwd / "odysseus_table.csv").set_index(["seq_len", "method"])
    assert (odysseus.counted_MiB == odysseus.model_MiB).all()
    # README drops (N-1)/N = 7/8: TP-SP 10 O(Ld), Odysseus 5 O(Ld), Ulysses 8 O(Ld)/N
    for method, readme in [("TP-SP", 10), ("Odysseus+ZeRO3", 5), ("Ulysses+ZeRO3", 1)]:
        assert odysseus.loc[(65536, method), "readme_act_x_Ld"] == readme
        assert odysseus.loc[(65536, method), "act_x_Ld"] == pytest.approx(readme * 7 / 8)
    dsp = pd.read_csv(cwd / "dsp_table.csv")
    assert (dsp.counted_fwd_x_M == dsp.model_x_M).all()
    assert dsp.counted_fwd_x_M.to_numpy() == pytest.approx(dsp.paper_x_M.to_numpy() * 7 / 8)
    usp = pd.read_csv(cwd / "usp_table2.csv")
    ulysses = usp[usp.method == "ulysses"]
    assert ulysses.act_x_bsLd.to_numpy() == pytest.approx(ulysses.usp_act_x_bsLd.to_numpy() * 7 / 8)
    assert (usp[usp.upper_bound].act_x_bsLd <= usp[usp.upper_bound].usp_act_x_bsLd).all()
    lasp = pd.read_csv(cwd / "lasp2_cost.csv").set_index("method")
    assert lasp.loc["LASP-2", "counted_state_MiB"].tolist() == pytest.approx((7 * lasp.loc["LASP-2", "paper_d_head_MiB"]).tolist())
    assert (cwd / "comm_by_kind.png").stat().st_size > 1000


def test_memory_fractions_and_formulas(executed):
    cwd = executed["memory"]
    memory = pd.read_csv(cwd / "memory.csv")
    assert len(memory) == ((load(FIXTURE)["mode"] == "dryrun")).sum()
    assert (memory.theory_act_GiB == memory.fwd_end_act_GiB).all()  # every memory model equals its dryrun
    odysseus = pd.read_csv(cwd / "odysseus_memory.csv")
    assert len(odysseus) == 8 and odysseus.param_fraction.to_numpy() == pytest.approx(1 / 8, rel=0.02)
    assert (odysseus.act_fraction >= 1 / 8).all() and (odysseus.act_fraction < 0.15).all()
    usp = pd.read_csv(cwd / "usp_memory.csv")
    replicated = usp[usp.usp_param_grad == "P+G"]
    assert replicated.param_fraction.to_numpy() == pytest.approx(1, rel=0.01)
    mega = pd.read_csv(cwd / "megatron_activation.csv")
    assert set(mega.megatron_row) >= {"no parallelism", "tensor + sequence parallel + selective recomputation"}
    assert (cwd / "peak_memory.png").stat().st_size > 1000


def test_throughput_both_mfu_conventions(executed):
    cwd = executed["throughput"]
    table = pd.read_csv(cwd / "throughput.csv")
    assert set(table["mode"]) == {"real", "emulate"} and table.tokens_per_s.gt(0).all()
    causal = table[table.model == "tiny"]  # causal softmax attention: the effective count is smaller
    assert (causal.mfu < causal.mfu_dense).all()
    linear = table[table.model == "tiny_linear"]
    assert linear.mfu_over_dense.to_numpy() == pytest.approx(1)
    for png in ("tokens_per_s.png", "projected_comm.png", "mfu_vs_published.png"):
        assert (cwd / png).stat().st_size > 1000
