"""Rows that name their configuration and where they came from, the files a job leaves, the progress a
run prints, rows as CSV/Parquet, and experiment directories apart per override (issue 15 items 1, 2, 6, 7)."""

from __future__ import annotations

import json

import pandas as pd
from hydra import compose, initialize_config_dir

import harness.results as results
from harness.groups import CONF_DIR
from harness.hashing import overrides_tag
from tests.test_rows import in_process

DRY = ["mode=dryrun", "bench.warmup=0", "bench.iters=1"]


def test_a_multirun_names_each_point_and_prints_its_progress(tmp_path, monkeypatch, capfd):
    sweep = tmp_path / "sweep"
    code, out, err = in_process(
        monkeypatch,
        capfd,
        "-m",
        *DRY,
        "method=usp",
        "world_size=4",
        "workload.seq_len=64",
        "method.ulysses_degree=2,1",
        f"hydra.sweep.dir={sweep}",
    )
    assert code == 0, out + err
    progress = [line for line in out.splitlines() if line.startswith("[") and "/2]" in line.split()[0]]
    assert [line.split()[:4] for line in progress] == [
        ["[1/2]", "usp", "u2xr2", "zigzag"],
        ["[2/2]", "usp", "u1xr4", "zigzag"],
    ], out
    assert all(" ok " in line and "peak " in line and "ETA" in line for line in progress), progress
    assert "sweep: 2 ok ->" in out
    df = results.load(sweep).sort_values("ulysses_degree")
    assert list(df.ulysses_degree) == [1, 2] and list(df.ring_degree) == [4, 2]  # effective, never None
    assert set(df.layout) == {"zigzag"} and set(df.placement) == {"ulysses_inner"} and not df.zero3.any()
    assert df.video_attention.isna().all() and df.decay.isna().all()  # no such option for usp / this model
    assert list(df.label) == ["usp u1xr4 zigzag ulysses_inner", "usp u2xr2 zigzag ulysses_inner"]
    # dryrun without hardware= projects onto the GPU profile, and says so
    assert set(df.hardware) == {"h100_nvlink_8x"} and df.hardware_defaulted.all()
    assert "(projected on h100_nvlink_8x)" in out
    assert (df.mem_capacity_bytes == 80 * 2**30).all() and df.fits.all() and (df.mem_headroom_bytes > 0).all()
    for key, value in {"seed": 0, "warmup": 0, "iters": 1}.items():
        assert (df[key] == value).all(), key
    for key in ("hostname", "cpu_model", "python_version", "hydra_version", "git_sha"):
        assert df[key].map(lambda v: isinstance(v, str) and v != "").all(), key
    assert df.git_dirty.map(lambda v: isinstance(v, bool)).all()
    assert isinstance(df.timestamp.dtype, pd.DatetimeTZDtype)
    assert isinstance(json.loads((sweep / "0" / "result.json").read_text())["timestamp"], str)
    for job in ("0", "1"):
        assert (sweep / job / "run.log").read_text().strip()
        assert "==> stdout" in (sweep / job / "ranks" / "rank0.log").read_text()

    # rows for tools: dict columns flattened, CSV and Parquet
    assert (
        results.main(
            [str(sweep), "--csv", str(tmp_path / "rows.csv"), "--parquet", str(tmp_path / "rows.parquet")]
        )
        == 0
    )
    for frame in (pd.read_csv(tmp_path / "rows.csv"), pd.read_parquet(tmp_path / "rows.parquet")):
        assert len(frame) == 2 and "comm_detail" not in frame
        counted = frame["comm_detail.fwd.all_to_all"].fillna(0) + frame["comm_detail.fwd.send"].fillna(0)
        assert sorted(counted) == sorted(df.comm_detail.map(lambda d: sum(d["fwd"].values())))


def test_an_explicit_hardware_wins_and_a_single_job_prints_its_verify_errors(tmp_path, monkeypatch, capfd):
    run = tmp_path / "run"
    code, out, err = in_process(
        monkeypatch, capfd, *DRY, "world_size=2", "hardware=a100_nvlink_8x", f"hydra.run.dir={run}"
    )
    row = json.loads((run / "result.json").read_text())
    assert code == 0 and row["hardware"] == "a100_nvlink_8x" and not row["hardware_defaulted"], out + err
    assert "projected on" not in out and "[1/" not in out  # no progress line outside a multirun
    code, out, err = in_process(
        monkeypatch,
        capfd,
        "world_size=2",
        "verify=true",
        "bench.warmup=0",
        "bench.iters=1",
        "workload.seq_len=32",
        f"hydra.run.dir={tmp_path / 'verify'}",
    )
    row = json.loads((tmp_path / "verify" / "result.json").read_text())
    assert code == 0 and row["hardware"] == "cpu", out + err
    assert (
        f"verify rel. err. output {row['verify_out_rel_err']:.2e} grads {row['verify_grad_rel_err']:.2e}"
        in out
    )
    assert {"rank0.log", "rank1.log"} <= {p.name for p in (tmp_path / "verify" / "ranks").iterdir()}


def test_experiment_dirs_differ_by_the_other_overrides():
    assert overrides_tag(["+sweep=usp_table4", "mode=dryrun"]) == ""
    tag = overrides_tag(["+sweep=usp_table4", "mode=dryrun", "model.layers=1", "dtype=float32"])
    assert tag == overrides_tag(["dtype=float32", "mode=real", "model.layers=1"])  # any order, any mode
    assert tag.startswith("-") and len(tag) == 9 and tag != overrides_tag(["model.layers=2", "dtype=float32"])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["+sweep=usp_table4", "mode=dryrun", "model.layers=1"],
            return_hydra_config=True,
        )
    assert cfg.hydra.sweep.dir == f"results/experiments/usp_table4/dryrun{overrides_tag(['model.layers=1'])}"
