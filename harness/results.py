"""Result rows: one `result.json` per job, written atomically; `load` gathers them into a DataFrame.
Also what keeps rows whole across resumes and concurrent writers: damaged rows set aside, a lock per
job (and sweep) directory, and an index of a sweep's rows by configuration."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import socket
import sys
import tempfile
import warnings
from pathlib import Path

import pandas as pd

ROW_FILE = "result.json"
LOCK_FILE = ".spbench.lock"
PARKED_DIR = "by_config"  # <sweep dir>/by_config/<config_hash>/result.json: a row moved out of a job dir


class RowWriteError(OSError):
    """The row could not be written (disk full, read-only directory, ...); `path` is where it was going."""

    def __init__(self, path: Path, cause: OSError):
        self.message = f"cannot write the row to {path}: {cause.strerror or cause}"
        super().__init__(cause.errno, self.message)
        self.path = path

    def __str__(self) -> str:
        return self.message


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_row(job_dir: str | Path, row: dict) -> Path:
    """Write the row as job_dir/result.json via a temporary file and a rename (never half a row),
    readable as any file the user creates (0666 less the umask, not mkstemp's 0600). On failure the
    temporary file is removed and a RowWriteError names the path."""
    job_dir = Path(job_dir)
    path, tmp = job_dir / ROW_FILE, None
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=job_dir, prefix=".result.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            json.dump(row, f, indent=1, sort_keys=True, default=str)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise RowWriteError(path, e) from e
    return path


def read_row(path: str | Path) -> dict:
    """The row at `path`; OSError or ValueError (naming the path) when it is missing, unreadable,
    truncated, empty or not a JSON object."""
    try:
        with open(path) as f:
            row = json.load(f)
    except ValueError as e:
        raise ValueError(f"{path}: not a whole row ({e})") from e
    if not isinstance(row, dict):
        raise ValueError(f"{path}: not a row (a JSON {type(row).__name__}, not an object)")
    return row


def set_aside(path: str | Path) -> Path:
    """Move a damaged row (file or directory) to `<path>.damaged`, or `.damaged.N` when that exists,
    where `load` does not see it; returns the new path."""
    path = Path(path)
    target, n = path.with_name(path.name + ".damaged"), 0
    while target.exists() or target.is_symlink():
        n += 1
        target = path.with_name(f"{path.name}.damaged.{n}")
    os.rename(path, target)
    return target


class Busy(Exception):
    """Another live process holds the lock (the kernel drops a dead process's flock)."""


def lock(path: str | Path):
    """Take an exclusive, non-blocking flock on `path` (created if missing) and record who holds it;
    returns the open file, which holds the lock until closed (or garbage-collected, or the process
    dies). Raises Busy with the holder's note when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 -- returned open: the open file holds the lock
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise Busy(f"{path} is locked by {holder}") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


def row_index(directory: str | Path) -> dict[str, tuple[Path, str]]:
    """config_hash -> (path, status) of the rows under `directory`, an ok row preferred when a
    configuration has several. Unreadable rows are left out (their own job sets them aside)."""
    index: dict[str, tuple[Path, str]] = {}
    for path in sorted(Path(directory).rglob(ROW_FILE)):
        try:
            row = read_row(path)
        except (OSError, ValueError):
            continue
        key, status = row.get("config_hash"), row.get("status", "")
        if key and (key not in index or (status == "ok" and index[key][1] != "ok")):
            index[key] = (path, status)
    return index


def load(directory: str | Path) -> pd.DataFrame:
    """Every row under `directory` (recursively) as one DataFrame, with the row's `job_dir` and
    `timestamp` as a datetime. Files that cannot be read are reported by path (a warning, and
    `df.attrs["unreadable"]`), never dropped silently."""

    rows, unreadable = [], []
    for path in sorted(Path(directory).rglob(ROW_FILE)):
        try:
            row = read_row(path)
        except (OSError, ValueError) as e:
            unreadable.append(str(e) if str(path) in str(e) else f"{path}: {e}")
            continue
        row["job_dir"] = str(path.parent)
        rows.append(row)
    df = pd.DataFrame(rows)
    if "timestamp" in df:  # an ISO string in the row, a (UTC) datetime here
        df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601")
    df.attrs["unreadable"] = unreadable
    if unreadable:
        warnings.warn(f"{len(unreadable)} unreadable result file(s): " + "; ".join(unreadable), stacklevel=2)
    return df


def flatten(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with every column of dicts spread into one column per leaf, named by its path
    (`comm_detail` -> `comm_detail.fwd.all_to_all`, ...), in place of the dict column; lists stay."""
    out = []
    for name in df.columns:
        column = df[name]
        if column.map(lambda v: isinstance(v, dict)).any():
            values = column.map(lambda v: v if isinstance(v, dict) else {})
            spread = pd.json_normalize(values.tolist(), sep=".").add_prefix(f"{name}.")
            out.append(spread.set_axis(df.index))
        else:
            out.append(column.to_frame())
    return pd.concat(out, axis=1) if out else df


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.results DIR [--csv OUT.csv] [--parquet OUT.parquet]`: the rows under DIR,
    dict columns flattened, as CSV and/or Parquet; with neither, how many rows of each status."""
    parser = argparse.ArgumentParser(prog="python -m harness.results", description=main.__doc__)
    parser.add_argument("directory", type=Path, help="a sweep, run or experiment directory")
    parser.add_argument("--csv", type=Path, help="write the rows as CSV here")
    parser.add_argument("--parquet", type=Path, help="write the rows as Parquet here")
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        parser.error(f"{args.directory} is not a directory")
    df = load(args.directory)
    if df.empty:
        print(f"no rows under {args.directory}", file=sys.stderr)
        return 1
    flat = flatten(df)
    if args.csv:
        flat.to_csv(args.csv, index=False)
    if args.parquet:
        flat.to_parquet(args.parquet, index=False)
    written = [str(p) for p in (args.csv, args.parquet) if p]
    counts = ", ".join(f"{n} {status}" for status, n in df["status"].value_counts().items())
    print(
        f"{len(df)} rows ({counts}) from {args.directory}" + (f" -> {', '.join(written)}" if written else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
