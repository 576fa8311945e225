"""What every rank runs for one job: build the method from the reference weights, run one counted
step, optionally verify it against the float64 reference, then warm up and time plain steps.

Counting (and CPU memory tracking) happen on a step of their own, so the timed steps run bare.
In mode=emulate and mode=dryrun one process plays one rank over a fake process group (collectives
return at once, their outputs unwritten, and the counter still sees every one); dryrun also makes
every tensor fake, so nothing is computed or allocated and only shapes, bytes and memory are real."""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import methods
from methods.common.attention import backend_name, use_backend
from methods.common.config import Problem
from methods.common.layers import build_reference
from methods.common.layout import shard, unshard
from methods.common.linear_attention import linear_backend_name

from . import signals
from .comm import CommCounter
from .memory import PeakMemory
from .profiling import profiled_step

log = logging.getLogger(__name__)
PHASES_AFTER_S = 5.0  # a job running longer than this reports each phase it finishes


class _Phases:
    """Progress of a long job, one line per finished phase once the job has run PHASES_AFTER_S
    (a paper-scale dryrun spends minutes building and tracing; short jobs stay quiet)."""

    def __init__(self, what: str):
        self.what, self.start = what, time.monotonic()
        if not logging.getLogger().handlers:  # a fresh rank process: its stderr is its log
            logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    def done(self, phase: str) -> None:
        elapsed = time.monotonic() - self.start
        if elapsed >= PHASES_AFTER_S:
            log.info("%s: %s (%.1f s)", self.what, phase, elapsed)


@dataclass(frozen=True)
class Fault:
    """Injected failure for testing the harness: at step `step` (0 = the counted step, then warm-up and
    timed steps) rank `rank` runs out of memory, crashes, hangs, or produces non-finite values."""

    kind: str = "none"  # none | oom | crash | hang | nan
    rank: int = 0
    step: int = 0


@dataclass(frozen=True)
class Job:
    problem: Problem
    backend: str = "gloo"  # nccl | gloo
    seed: int = 0
    warmup: int = 1
    iters: int = 3
    verify: bool = False
    pg_timeout_s: float = 300.0
    fault: Fault = Fault()
    mode: str = "real"  # real | emulate | dryrun
    attn_backend: str = "auto"  # bench.attn_backend: auto (best available) or a kernel name
    profile_dir: str | None = None  # bench.profile: one more step under torch.profiler, traces written here
    play_rank: int = 0  # emulate / dryrun: the rank of the world this process plays
    device: str = "auto"  # emulate: auto (the GPU when there is one, else CPU) or meta (the meta-device tier)
    # a test of device handling: tensors made without an explicit device land here (e.g. "meta" while
    # the data is on the CPU), so one made without the device of its data fails as it would on a GPU
    default_device: str | None = None


class NonFiniteError(RuntimeError):
    pass


def _inject(fault: Fault, step: int) -> bool:
    """Raise/exit/block as the fault asks at this step on its rank; True when outputs must be poisoned."""
    if fault.kind == "none" or fault.step != step or fault.rank != dist.get_rank():
        return False
    if fault.kind == "oom":
        raise torch.cuda.OutOfMemoryError(f"injected out of memory on rank {fault.rank} at step {step}")
    if fault.kind == "crash":
        raise RuntimeError(f"injected crash on rank {fault.rank} at step {step}")
    if fault.kind == "hang":
        while True:
            time.sleep(1)
    return fault.kind == "nan"


def _check_finite(y: torch.Tensor, x: torch.Tensor, model: torch.nn.Module, step: int) -> None:
    """Outside any timed region: a non-finite output or gradient ends the job with its name."""
    named = [("output", y), ("input gradient", x.grad)] + [
        (f"gradient of {n}", p.grad) for n, p in model.named_parameters()
    ]
    for name, t in named:
        if t is None:
            continue
        t = t.to_local() if hasattr(t, "to_local") else t  # a ZeRO-3 rank checks its own shard
        if not bool(torch.isfinite(t.detach()).all()):
            raise NonFiniteError(f"non-finite {name} on rank {dist.get_rank()} at step {step}")


def init_rank(backend: str, timeout_s: float) -> torch.device:
    """Join the launcher's process group (env://) and pick this rank's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        # the ranks share the machine's cores; oversubscription would time the scheduler
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    dist.init_process_group(
        backend, timeout=timedelta(seconds=timeout_s), device_id=device if backend == "nccl" else None
    )
    return device


def entry(jobs: list[Job]) -> list[dict]:
    """Launch entry point: one process group, the jobs in order, one result dict per job."""
    device = init_rank(jobs[0].backend, jobs[0].pg_timeout_s)
    try:
        return [run_job(job, device) for job in jobs]
    finally:
        dist.destroy_process_group()


def call_in_group(
    fn: Callable[..., Any], args: tuple = (), backend: str = "gloo", timeout_s: float = 120.0
) -> Any:
    """Launch entry point for arbitrary rank code (tests, benchmarks): `fn(*args)` inside a process group."""
    init_rank(backend, timeout_s)
    try:
        return fn(*args)
    finally:
        dist.destroy_process_group()


def entry_single(jobs: list[Job]) -> list[dict]:
    """Launch entry point of mode=emulate and mode=dryrun (one process): each job plays its
    `play_rank` of `world_size` over a fake process group, on the GPU when emulating on a GPU box."""
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    results = []
    for job in jobs:
        device = torch.device("cpu")
        if job.device == "meta":
            device = torch.device("meta")
        elif job.mode == "emulate" and job.device == "auto" and torch.cuda.is_available():
            device = torch.device("cuda", 0)
            torch.cuda.set_device(device)
        elif job.mode == "emulate":
            # unwritten receive buffers may hold denormals, which would slow CPU arithmetic down
            torch.set_flush_denormal(True)
        # the fake group registers for CPU and CUDA only: the meta device is named here
        backend = "cpu:fake,cuda:fake,meta:fake" if device.type == "meta" else "fake"
        dist.init_process_group(
            backend, store=FakeStore(), rank=job.play_rank, world_size=job.problem.world_size
        )
        try:
            with torch.device(job.default_device) if job.default_device else nullcontext():
                results.append(run_job(job, device))
        finally:
            dist.destroy_process_group()
    return results


def _global_inputs(p: Problem, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global input x and upstream gradient dy [B, tokens, d] in float64, the same on every rank."""
    shape = (p.workload.batch_size, _tokens_axis(p), p.model.hidden)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, device="cpu")
    dy = torch.randn(shape, generator=gen, dtype=torch.float64, device="cpu")
    return x, dy


def _inputs(job: Job, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's x (requiring grad) and dy. Verified runs slice the global tensors; timed-only runs
    draw the local shard directly (a paper-scale global input need not fit anywhere)."""
    p = job.problem
    if job.mode == "dryrun":
        shape = (p.workload.batch_size, index.numel(), p.model.hidden)
        x, dy = torch.empty(shape, device="cpu"), torch.empty(shape, device="cpu")
    elif job.verify:
        x, dy = (shard(t, index) for t in _global_inputs(p, job.seed))
    else:
        gen = torch.Generator().manual_seed(job.seed + 1 + dist.get_rank())
        shape = (p.workload.batch_size, index.numel(), p.model.hidden)
        x, dy = (
            torch.randn(shape, generator=gen, device="cpu"),
            torch.randn(shape, generator=gen, device="cpu"),
        )
    x, dy = (t.to(device=device, dtype=p.torch_dtype) for t in (x, dy))
    return x.requires_grad_(), dy


def _tokens_axis(p: Problem) -> int:
    w = p.workload
    return w.frames * w.spatial if w.frames else w.seq_len


def _zero_grads(model: torch.nn.Module, x: torch.Tensor) -> None:
    for p in model.parameters():
        p.grad = None
    x.grad = None


def _step(model, x, dy, poison: bool = False, at_backward: Callable[[], None] | None = None) -> torch.Tensor:
    y = model(x)
    if poison:
        y = y * float("nan")
    if at_backward is not None:
        at_backward()
    y.backward(dy)
    model.finish_grads()
    return y


def _counted_step(model, x, dy, device, poison: bool) -> tuple[torch.Tensor, CommCounter, dict]:
    """One step under the communication counter (and, on CPU, the tensor-level memory tracker, which
    also reads what the forward left alive: the saved activations and the output)."""
    memory: dict = {}
    # the CUDA allocator reports the peak itself; CPU and meta storages are tracked tensor by tensor
    tracker = PeakMemory([*model.parameters(), *model.buffers()], [x, dy]) if device.type != "cuda" else None

    def at_backward() -> None:
        counter.phase = "bwd"
        if tracker is not None:
            memory["mem_fwd_end_detail"] = tracker.live()

    with tracker or nullcontext(), CommCounter() as counter:
        y = _step(model, x, dy, poison, at_backward)
    if tracker is not None:
        peak, detail = tracker.peak([x.grad, *(p.grad for p in model.parameters())])
        memory.update(peak_mem_bytes=peak, peak_mem_detail=detail, mem_end_detail=tracker.live())
    return y, counter, memory


def run_job(job: Job, device: torch.device) -> dict:
    if job.mode != "dryrun":
        return _run_job(job, device)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), warnings.catch_warnings():  # layout indices are real
        # deep-copying a fake parameter reads its (absent) data pointer; harmless here
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        return _run_job(job, device)


def _run_job(job: Job, device: torch.device) -> dict:
    p = job.problem
    use_backend(job.attn_backend)
    # GPU kernels' one-time self-checks run here, uncounted, at the job's head_dim
    attn_backend = backend_name(device, p.torch_dtype, p.model.head_dim)
    linear = (
        linear_backend_name(device, p.torch_dtype, p.model.head_dim)
        if p.model.kind in ("linear", "hybrid")
        else None
    )
    real = job.mode == "real"  # only real collectives write their outputs: finite checks need them
    phases = _Phases(f"{job.mode} {p.method} rank {dist.get_rank()}/{p.world_size}")
    method = methods.for_problem(p)
    rank = dist.get_rank()
    index = method.layout(p)[rank]
    reference = build_reference(
        p.model, job.seed, torch.float64 if job.verify else p.torch_dtype, device, p.workload
    )
    model = method.build(p, reference, device)
    if not job.verify:
        del reference  # methods copy what they need; keeping it would double the parameter memory
    x, dy = _inputs(job, index, device)
    phases.done("built the block and its inputs")

    y, counter, memory = _counted_step(model, x, dy, device, _inject(job.fault, 0))
    phases.done("counted step")
    if real:
        _check_finite(y, x, model, 0)
    signals.progress(0)  # the step reached, for an interrupted job's row
    result: dict = {
        "rank": rank,
        "attn_backend": attn_backend,
        "linear_backend": linear,
        "comm": counter.cost().as_dict(),
        "comm_calls": counter.calls(),
        "comm_records": counter.records,
        **memory,
    }
    if job.verify:
        result.update(verify(job, method, model, reference, x, y, device))
        del reference
        phases.done("verified")
    del y

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    steps = 0 if job.mode == "dryrun" else job.warmup + job.iters  # a fake step takes no time
    timed = device.type != "meta"  # meta steps run every code path but take no time worth a row
    for step in range(1, 1 + steps):
        _zero_grads(model, x)
        cpu0 = time.process_time()
        seconds, y = _timed_step(model, x, dy, device, _inject(job.fault, step))
        times.append(seconds)
        cpu_times.append(time.process_time() - cpu0)
        if real:
            _check_finite(y, x, model, step)
        signals.progress(step)
    result["step_times_s"] = times[job.warmup :] if timed else []
    if steps:
        phases.done(f"{steps} timed steps")
    if device.type == "cpu" and timed:  # this process's CPU time: what a step computes, less the time
        result["step_cpu_times_s"] = cpu_times[job.warmup :]  # other processes held the cores
    if job.profile_dir and job.mode != "dryrun" and timed:
        _zero_grads(model, x)
        overlap = profiled_step(
            lambda: _step(model, x, dy), device, Path(job.profile_dir) / f"trace_rank{rank}.json"
        )
        result["overlap_frac"] = overlap if real else None  # a fake group's collectives take no time
    if device.type == "cuda":
        result["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated())
        result["peak_mem_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
    return result


def _timed_step(model, x, dy, device, poison: bool) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        dist.barrier()
        start.record()
        y = _step(model, x, dy, poison)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, y
    dist.barrier()
    t0 = time.perf_counter()
    y = _step(model, x, dy, poison)
    return time.perf_counter() - t0, y


# ---- verification against the single-device float64 block -----------------------------------------


def _gather_global(local: torch.Tensor, indices: list[torch.Tensor]) -> torch.Tensor:
    """Every rank's shard, reassembled; shards of unequal length travel padded to the longest."""
    longest = max(i.numel() for i in indices)
    padded = torch.nn.functional.pad(local, (0, 0, 0, longest - local.shape[1])).contiguous()
    parts = [torch.empty_like(padded) for _ in indices]
    dist.all_gather(parts, padded)
    return unshard([part[:, : i.numel()] for part, i in zip(parts, indices)], indices)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def verify(job: Job, method, model, reference, x, y, device) -> dict:
    """Relative errors of the output, the input gradient and every weight gradient of the step just
    run, against the reference block with the same weights and inputs (run in float64)."""
    p = job.problem
    indices = method.layout(p)
    y_full = _gather_global(y.detach(), indices)
    dx_full = _gather_global(x.grad, indices)
    grads = {name: g.detach() for name, g in model.full_grads().items()}  # may use collectives

    x_ref, dy_ref = (t.to(device) for t in _global_inputs(p, job.seed))
    x_ref.requires_grad_()
    for prm in reference.parameters():
        prm.grad = None
    y_ref = reference(x_ref, p.workload.causal)
    y_ref.backward(dy_ref)

    ref_grads = dict(reference.named_parameters())
    missing = sorted(set(ref_grads) ^ set(grads))
    if missing:
        raise RuntimeError(f"full_grads() and the reference disagree on parameter names: {missing}")
    assert x_ref.grad is not None  # x_ref requires grad and y_ref depends on it
    grad_errs = {"input": rel_err(dx_full, x_ref.grad)}
    grad_errs.update({name: rel_err(grads[name], prm.grad) for name, prm in ref_grads.items()})
    grad_dtypes = {name: str(g.dtype).removeprefix("torch.") for name, g in grads.items()}
    grad_dtypes["input"] = str(x.grad.dtype).removeprefix("torch.")
    return {
        "verify_out_rel_err": rel_err(y_full, y_ref),
        "verify_grad_rel_err": max(grad_errs.values()),
        "verify_grad_errs": grad_errs,
        "verify_grad_dtypes": grad_dtypes,
    }
