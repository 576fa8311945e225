"""`python -m harness.run [overrides]` runs one configuration; `-m` sweeps (Hydra multirun).

Hydra is the parent process: each job validates its config, launches its ranks itself and writes
exactly one row (`result.json` in its job directory) whatever happens. The pieces of a row come from
their own modules: provenance, metrics, failures (classification), hashing, console (what is printed)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import hydra
import torch
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

import methods
from methods.common.attention import KERNELS, META_CAPABILITY, candidate_backends
from methods.common.config import InvalidConfig, Problem

from . import console, provenance, signals
from .capacity import fit_fields
from .cluster import node_plan, primary_node
from .failures import available_memory_frac, classify_failure, oom_kill_count
from .groups import CONF_DIR, experiment_choices, rewrite_unknown_choices
from .hashing import config_hash
from .labels import OPTION_COLUMNS, label, resolved_options
from .launch import ChildFailedError, LaunchTimeout, launch
from .metrics import metrics, suspect
from .problem import problem_from_cfg, resolve_backend
from .results import (
    LOCK_FILE,
    PARKED_DIR,
    ROW_FILE,
    Busy,
    RowWriteError,
    lock,
    read_row,
    row_index,
    set_aside,
    write_row,
)
from .schema import validate
from .worker import Fault, Job, entry, entry_single

log = logging.getLogger(__name__)

DRYRUN_HARDWARE = "h100_nvlink_8x"  # dryrun projects onto the GPU profile unless hardware= is chosen


def config_fields(cfg: DictConfig) -> dict:
    """The row's config columns, readable even when the config is invalid; the method options as
    given (`resolved_options` replaces them once the problem is valid)."""
    model, workload, method = cfg.get("model") or {}, cfg.get("workload") or {}, cfg.get("method") or {}
    return {
        "method": method.get("name", cfg.get("unknown_method")),
        "model": model.get("name", cfg.get("unknown_model")),
        "workload": workload.get("name", cfg.get("unknown_workload")),
        "world_size": cfg.get("world_size"),
        **{name: method.get(name) for name in OPTION_COLUMNS},
        "batch_size": workload.get("batch_size"),
        "seq_len": workload.get("seq_len"),
        "frames": workload.get("frames"),
        "spatial": workload.get("spatial"),
        "hidden": model.get("hidden"),
        "heads": model.get("heads"),
        "kv_heads": model.get("kv_heads"),
        "head_dim": model.get("head_dim"),
        "ffn_hidden": model.get("ffn_hidden"),
        "layers": model.get("layers"),
        "dtype": cfg.get("dtype"),
        "causal": workload.get("causal"),
    }


def base_row(cfg: DictConfig) -> dict:
    """The fields every row has, whatever happens to the job: provenance, the configuration, how it
    was run."""
    bench = cfg.get("bench") or {}
    row = {
        "run_id": str(uuid.uuid4()),
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "config_hash": config_hash(cfg),
        **provenance.host(),
        "mode": cfg.get("mode"),
        "hardware": (cfg.get("hardware") or {}).get("name"),
        "hardware_defaulted": bool(cfg.get("hardware_defaulted", False)),
        **config_fields(cfg),
        "seed": cfg.get("seed"),
        "warmup": bench.get("warmup"),
        "iters": bench.get("iters"),
        "status": "ok",
        "error": None,
    }
    return {**row, "label": label(row)}


FAULT_KINDS = ("none", "oom", "crash", "hang", "nan")


def fault_from_cfg(cfg: DictConfig) -> Fault:
    f = cfg.get("fault") or {}
    kind = str(f.get("kind", "none")).lower()  # YAML reads a bare `nan` as a float
    if kind not in FAULT_KINDS:
        raise InvalidConfig(f"fault.kind={kind!r} is not one of {', '.join(FAULT_KINDS)}")
    return Fault(kind, int(f.get("rank", 0)), int(f.get("step", 0)))


MODES = ("real", "emulate", "dryrun")
DEVICES = ("auto", "cpu", "meta")


def _check_device(cfg: DictConfig, problem: Problem, attn_backend: str) -> str:
    """`device` of an emulate job; on meta a forced kernel must be one the stand-in GPU binds."""
    device = str(cfg.get("device", "auto"))
    if device not in DEVICES:
        raise InvalidConfig(f"device={device!r} is not one of {', '.join(DEVICES)}")
    if device != "auto" and cfg.mode != "emulate":
        raise InvalidConfig(
            f"device={device} needs mode=emulate (real runs use each rank's GPU or the CPU, "
            "dryrun uses fake tensors)"
        )
    if device == "meta" and attn_backend != "auto":
        bound = candidate_backends(torch.device("meta"), problem.torch_dtype)
        if attn_backend not in bound:
            raise InvalidConfig(
                f"bench.attn_backend={attn_backend} cannot run {problem.dtype} on the meta "
                f"device (a stand-in GPU of compute capability {META_CAPABILITY[0]}.{META_CAPABILITY[1]}; "
                f"flash-attn kernels need their package installed): bound here: {', '.join(bound)}"
            )
    return device


def _check_mode(cfg: DictConfig, problem: Problem) -> int:
    """The rank that emulate and dryrun play; verify needs real collectives."""
    play_rank = cfg.get("play_rank", 0)
    if cfg.mode != "real" and cfg.get("verify"):
        raise InvalidConfig(
            f"verify=true needs mode=real: mode={cfg.mode} computes against a fake process group"
        )
    if not isinstance(play_rank, int) or not 0 <= play_rank < problem.world_size:
        raise InvalidConfig(
            f"play_rank must be a rank of the world (0..{problem.world_size - 1}), got {play_rank!r}"
        )
    return play_rank


def _memory_capacity(backend: str, ranks_here: int) -> tuple[int, str]:
    """What one rank may use: a GPU's total memory, or this node's available RAM shared by its ranks."""
    if backend == "nccl":
        return torch.cuda.get_device_properties(0).total_memory, "the GPU's total memory"
    import psutil

    available = psutil.virtual_memory().available
    return (
        available // ranks_here,
        f"available RAM {available / 2**30:.2f} GiB / {ranks_here} ranks on this node",
    )


def _check_memory(cfg: DictConfig, problem: Problem, backend: str, ranks_here: int) -> None:
    """A real run whose per-rank memory model exceeds what a rank has would only thrash or be killed:
    refused unless bench.allow_oversubscribe."""
    method = methods.for_problem(problem)
    if cfg.bench.get("allow_oversubscribe", False):
        return
    need = method.memory_cost(problem).total
    have, what = _memory_capacity(backend, max(1, ranks_here))
    if need > have:
        raise InvalidConfig(
            f"the per-rank memory model needs {need / 2**30:.2f} GiB ({need} bytes), more than "
            f"{have / 2**30:.2f} GiB ({have} bytes; {what}); bench.allow_oversubscribe=true runs it anyway"
        )


def execute(cfg: DictConfig, job_dir: Path) -> dict:
    """Run one job and return its row; expected failures become the row's status, never an exception."""
    backend = None
    row = base_row(cfg)
    try:
        cfg = validate(cfg)  # every typed key of the wrong type or out of range: an invalid row naming it
        mode = str(cfg.get("mode"))
        if mode not in MODES:
            raise InvalidConfig(f"mode={mode!r} is not one of {', '.join(MODES)}")
        backend = resolve_backend(cfg) if mode == "real" else "fake"
        problem = problem_from_cfg(cfg)
        play_rank = _check_mode(cfg, problem)
        fault = fault_from_cfg(cfg)
        single = mode != "real"  # emulate and dryrun: one process plays one rank
        plan = node_plan(problem.world_size, one_process=single)  # a bad SLURM allocation is an invalid row
        attn_backend = str(cfg.bench.get("attn_backend", "auto"))
        if attn_backend != "auto" and attn_backend not in KERNELS:
            raise InvalidConfig(
                f"bench.attn_backend={attn_backend!r}: choose auto or one of {', '.join(sorted(KERNELS))}"
            )
        device = _check_device(cfg, problem, attn_backend)
        if mode == "real":
            _check_memory(cfg, problem, backend, plan.nproc_per_node)
    except InvalidConfig as e:
        return {**row, "backend": backend, "device_name": None, "status": "invalid", "error": str(e)}
    row.update(resolved_options(problem))
    row["label"] = label(row)
    on_gpu = provenance.uses_gpu(backend, mode, device)
    problem = replace(problem, device="meta" if device == "meta" else "cuda" if on_gpu else "cpu")
    row.update(
        backend=backend,
        device_name=provenance.device_name(backend, mode, device),
        **provenance.versions(backend, mode, problem.world_size, device),
    )
    # a collective waiting on a dead or hung peer gives up before the watchdog ends the job
    job = Job(
        problem,
        backend,
        seed=cfg.seed,
        warmup=cfg.bench.warmup,
        iters=cfg.bench.iters,
        verify=cfg.verify,
        pg_timeout_s=0.75 * cfg.bench.timeout_s,
        fault=fault,
        mode=mode,
        play_rank=play_rank,
        attn_backend=attn_backend,
        device=device,
        profile_dir=str(job_dir / "ranks") if cfg.bench.get("profile") else None,
    )
    if plan.idle:  # emulate/dryrun on a multi-node step: node 0 plays the rank, this node has no row
        return row
    log.info(
        "%s: %s %s on %d rank(s), %s", row["label"], mode, console.size(row), problem.world_size, backend
    )
    oom_kills_before = oom_kill_count()
    try:
        ranks = launch(
            entry_single if single else entry,
            ([job],),
            1 if single else problem.world_size,
            job_dir / "ranks",
            timeout_s=cfg.bench.timeout_s,
            plan=plan,
        )
    except LaunchTimeout as e:
        return {**row, "status": "timeout", "error": str(e)}
    except ChildFailedError as e:
        oom_kills_after = oom_kill_count()
        new_oom_kills = None
        if oom_kills_before is not None and oom_kills_after is not None:
            new_oom_kills = oom_kills_after - oom_kills_before
        status, reason = classify_failure(e, new_oom_kills, available_memory_frac())
        return {**row, "status": status, "error": reason}
    per_rank = [result[0] for _, result in sorted(ranks.items())]
    row.update(play_rank=play_rank if single else None, **metrics(problem, per_rank, cfg.hardware, mode))
    row.update(fit_fields(problem, cfg.hardware, row["peak_mem_bytes"], cfg.get("train")))
    suspicion = suspect(row)
    return {**row, "suspect": suspicion is not None, "suspect_reason": suspicion}


# --- resuming, locking and writing rows -------------------------------------------------------
# A job directory's result.json always belongs to the configuration Hydra just described in its
# .hydra/ (Hydra numbers job dirs by position, so a reordered or extended sweep gives a dir to another
# configuration): a row of another configuration found there is moved to <sweep dir>/by_config/<its
# config_hash>/ (never overwritten), and a configuration's own row found elsewhere in the sweep moves
# into its job dir. Each row exists in exactly one place, so `load` sees it once.

_NOTHING_TO_RUN = object()
_INDEX: dict[Path, dict] = {}  # sweep dir -> row_index: scanned once per process, kept current by our moves
_OUTCOMES: list[tuple[str, bool]] = []  # (status, skipped) per job of this process, for main()'s exit status
_SWEEP: dict = {}  # the multirun of this process: its directory and its lock
UNWRITTEN, BUSY = console.UNWRITTEN, console.BUSY


def _sweep_root(job_dir: Path) -> Path:
    """Where the rows of this job's configuration may be: the sweep directory, or a single run's own."""
    hc = HydraConfig.get()
    return Path(hc.sweep.dir).resolve() if hc.mode == RunMode.MULTIRUN else job_dir.resolve()


def _index(root: Path) -> dict:
    if root not in _INDEX:
        _INDEX[root] = row_index(root)
    return _INDEX[root]


def _move(src: Path, dst: Path, index: dict, from_other_job: bool = False) -> bool:
    """Move a row file (False when it is gone, or sits in another job dir whose job is running)."""
    held = None
    if from_other_job and src.parent.parent.name != PARKED_DIR:  # only while no job runs there
        try:
            held = lock(src.parent / LOCK_FILE)
        except Busy:
            return False
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dst)
    except FileNotFoundError:
        return False
    finally:
        if held is not None:
            held.close()
    for k, (path, status) in list(index.items()):
        if path == src:
            index[k] = (dst, status)
    return True


def _park(root: Path, previous: Path, old: dict, index: dict) -> None:
    """Move a row of another configuration out of this job's dir, into by_config/<its hash>/."""
    key = old.get("config_hash") or f"unhashed-{old.get('run_id')}"
    target, n = root / PARKED_DIR / key / ROW_FILE, 0
    while target.exists():  # never over another row
        n += 1
        target = root / PARKED_DIR / f"{key}-{n}" / ROW_FILE
    if _move(previous, target, index):
        log.warning("[moved] %s held a row of another configuration (%s): kept as %s", previous, key, target)


def _claim(cfg: DictConfig, job_dir: Path):
    """Before a job runs: lock its directory (another live process running it: the point is left to
    that process, no row here), set a damaged row aside, move a row of another configuration out of
    the way, and skip the point when an ok row of its configuration is anywhere in the sweep
    (`resume=false` reruns it). Returns the job dir's lock, held while the job runs, or _NOTHING_TO_RUN."""
    primary = primary_node()  # other nodes of a multi-node job only decide whether to start their ranks
    held = None
    if primary:
        try:
            held = lock(job_dir / LOCK_FILE)
        except Busy as e:
            print(
                f"[busy] {job_dir}: {e}, which is running this point: no row from this process",
                file=sys.stderr,
            )
            _OUTCOMES.append((BUSY, False))
            _progress(base_row(cfg), BUSY)
            return _NOTHING_TO_RUN
    key, root = config_hash(cfg), _sweep_root(job_dir)
    index = _index(root)
    previous = (job_dir / ROW_FILE).resolve()
    if primary and (previous.exists() or previous.is_symlink()):
        try:
            old = read_row(previous)
        except (OSError, ValueError) as e:
            aside = set_aside(previous)
            log.warning(
                "[damaged] %s cannot be read as a row (%s); kept as %s, the point runs again",
                previous,
                e,
                aside,
            )
        else:
            if old.get("config_hash") != key:
                _park(root, previous, old, index)
    found = index.get(key)
    if found and found[0] != previous and primary and not previous.exists():
        # its own row, from a dir that another configuration now has
        _move(found[0], previous, index, from_other_job=True)
        found = index.get(key)
    if found and found[1] == "ok" and cfg.get("resume", True):
        print(
            f"[skip] {cfg.get('method', {}).get('name')} seq_len={cfg.get('workload', {}).get('seq_len')}: "
            f"ok row of this configuration ({key}) already in {found[0].parent} (resume=false reruns)"
        )
        _OUTCOMES.append(("ok", True))
        _progress(read_row(found[0]), "skipped")
        return _NOTHING_TO_RUN
    return held


def _finish(job_dir: Path, row: dict, held) -> None:
    """Write the row and print its line; a row that cannot be written ends the job with the reason
    and the path, and goes to stderr as one JSON line (`spbench-row: {...}`), so nothing measured is lost."""
    row["overrides"] = list(HydraConfig.get().overrides.task)  # the row says what it is, wherever it moves
    try:
        path = write_row(job_dir, row)
    except RowWriteError as e:
        print(f"[{UNWRITTEN}] {e}; the row follows on stderr", file=sys.stderr)
        print("spbench-row: " + json.dumps(row, sort_keys=True, default=str), file=sys.stderr, flush=True)
        _OUTCOMES.append((UNWRITTEN, False))
    else:
        _index(_sweep_root(job_dir))[row["config_hash"]] = (path.resolve(), row["status"])
        _OUTCOMES.append((row["status"], False))
        print(console.row_line(row, job_dir), flush=True)
        log.info("row %s (%s) -> %s", row["status"], row["label"], path)
    _progress(row, _OUTCOMES[-1][0])
    if held is not None:
        held.close()


def _points(config: DictConfig) -> int | None:
    """How many points the multirun has (None under a sweeper other than Hydra's basic one, or with a
    glob choice, which only the sweeper's config loader expands): the cartesian product of the
    sweep's values, listed the way BasicSweeper lists them."""
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != "hydra._internal.core_plugins.basic_sweeper.BasicSweeper":
        return None
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
    if any(isinstance(o.value(), Glob) for o in overrides):
        return None
    return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))


def _progress(row: dict, status: str) -> None:
    """A multirun's line per point: `[k/N] label size status step_time peak_mem (elapsed, ETA)`."""
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return
    started = _SWEEP.get("started")
    elapsed = time.monotonic() - started if started is not None else None
    print(console.progress_line(hc.job.num + 1, _SWEEP.get("points"), row, status, elapsed), flush=True)


def _hardware_chosen() -> bool:
    """Whether the command line, or the experiment it names, chose `hardware=` (else config.yaml's
    default)."""
    overrides = list(HydraConfig.get().overrides.task)
    named = {o.partition("=")[0].lstrip("+~") for o in overrides}
    return "hardware" in named or "hardware" in experiment_choices(overrides)


def _with_hardware(cfg: DictConfig, name: str) -> DictConfig:
    """`cfg` projecting onto conf/hardware/<name>.yaml, marked as a default (the row and its line say so)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.hardware = OmegaConf.load(CONF_DIR / "hardware" / f"{name}.yaml")
        cfg.hardware_defaulted = True
    return cfg


class SweepLock(Callback):
    """One sweep at a time per sweep directory: a second multirun on a directory that a live one is
    writing stops before its first point (exit status 1); the kernel drops a dead sweep's lock."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        try:
            _SWEEP["lock"] = lock(sweep_dir / ".spbench-sweep.lock")
        except Busy as e:
            sys.exit(
                f"error: another sweep is writing {sweep_dir} ({e}); nothing was run: wait for it, "
                "or choose another hydra.sweep.dir"
            )
        _SWEEP.update(dir=sweep_dir, started=time.monotonic())
        _SWEEP["points"] = _points(config)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if "lock" in _SWEEP:
            _SWEEP.pop("lock").close()


def _conclude() -> int:
    """main()'s exit status; after a multirun, print the one-line summary."""
    if "dir" in _SWEEP:
        # points run by this process; submitit runs them elsewhere: then the rows in the sweep dir
        outcomes = _OUTCOMES or [(status, False) for _, status in row_index(_SWEEP["dir"]).values()]
        print(console.summary_line(outcomes, _SWEEP["dir"]), flush=True)
        statuses = {status for status, _ in outcomes}
        return 1 if UNWRITTEN in statuses or BUSY in statuses else 0
    if not _OUTCOMES:  # --help, --cfg: no job ran
        return 0
    status = _OUTCOMES[-1][0]
    return 0 if status == "ok" else 2 if status == "invalid" else 1


def interrupted(cfg: DictConfig, job_dir: Path, stop: signals.Interrupted, seconds: float) -> None:
    """Write the row of a job that SIGINT or SIGTERM ended (its ranks are already gone), then stop the
    whole sweep: the exit code says which signal (128 + its number)."""
    row = {**base_row(cfg), "status": "interrupted", "error": stop.reason(), "job_seconds": seconds}
    if primary_node():
        write_row(job_dir, row)
    print(
        f"[interrupted] {row['method']} {console.size(row)} world_size={row['world_size']}: {row['error']}"
        f" -> {job_dir}; the sweep stops",
        flush=True,
    )
    raise SystemExit(stop.exit_code)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.get("mode") == "dryrun" and not _hardware_chosen():
        cfg = _with_hardware(cfg, DRYRUN_HARDWARE)
    claim = _claim(cfg, job_dir)
    if claim is _NOTHING_TO_RUN:
        return
    started = time.monotonic()
    signals.install()  # SIGINT / SIGTERM: this point gets an `interrupted` row, the sweep stops
    try:
        row = execute(cfg, job_dir)
    except signals.Interrupted as stop:
        interrupted(cfg, job_dir, stop, time.monotonic() - started)
    row["job_seconds"] = time.monotonic() - started
    if (
        not primary_node()
    ):  # a multi-node job's other nodes ran their ranks; node 0 (global rank 0) writes the row
        return
    _finish(job_dir, row, claim)


def main() -> None:
    """Exit status: a single run 0 when its row is ok (or already was), 2 when invalid, 1 otherwise;
    a multirun 0 when every point has a row (whatever its status), 1 when some point has none (its
    row could not be written, or another process holds its directory), after a one-line summary."""
    sys.argv = [sys.argv[0], *rewrite_unknown_choices(sys.argv[1:])]
    signals.install()
    try:
        _hydra_main()
    except signals.Interrupted as stop:  # arrived between jobs: no job to write a row for
        print(f"interrupted by {signal.Signals(stop.signum).name}", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None
    sys.exit(_conclude())


if __name__ == "__main__":  # run as harness.run, the module whose SweepLock Hydra instantiates (one state)
    from harness.run import main as _main

    _main()
