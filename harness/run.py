"""`python -m harness.run [overrides]` runs one configuration; `-m` sweeps (Hydra multirun).

Hydra is the parent process: each job validates its config, launches its ranks itself and writes
exactly one row (`result.json` in its job directory) whatever happens."""
from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections import Counter
import json
import linecache
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import methods
from methods.common.attention import KERNELS, META_CAPABILITY, candidate_backends
from methods.common.config import InvalidConfig, Problem

from . import signals
from .cluster import node_plan, primary_node
from .flops import step_flops
from .groups import CONF_DIR, rewrite_unknown_choices
from .launch import ChildFailedError, LaunchTimeout, launch
from .problem import problem_from_cfg, resolve_backend
from .projection import comm_seconds
from .results import (LOCK_FILE, PARKED_DIR, ROW_FILE, Busy, RowWriteError, lock, read_row, row_index,
                      set_aside, write_row)
from .schema import validate
from .worker import Fault, Job, entry, entry_single

REPO = Path(__file__).resolve().parent.parent


def _git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _uses_gpu(backend: str, mode: str, device: str = "auto") -> bool:
    """Real runs on NCCL, and emulation on a machine with CUDA (dryrun never computes)."""
    return backend == "nccl" or (mode == "emulate" and device == "auto" and torch.cuda.is_available())


def _device_name(backend: str, mode: str, device: str = "auto") -> str:
    if mode == "dryrun":
        return "fake"
    if device == "meta":
        return "meta"
    if _uses_gpu(backend, mode, device):
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine() or "cpu"


def _versions(backend: str, mode: str, world_size: int, device: str = "auto") -> dict:
    """Where the row's numbers come from: GPUs used, CUDA and NCCL versions (None without CUDA)."""
    gpu = _uses_gpu(backend, mode, device)
    nccl = torch.cuda.nccl.version() if gpu and backend == "nccl" else None
    return {"device_count": (world_size if backend == "nccl" else 1) if gpu else 0,
            "cuda_version": torch.version.cuda if gpu else None,
            "nccl_version": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl}


def _suspect(row: dict) -> str | None:
    """A measured rate above the hardware's peak cannot be right (a timing or FLOP-count bug, or a
    wrong hardware profile): such rows are flagged, not dropped."""
    for key in ("mfu", "mfu_compute"):
        if (row.get(key) or 0) > 1:
            return f"{key}={row[key]:.2f} exceeds the hardware profile's peak TFLOP/s"
    return None


def config_fields(cfg: DictConfig) -> dict:
    """The row's config columns, readable even when the config is invalid."""
    model, workload, method = cfg.get("model") or {}, cfg.get("workload") or {}, cfg.get("method") or {}
    return {
        "method": method.get("name", cfg.get("unknown_method")),
        "model": model.get("name", cfg.get("unknown_model")),
        "workload": workload.get("name", cfg.get("unknown_workload")),
        "world_size": cfg.get("world_size"),
        "ulysses_degree": method.get("ulysses_degree"), "ring_degree": method.get("ring_degree"),
        "ring_layout": method.get("layout"), "zero3": bool(method.get("zero3", False)),
        "batch_size": workload.get("batch_size"), "seq_len": workload.get("seq_len"),
        "frames": workload.get("frames"), "spatial": workload.get("spatial"),
        "hidden": model.get("hidden"), "heads": model.get("heads"), "kv_heads": model.get("kv_heads"),
        "head_dim": model.get("head_dim"), "ffn_hidden": model.get("ffn_hidden"), "layers": model.get("layers"),
        "dtype": cfg.get("dtype"), "causal": workload.get("causal"),
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _max_comm(per_rank: list[dict]) -> dict:
    out: dict = {"fwd": {}, "bwd": {}}
    for r in per_rank:
        for phase, kinds in r["comm"].items():
            for kind, b in kinds.items():
                out[phase][kind] = max(out[phase].get(kind, 0), b)
    return out


def _rates(problem: Problem, seconds: float, hardware: DictConfig, suffix: str = "") -> dict:
    """Throughput and MFU of a step of `seconds`. `mfu` counts causal-effective FLOPs (the masked
    half of causal attention removed), `mfu_dense` counts causal attention as dense."""
    dense, effective = step_flops(problem)
    peak = (hardware.get("peak_tflops") or {}).get(problem.dtype)
    per_gpu = {"": effective / problem.world_size / seconds / 1e12, "_dense": dense / problem.world_size / seconds / 1e12}
    row = {f"tokens_per_s{suffix}": problem.workload.tokens / seconds}
    for kind, tflops in per_gpu.items():
        row[f"tflops_per_gpu{kind}{suffix}"] = tflops
        row[f"mfu{kind}{suffix}"] = tflops / peak if peak else None
    return row


def _timing(problem: Problem, per_rank: list[dict], hardware: DictConfig, mode: str, comm_s: float) -> dict:
    """Real: step time = max over ranks per iteration, then median/p10/p90. Emulate: the played rank's
    compute time plus the projected communication (no overlap), and the perfect-overlap bound."""
    step_s = [max(it) for it in zip(*(r["step_times_s"] for r in per_rank))]
    row: dict = {}
    if mode == "emulate":
        compute = statistics.median(step_s)
        row.update({"compute_time_ms": 1e3 * compute, "step_time_ms_overlap": 1e3 * max(compute, comm_s)})
        row.update(_rates(problem, compute, hardware, "_compute"))
        row.update(_rates(problem, max(compute, comm_s), hardware, "_overlap"))
        step_s = [s + comm_s for s in step_s]
    median = statistics.median(step_s)
    row.update({"step_time_ms": 1e3 * median, "step_time_ms_p10": 1e3 * _percentile(step_s, 0.1),
                "step_time_ms_p90": 1e3 * _percentile(step_s, 0.9), "step_times_ms": [1e3 * t for t in step_s]})
    return {**row, **_rates(problem, median, hardware)}


def metrics(problem: Problem, per_rank: list[dict], hardware: DictConfig, mode: str = "real") -> dict:
    """The row's measurements from the ranks' results (one result in emulate and dryrun)."""
    dense, effective = step_flops(problem)
    comm = _max_comm(per_rank)
    method = methods.for_problem(problem)
    theory = method.comm_cost(problem).as_dict()
    memory = method.memory_cost(problem) if method.memory_cost else None
    comm_s = max(comm_seconds(r["comm_records"], hardware) for r in per_rank)
    row = {
        "model_flops": dense, "model_flops_effective": effective,
        "peak_mem_bytes": max(r.get("peak_mem_bytes", 0) for r in per_rank),
        "peak_mem_reserved_bytes": max(r.get("peak_mem_reserved_bytes", 0) for r in per_rank) or None,  # CUDA
        "peak_mem_detail": per_rank[0].get("peak_mem_detail"),
        # what the forward left alive for the backward (saved activations and the output); CPU tracker only
        "mem_fwd_end_detail": per_rank[0].get("mem_fwd_end_detail"),
        "mem_end_detail": per_rank[0].get("mem_end_detail"),  # after the step: the gradients are there
        "theory_mem_bytes": memory.total if memory else None,
        "theory_mem_detail": memory.as_dict() if memory else None,
        "comm_bytes_fwd": sum(comm["fwd"].values()), "comm_bytes_bwd": sum(comm["bwd"].values()),
        "theory_comm_bytes_fwd": sum(theory["fwd"].values()), "theory_comm_bytes_bwd": sum(theory["bwd"].values()),
        "comm_detail": comm, "theory_comm_detail": theory, "comm_calls": per_rank[0]["comm_calls"],
        "projected_comm_ms": 1e3 * comm_s, "attn_backend": per_rank[0]["attn_backend"],
        "linear_backend": per_rank[0].get("linear_backend"),  # linear and hybrid models: fla_chunk | torch_chunked
    }
    if per_rank[0]["step_times_s"]:
        row.update(_timing(problem, per_rank, hardware, mode, comm_s))
    overlaps = [r["overlap_frac"] for r in per_rank if r.get("overlap_frac") is not None]
    row["overlap_frac"] = statistics.mean(overlaps) if overlaps else None  # bench.profile: mean over ranks
    if "verify_out_rel_err" in per_rank[0]:
        row["verify_out_rel_err"] = max(r["verify_out_rel_err"] for r in per_rank if "verify_out_rel_err" in r)
        row["verify_grad_rel_err"] = max(r["verify_grad_rel_err"] for r in per_rank if "verify_grad_rel_err" in r)
    return row


# what a rank reports when a *peer* failed or hung: never the cause of a failure
FOLLOW_ON = ("connection closed", "connection reset", "closed by peer", "broken pipe", "timed out", "timeout",
             "signal 15", "signal 9", "sigterm", "sigkill", "terminated", "exitcode: -9", "exitcode: -15")


def _failure_text(failure) -> str:
    """The rank's error message, then its traceback (the launcher's error file holds both)."""
    message = failure.message
    if isinstance(message, dict):  # {"message": "...", "extraInfo": {"py_callstack": "..."}}
        stack = message.get("extraInfo", {}).get("py_callstack", "")
        message = f"{message.get('message', '')}\n{stack}"
    return str(message).strip() or f"exit code {failure.exitcode}"


def _oom_kill_count() -> int | None:
    """How many processes the kernel's OOM killer has killed so far, as this machine counts them: the
    cgroup's counter (v2 memory.events, v1 memory.oom_control) plus /proc/vmstat's; None where neither
    is readable. Only its rise during a launch matters (the kernel log is not readable here)."""
    total, found = 0, False
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control", "/proc/vmstat"):
        try:
            for line in Path(path).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    total, found = total + int(value), True
        except (OSError, ValueError):
            continue
    return total if found else None


def _available_memory_frac() -> float:
    import psutil
    vm = psutil.virtual_memory()
    return vm.available / vm.total


LOW_MEMORY_FRAC = 0.03  # available memory below this when a rank died by SIGKILL: the OOM killer


def _failure_kind(failure, text: str, oom_killer: bool) -> str:
    """oom | non_finite | own (the rank's own exception: the cause) | follow_on (a peer's echo, or a
    rank the launcher stopped)."""
    if "OutOfMemoryError" in text or "out of memory" in text.lower():
        return "oom"
    if getattr(failure, "stopped_by_launcher", False):
        return "follow_on"
    if failure.exitcode < 0 and not os.path.isfile(failure.error_file):  # died by a signal it did not raise
        return "oom_killed" if failure.exitcode == -9 and oom_killer else "own"
    if "non-finite" in text:
        return "non_finite"
    if any(m in text.splitlines()[0].lower() for m in FOLLOW_ON):
        return "follow_on"
    return "own"


def _written(failure) -> float:
    """When the rank failed: its error file's mtime (the launch records it), else the failure's
    timestamp (a rank without an error file: when its exit was seen, so after the ones that wrote)."""
    written = getattr(failure, "written_ns", None)
    return written / 1e9 if written is not None else float(failure.timestamp)


def _waiting_in_comm(stack: str) -> bool | None:
    """From the stack a rank wrote when the launcher stopped it (harness/launch.py `_StackOnStop`): True
    when its main thread was blocked in communication (its innermost frame in torch.distributed, or on a
    `.wait()` of a request), False when it was elsewhere, None without a stack."""
    lines = stack.splitlines()
    if not lines or not lines[0].startswith("main thread "):
        return None
    ident, in_main = lines[0].split()[-1], False
    for line in lines[1:]:
        if line.startswith(("Thread ", "Current thread ")):
            in_main = ident in line
            continue
        frame = re.match(r'\s*File "(.+)", line (\d+) in ', line) if in_main else None
        if frame:
            return "torch/distributed" in frame[1] or ".wait(" in linecache.getline(frame[1], int(frame[2]))
    return None


def _non_finite_order(text: str) -> tuple[int, int]:
    """(step, 0 for an output / 1 for a gradient) of a NonFiniteError's message."""
    found = re.search(r"non-finite (.+?) on rank \d+ at step (\d+)", text)
    return (int(found[2]), 0 if found[1] == "output" else 1) if found else (1 << 30, 1)


def classify_failure(err: ChildFailedError, oom_kills: int | None = 0,
                     available_frac: float | None = None) -> tuple[str, str]:
    """(status, reason) from every rank's failure (the launch adds the ranks the agent did not
    report), in the order they failed: a root cause wins over the connection losses and collective
    timeouts it caused in its peers. Out of memory first (an OutOfMemoryError, or a rank dead by
    SIGKILL while the kernel's OOM killer fired during the launch, `oom_kills` > 0, or with available
    memory below LOW_MEMORY_FRAC); then the earliest rank's own error (an exception that is not a
    follow-on, non-finite values); only follow-on errors and a collective timeout means a hang, blamed
    on the ranks that wrote no error (the launcher stopped them while their peers waited)."""
    oom_killer = bool(oom_kills) or (available_frac is not None and available_frac < LOW_MEMORY_FRAC)
    failures = sorted(err.failures.items(), key=lambda rf: (_written(rf[1]), rf[0]))
    texts = {rank: _failure_text(f) for rank, f in failures}
    kinds = {rank: _failure_kind(f, texts[rank], oom_killer) for rank, f in failures}
    for rank, _ in failures:
        if kinds[rank] == "oom":
            return "oom", f"rank {rank}: out of memory: {texts[rank].splitlines()[0][:500]}"
        if kinds[rank] == "oom_killed":
            evidence = (f"the kernel's OOM-kill counter rose by {oom_kills} during the launch" if oom_kills
                        else f"available memory {available_frac:.1%} of the machine's")
            return "oom", f"rank {rank}: out of memory: killed by SIGKILL, not by the watchdog ({evidence})"
    causes = [r for r, _ in failures if kinds[r] in ("own", "non_finite")]
    # non-finite values spread: a poisoned output makes every rank's gradients non-finite in the same
    # step's backward, so the first step, then an output before a gradient, is the origin
    causes.sort(key=lambda r: _non_finite_order(texts[r]) if kinds[r] == "non_finite" else (-1, 0))
    for rank in causes:
        if kinds[rank] == "non_finite":
            return "error", next(line for line in texts[rank].splitlines() if "non-finite" in line).strip()
        if kinds[rank] == "own":
            return "error", f"rank {rank} failed: " + "\n".join(texts[rank].splitlines()[:12])[:2000]
    echoes = " | ".join(f"rank {r}: {texts[r].splitlines()[0][:200]}" for r, f in failures
                        if not getattr(f, "stopped_by_launcher", False))
    if any("timed out" in t.lower() or "timeout" in t.lower() for t in texts.values()):
        stopped = [r for r, f in failures if getattr(f, "stopped_by_launcher", False)]
        hung = [r for r, f in failures if r in stopped and _waiting_in_comm(getattr(f, "stack_at_stop", "")) is False]
        if stopped:
            who = hung or stopped
            waiting = f"; rank(s) {', '.join(map(str, sorted(set(stopped) - set(who))))} were waiting in communication" \
                if len(who) < len(stopped) else ""
            return "timeout", (f"rank{'s' if len(who) > 1 else ''} {', '.join(map(str, who))} stopped responding: "
                               f"its peers timed out waiting for it ({echoes}{waiting})")
        return "timeout", "a collective timed out waiting for a peer: " + echoes
    rank, _ = failures[0]
    return "error", f"rank {rank} failed: " + texts[rank][:2000]


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
        raise InvalidConfig(f"device={device} needs mode=emulate (real runs use each rank's GPU or the CPU, "
                            "dryrun uses fake tensors)")
    if device == "meta" and attn_backend != "auto":
        bound = candidate_backends(torch.device("meta"), problem.torch_dtype)
        if attn_backend not in bound:
            raise InvalidConfig(f"bench.attn_backend={attn_backend} cannot run {problem.dtype} on the meta "
                                f"device (a stand-in GPU of compute capability {META_CAPABILITY[0]}.{META_CAPABILITY[1]}; "
                                f"flash-attn kernels need their package installed): bound here: {', '.join(bound)}")
    return device


def _check_mode(cfg: DictConfig, problem: Problem) -> int:
    """The rank that emulate and dryrun play; verify needs real collectives."""
    play_rank = cfg.get("play_rank", 0)
    if cfg.mode != "real" and cfg.get("verify"):
        raise InvalidConfig(f"verify=true needs mode=real: mode={cfg.mode} computes against a fake process group")
    if not isinstance(play_rank, int) or not 0 <= play_rank < problem.world_size:
        raise InvalidConfig(f"play_rank must be a rank of the world (0..{problem.world_size - 1}), got {play_rank!r}")
    return play_rank


def _memory_capacity(backend: str, ranks_here: int) -> tuple[int, str]:
    """What one rank may use: a GPU's total memory, or this node's available RAM shared by its ranks."""
    if backend == "nccl":
        return torch.cuda.get_device_properties(0).total_memory, "the GPU's total memory"
    import psutil
    available = psutil.virtual_memory().available
    return available // ranks_here, f"available RAM {available / 2**30:.2f} GiB / {ranks_here} ranks on this node"


def _check_memory(cfg: DictConfig, problem: Problem, backend: str, ranks_here: int) -> None:
    """A real run whose per-rank memory model exceeds what a rank has would only thrash or be killed:
    refused unless bench.allow_oversubscribe."""
    method = methods.for_problem(problem)
    if not method.memory_cost or cfg.bench.get("allow_oversubscribe", False):
        return
    need = method.memory_cost(problem).total
    have, what = _memory_capacity(backend, max(1, ranks_here))
    if need > have:
        raise InvalidConfig(f"the per-rank memory model needs {need / 2**30:.2f} GiB ({need} bytes), more than "
                            f"{have / 2**30:.2f} GiB ({have} bytes; {what}); bench.allow_oversubscribe=true runs it anyway")


def config_hash(cfg: DictConfig) -> str:
    """Identity of a job's configuration for resuming: everything but `resume` and Hydra's own keys."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("resume", None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def execute(cfg: DictConfig, job_dir: Path) -> dict:
    """Run one job and return its row; expected failures become the row's status, never an exception."""
    backend = None
    row = {"run_id": str(uuid.uuid4()), "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(),
           "config_hash": config_hash(cfg),
           "git_sha": _git_sha(), "torch_version": torch.__version__, "mode": cfg.get("mode"),
           "hardware": (cfg.get("hardware") or {}).get("name"), **config_fields(cfg),
           "status": "ok", "error": None}
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
            raise InvalidConfig(f"bench.attn_backend={attn_backend!r}: choose auto or one of {', '.join(sorted(KERNELS))}")
        device = _check_device(cfg, problem, attn_backend)
        if mode == "real":
            _check_memory(cfg, problem, backend, plan.nproc_per_node)
    except InvalidConfig as e:
        return {**row, "backend": backend, "device_name": None, "status": "invalid", "error": str(e)}
    problem = replace(problem, device="meta" if device == "meta" else "cuda" if _uses_gpu(backend, mode, device) else "cpu")
    row.update(backend=backend, device_name=_device_name(backend, mode, device),
               **_versions(backend, mode, problem.world_size, device))
    # a collective waiting on a dead or hung peer gives up before the watchdog ends the job
    job = Job(problem, backend, seed=cfg.seed, warmup=cfg.bench.warmup, iters=cfg.bench.iters,
              verify=cfg.verify, pg_timeout_s=0.75 * cfg.bench.timeout_s, fault=fault, mode=mode,
              play_rank=play_rank, attn_backend=attn_backend, device=device,
              profile_dir=str(job_dir / "ranks") if cfg.bench.get("profile") else None)
    if plan.idle:  # emulate/dryrun on a multi-node step: node 0 plays the rank, this node has no row
        return row
    oom_kills_before = _oom_kill_count()
    try:
        per_rank = [r[0] for _, r in sorted(launch(entry_single if single else entry, ([job],),
                                                   1 if single else problem.world_size, job_dir / "ranks",
                                                   timeout_s=cfg.bench.timeout_s, plan=plan).items())]
    except LaunchTimeout as e:
        return {**row, "status": "timeout", "error": str(e)}
    except ChildFailedError as e:
        oom_kills_after = _oom_kill_count()
        oom_kills = oom_kills_after - oom_kills_before if None not in (oom_kills_before, oom_kills_after) else None
        status, reason = classify_failure(e, oom_kills, _available_memory_frac())
        return {**row, "status": status, "error": reason}
    row.update(play_rank=play_rank if single else None, **metrics(problem, per_rank, cfg.hardware, mode))
    reason = _suspect(row)
    return {**row, "suspect": reason is not None, "suspect_reason": reason}

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
UNWRITTEN, BUSY = "unwritten", "busy"  # a point without a row (not row statuses)
STATUS_ORDER = ("ok", "oom", "timeout", "invalid", "error", UNWRITTEN, BUSY)


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
        print(f"[moved] {previous} held a row of another configuration ({key}): kept as {target}")


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
            print(f"[busy] {job_dir}: {e}, which is running this point: no row from this process", file=sys.stderr)
            _OUTCOMES.append((BUSY, False))
            return _NOTHING_TO_RUN
    key, root = config_hash(cfg), _sweep_root(job_dir)
    index = _index(root)
    previous = (job_dir / ROW_FILE).resolve()
    if primary and (previous.exists() or previous.is_symlink()):
        try:
            old = read_row(previous)
        except (OSError, ValueError) as e:
            aside = set_aside(previous)
            print(f"[damaged] {previous} cannot be read as a row ({e}); kept as {aside}, the point runs again")
        else:
            if old.get("config_hash") != key:
                _park(root, previous, old, index)
    found = index.get(key)
    if found and found[0] != previous and primary and not previous.exists():
        _move(found[0], previous, index, from_other_job=True)  # its own row, from a dir that another configuration now has
        found = index.get(key)
    if found and found[1] == "ok" and cfg.get("resume", True):
        print(f"[skip] {cfg.get('method', {}).get('name')} seq_len={cfg.get('workload', {}).get('seq_len')}: "
              f"ok row of this configuration ({key}) already in {found[0].parent} (resume=false reruns)")
        _OUTCOMES.append(("ok", True))
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
        if row["error"]:
            extra = f" error: {row['error']}"
        elif row.get("step_time_ms") is None:  # dryrun: no time, only bytes
            extra = f" peak {row['peak_mem_bytes'] / 2**30:.2f} GiB, comm {(row['comm_bytes_fwd'] + row['comm_bytes_bwd']) / 2**30:.2f} GiB"
        else:
            extra = f" step {row['step_time_ms']:.1f} ms"
        size = f"frames={row['frames']} spatial={row['spatial']}" if row.get("frames") else f"seq_len={row['seq_len']}"
        print(f"[{row['status']}] {row['mode']} {row['method']} {size} world_size={row['world_size']}{extra} -> {job_dir}")
    if held is not None:
        held.close()


class SweepLock(Callback):
    """One sweep at a time per sweep directory: a second multirun on a directory that a live one is
    writing stops before its first point (exit status 1); the kernel drops a dead sweep's lock."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        try:
            _SWEEP["lock"] = lock(sweep_dir / ".spbench-sweep.lock")
        except Busy as e:
            sys.exit(f"error: another sweep is writing {sweep_dir} ({e}); nothing was run: wait for it, "
                     "or choose another hydra.sweep.dir")
        _SWEEP["dir"] = sweep_dir

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if "lock" in _SWEEP:
            _SWEEP.pop("lock").close()


def _conclude() -> int:
    """main()'s exit status; after a multirun, print the one-line summary."""
    if "dir" in _SWEEP:
        # points run by this process; submitit runs them elsewhere: then the rows in the sweep dir
        outcomes = _OUTCOMES or [(status, False) for _, status in row_index(_SWEEP["dir"]).values()]
        counts = Counter(status for status, _ in outcomes)
        skipped = sum(skip for _, skip in outcomes)
        order = sorted(counts, key=lambda s: (STATUS_ORDER.index(s) if s in STATUS_ORDER else len(STATUS_ORDER), str(s)))
        print(f"sweep: {', '.join(f'{counts[s]} {s}' for s in order) or 'no points'}"
              f"{f' ({skipped} skipped)' if skipped else ''} -> {_SWEEP['dir']}", flush=True)
        return 1 if counts[UNWRITTEN] or counts[BUSY] else 0
    if not _OUTCOMES:  # --help, --cfg: no job ran
        return 0
    status = _OUTCOMES[-1][0]
    return 0 if status == "ok" else 2 if status == "invalid" else 1


def interrupted(cfg: DictConfig, job_dir: Path, stop: signals.Interrupted, seconds: float) -> None:
    """Write the row of a job that SIGINT or SIGTERM ended (its ranks are already gone), then stop the
    whole sweep: the exit code says which signal (128 + its number)."""
    row = {"run_id": str(uuid.uuid4()), "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(),
           "config_hash": config_hash(cfg), "git_sha": _git_sha(), "torch_version": torch.__version__,
           "mode": cfg.get("mode"), "hardware": (cfg.get("hardware") or {}).get("name"), **config_fields(cfg),
           "status": "interrupted", "error": stop.reason(), "job_seconds": seconds}
    if primary_node():
        write_row(job_dir, row)
    print(f"[interrupted] {row['method']} seq_len={row['seq_len']} world_size={row['world_size']}: {row['error']}"
          f" -> {job_dir}; the sweep stops", flush=True)
    raise SystemExit(stop.exit_code)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    job_dir = Path(HydraConfig.get().runtime.output_dir)
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
    if not primary_node():  # a multi-node job's other nodes ran their ranks; node 0 (global rank 0) writes the row
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
