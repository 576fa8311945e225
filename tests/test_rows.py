"""Rows that survive resumes, full disks and concurrent writers (issue 14, items 4-7).

Before (main at 1d9d6a2), each test here failed: a damaged `result.json` raised a JSONDecodeError /
IsADirectoryError traceback naming no file and stopped the sweep at that point on every resume; a row
that could not be written raised out of the job, left its `.result.*.tmp` behind and lost the
measurement (and stopped the multirun); rows were 0600 (mkstemp); two sweeps on one directory ran
side by side and overwrote each other's rows; extending a sweep (32,64 -> 16,32,64) reran 32 and 64
and wrote 16 over the row of 32; every single run exited 0 whatever its status, and a multirun
printed no summary."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness.results as results
import harness.run as run
from harness.results import Busy, RowWriteError, load, lock, read_row, row_index, write_row

REPO = Path(__file__).resolve().parent.parent
DRY = ["mode=dryrun", "world_size=2", "bench.warmup=0", "bench.iters=1"]


def in_process(monkeypatch, capfd, *argv: str) -> tuple[int, str, str]:
    """`python -m harness.run ARGV` in this process (so tests can monkeypatch it): (exit status, out, err)."""
    for name, fresh in (("_INDEX", {}), ("_OUTCOMES", []), ("_SWEEP", {})):
        monkeypatch.setattr(run, name, fresh)
    monkeypatch.setattr(sys, "argv", ["harness.run", *argv])
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run.main()
    out, err = capfd.readouterr()
    code = exit_.value.code
    return (code if isinstance(code, int) else 1), out, err


def harness(*argv: str, cwd: Path, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "harness.run", *argv],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        **kw,
    )


# --- 4. damaged rows, unwritable rows, permissions -------------------------------------------------


def test_damaged_rows_rerun_and_are_kept_aside(tmp_path, monkeypatch, capfd):
    """Before: read_row's JSONDecodeError / IsADirectoryError ended the first point with a traceback
    that named no file, the multirun stopped, and the next resume failed the same way."""
    sweep = tmp_path / "sweep"
    for n in range(3):
        (sweep / str(n)).mkdir(parents=True)
    (sweep / "0" / "result.json").write_text('{"status": "ok", "config_hash": "12')  # truncated
    (sweep / "0" / "result.json.damaged").write_text("an earlier damaged row")
    (sweep / "1" / "result.json").write_text("")  # empty
    (sweep / "2" / "result.json").mkdir()  # a directory
    code, out, err = in_process(
        monkeypatch, capfd, "-m", *DRY, "workload.seq_len=16,32,64", f"hydra.sweep.dir={sweep}"
    )
    assert code == 0, out + err
    for n in range(3):
        assert f"[damaged] {sweep / str(n) / 'result.json'} cannot be read" in out
    assert (sweep / "0" / "result.json.damaged").read_text() == "an earlier damaged row"
    assert (sweep / "0" / "result.json.damaged.1").read_text().startswith('{"status": "ok"')
    assert (sweep / "1" / "result.json.damaged").read_text() == ""
    assert (sweep / "2" / "result.json.damaged").is_dir()
    df = load(sweep)
    assert sorted(df.seq_len) == [16, 32, 64] and (df.status == "ok").all() and df.attrs["unreadable"] == []
    assert "sweep: 3 ok ->" in out


@pytest.mark.parametrize("broken", ["replace", "dump"])
def test_a_row_that_cannot_be_written_names_its_path_and_leaves_no_temp_file(tmp_path, monkeypatch, broken):
    """Before: the bare OSError named no path and the `.result.*.tmp` file stayed in the job dir."""

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.os if broken == "replace" else results.json, broken, disk_full)
    with pytest.raises(RowWriteError, match="No space left on device") as e:
        write_row(tmp_path / "job", {"status": "ok"})
    assert str(tmp_path / "job" / "result.json") in str(e.value) and e.value.errno == errno.ENOSPC
    assert list((tmp_path / "job").iterdir()) == []


def test_an_unwritable_row_goes_to_stderr_and_the_sweep_goes_on(tmp_path, monkeypatch, capfd):
    """Before: the OSError ended the multirun at the first point (no row, nothing on stderr, the
    second point never ran)."""
    sweep = tmp_path / "sweep"
    real_replace = os.replace

    def full_for_point_0(src, dst, *a, **kw):
        if Path(dst) == sweep / "0" / "result.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(results.os, "replace", full_for_point_0)
    code, out, err = in_process(
        monkeypatch, capfd, "-m", *DRY, "workload.seq_len=32,64", f"hydra.sweep.dir={sweep}"
    )
    assert code == 1, out + err  # a point has no row
    assert (
        f"[unwritten] cannot write the row to {sweep / '0' / 'result.json'}: No space left on device" in err
    )
    lines = [line for line in err.splitlines() if line.startswith("spbench-row: ")]
    assert len(lines) == 1
    row = json.loads(lines[0].removeprefix("spbench-row: "))
    assert row["seq_len"] == 32 and row["status"] == "ok" and row["comm_bytes_fwd"] > 0
    assert not list((sweep / "0").glob("*result*"))  # no temporary file, no row
    assert read_row(sweep / "1" / "result.json")["seq_len"] == 64  # the next point ran
    assert "sweep: 1 ok, 1 unwritten ->" in out


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_rows_are_readable_as_the_umask_allows(tmp_path, umask, mode):
    """Before: 0600 (mkstemp's mode) whatever the umask."""
    old = os.umask(umask)
    try:
        path = write_row(tmp_path, {"status": "ok"})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


# --- 5. concurrent writers ------------------------------------------------------------------------


def test_a_second_sweep_on_a_busy_directory_is_refused(tmp_path):
    """(The hanging point outlasts the second sweep's start-up on a loaded machine: 60 s.) Before: no
    lock; the second sweep ran its points into the same job dirs while the first was
    running, and the row written last won."""
    sweep = tmp_path / "sweep"
    first = harness(
        "-m",
        "world_size=2",
        "workload.seq_len=32",
        "bench.warmup=0",
        "bench.iters=2",
        "fault.kind=hang",
        "fault.rank=1",
        "bench.timeout_s=60",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (sweep / "0" / ".spbench.lock").exists():  # the slow point is running
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.2)
        second = harness("-m", *DRY, "workload.seq_len=32,64", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
        single = harness(*DRY, f"hydra.run.dir={sweep / '0'}", cwd=tmp_path)  # the running point's own dir
        out2, err2 = second.communicate(timeout=120)
        out3, err3 = single.communicate(timeout=120)
        out1, err1 = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert second.returncode == 1 and f"another sweep is writing {sweep}" in err2 and "pid" in err2, (
        out2 + err2
    )
    assert "Launching" not in out2 + err2  # refused before its first point
    assert single.returncode == 1 and f"[busy] {sweep / '0'}" in err3, out3 + err3
    assert first.returncode == 0, err1[-3000:]
    df = load(sweep)
    assert len(df) == 1 and df.status[0] == "timeout" and df.seq_len[0] == 32  # the first sweep's row, alone


def test_a_dead_holder_does_not_block(tmp_path):
    """Before: there was no lock at all (nothing to fail on a stale one): `harness.results.lock` is new."""
    path = tmp_path / ".spbench.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Busy):
        lock(path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    held = lock(path)  # the lock file is still there, its holder is not
    assert f"pid {os.getpid()}" in path.read_text()
    held.close()


# --- 6. resume by configuration -------------------------------------------------------------------


def test_resume_finds_rows_by_configuration_not_job_number(tmp_path, monkeypatch, capfd):
    """Before: the second sweep wrote 16 over the row of 32 in dir 0, reran 32 and 64 (their job
    numbers had moved) and left 3 rows whose run_ids were all new."""
    sweep = tmp_path / "sweep"
    code, out, _ = in_process(
        monkeypatch, capfd, "-m", *DRY, "workload.seq_len=32,64", f"hydra.sweep.dir={sweep}"
    )
    assert code == 0 and "sweep: 2 ok ->" in out
    before = {r.seq_len: r.run_id for r in load(sweep).itertuples()}
    code, out, err = in_process(
        monkeypatch, capfd, "-m", *DRY, "workload.seq_len=16,32,64", f"hydra.sweep.dir={sweep}"
    )
    assert code == 0, out + err
    assert out.count("[ok]") == 1 and out.count("[skip]") == 2 and "sweep: 3 ok (2 skipped) ->" in out
    df = load(sweep)
    assert len(df) == 3 and sorted(df.seq_len) == [16, 32, 64]
    after = {r.seq_len: r.run_id for r in df.itertuples()}
    assert after[32] == before[32] and after[64] == before[64] and after[16] not in before.values()
    for n, seq_len in enumerate((16, 32, 64)):  # each row sits with the .hydra/ of its configuration
        assert read_row(sweep / str(n) / "result.json")["seq_len"] == seq_len
        assert f"workload.seq_len={seq_len}" in (sweep / str(n) / ".hydra" / "overrides.yaml").read_text()
    # a shorter sweep: the row it displaces is kept by configuration, and load still sees each row once
    code, out, _ = in_process(
        monkeypatch, capfd, "-m", *DRY, "workload.seq_len=64", f"hydra.sweep.dir={sweep}"
    )
    assert code == 0 and "[moved]" in out and "[skip]" in out
    df = load(sweep)
    assert sorted(df.seq_len) == [16, 32, 64] and df.run_id.is_unique
    assert {r.seq_len: r.run_id for r in df.itertuples()} == after


def test_the_row_index_is_fast_for_a_thousand_rows(tmp_path):
    """Before: no index (resume looked only at the job's own directory)."""
    for n in range(1000):
        write_row(
            tmp_path / str(n), {"config_hash": f"h{n}", "status": "ok" if n % 2 else "error", "seq_len": n}
        )
    t0 = time.monotonic()
    index = row_index(tmp_path)
    assert time.monotonic() - t0 < 5
    assert len(index) == 1000 and index["h7"] == (tmp_path / "7" / "result.json", "ok")


# --- 7. exit codes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,status,code",
    [
        ([], "ok", 0),
        (["world_size=3"], "invalid", 2),
        (["fault.kind=crash"], "error", 1),
    ],
)
def test_a_single_run_exits_by_its_status(tmp_path, monkeypatch, capfd, overrides, status, code):
    """Before: 0 for every status."""
    got, out, err = in_process(monkeypatch, capfd, *DRY, *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert read_row(tmp_path / "run" / "result.json")["status"] == status
    assert got == code, out + err
