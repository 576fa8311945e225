"""The Python steps of the one-shot device check (benchmarks/gpu_check.sh runs them in order, each
under its own timeout). Every subcommand writes its rows into --out DIR and exits non-zero when a
check fails; --cpu runs the same checks at CPU sizes (float32, the CPU kernels, gloo, tiny models).

    python benchmarks/gpu_check.py versions --out DIR
    python benchmarks/gpu_check.py kernels  --out DIR [--cpu]   # every kernel vs float64 math, 16K timing
    python benchmarks/gpu_check.py blocks   --out DIR [--cpu]   # ring / all-gather CP block algebra, 8 ranks
    python benchmarks/gpu_check.py emulate  --out DIR [--cpu] --part llm_32k|llm_128k|video|linear
    python benchmarks/gpu_check.py real     --out DIR [--cpu]   # world_size 1, verify=true
    python benchmarks/gpu_check.py summary  --out DIR [--cpu]   # summary.md / summary.csv

Conventions. Errors are against the math kernel run in float64 on the same (rounded) inputs:
out, dq, dk, dv as max |got - ref| / max |ref| ("relative error of max-abs"), the LSE as
max |got - ref| in nats. TFLOP/s count causal-effective FLOPs as harness/flops.py does: forward
4 B L^2 H D, halved under the causal mask; forward + backward = 3x forward (the backward's
recomputation of the scores is not counted, so a kernel does ~3.5/3 of what is counted).
Only the public names of methods.common.attention are used, so any kernel added to KERNELS is checked.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if (
    str(REPO) not in sys.path
):  # run as a script: the repository's packages (gpu_check.sh also sets PYTHONPATH)
    sys.path.insert(0, str(REPO))


# ---- sizes ----------------------------------------------------------------------------------------


def model_head_dims() -> list[int]:
    """Head dims of the paper-sized models in conf/model/ (the tiny test models left out)."""
    import yaml

    dims = set()
    for path in sorted((REPO / "conf" / "model").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if not cfg["name"].startswith("tiny"):
            dims.add(int(cfg["head_dim"]))
    return sorted(dims)


@dataclass(frozen=True)
class Sizes:
    dtype: str
    heads: int
    kv_heads: int
    lengths: tuple[int, ...]  # correctness: a length that is no multiple of any kernel's block
    timing_length: int
    timing_head_dim: int
    timing_warmup: int
    timing_iters: int
    block_length: int  # whole sequence of the block-algebra check
    block_ranks: int
    block_head_dim: int
    tol: float  # out, dq, dk, dv: max |err| <= tol * max |ref|
    lse_tol: float  # nats


SIZES = {
    # Llama3-8B attention (32 query heads over 8 kv heads) at the jobs' dtype
    "gpu": Sizes("bfloat16", 32, 8, (4095,), 16384, 128, 3, 10, 4096, 8, 128, 2e-2, 1e-2),
    # CPU: the same GQA ratio and checks, small enough for the 2-core test box
    "cpu": Sizes("float32", 4, 1, (255,), 512, 128, 1, 2, 256, 8, 64, 1e-4, 1e-4),
}


def sizes(cpu: bool) -> Sizes:
    return SIZES["cpu" if cpu else "gpu"]


def device_for(cpu: bool):
    import torch

    if cpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu")
    return torch.device("cuda", 0)


def device_label() -> str:
    import torch

    return torch.cuda.get_device_name(0).replace(" ", "_") if torch.cuda.is_available() else "cpu"


# ---- small helpers --------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def rel_err(got, ref) -> float:
    """max |got - ref| / max |ref| in float64; inf when got is not finite."""
    import torch

    got, ref = got.double(), ref.double()
    if not bool(torch.isfinite(got).all()):
        return math.inf
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


def abs_err(got, ref) -> float:
    import torch

    got, ref = got.double(), ref.double()
    if not bool(torch.isfinite(got).all()):
        return math.inf
    return (got - ref).abs().max().item()


def short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def kernels_here(device, dtype) -> list[tuple[str, bool]]:
    """(name, admitted) for every KERNELS entry that runs here: admitted by available_backends
    (self-checked, what `auto` may pick), or only forceable (`use_backend` + `backend_name` accept it
    on this device and dtype)."""
    from methods.common.attention import KERNELS, available_backends, backend_name, use_backend

    admitted = set(available_backends(device, dtype))
    out = []
    for name in KERNELS:
        forceable = False
        try:
            use_backend(name)
            backend_name(device, dtype)
            forceable = True
        except Exception:  # noqa: BLE001 - ValueError: this device/dtype cannot run it
            pass
        finally:
            use_backend(None)
        if name in admitted or forceable:
            out.append((name, name in admitted))
    return out


def run_kernel(name: str, q, k, v, dout, causal: bool):
    """(out, lse, (dq, dk, dv)) through the public entry points with kernel `name` forced."""
    from methods.common.attention import attn_backward, attn_forward, use_backend

    use_backend(name)
    try:
        out, lse = attn_forward(q, k, v, causal)
        grads = attn_backward(dout, q, k, v, out, lse, causal) if dout is not None else None
    finally:
        use_backend(None)
    return out, lse, grads


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- 1. versions ----------------------------------------------------------------------------------


def cmd_versions(args) -> int:
    import torch

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        nccl = torch.cuda.nccl.version() if torch.distributed.is_nccl_available() else None
        info.update(
            device=torch.cuda.get_device_name(0),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            device_count=torch.cuda.device_count(),
            memory_gib=round(props.total_memory / 2**30, 1),
            sm_count=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl,
        )
    else:
        info.update(device=platform.processor() or platform.machine(), capability=None, cudnn=None, nccl=None)
    for pkg in ("triton", "flash_attn", "flash_attn_interface", "hydra", "omegaconf"):
        try:
            mod = __import__(pkg)
            info[f"{pkg}_version"] = getattr(mod, "__version__", "?")
        except ImportError:
            info[f"{pkg}_version"] = None
    (args.out / "versions.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))
    return 0


# ---- 2. kernels -----------------------------------------------------------------------------------


def attention_flops(batch: int, length: int, heads: int, head_dim: int, causal: bool) -> float:
    """Forward FLOPs of attention (QK^T and PV), causal-effective (harness/flops.py's convention)."""
    dense = 4 * batch * length**2 * heads * head_dim
    return dense / 2 if causal else dense


def _inputs(device, dtype, length: int, heads: int, kv_heads: int, head_dim: int, seed: int):
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    rand = lambda h: torch.randn(1, length, h, head_dim, device=device, dtype=dtype, generator=gen)  # noqa: E731
    return rand(heads), rand(kv_heads), rand(kv_heads), rand(heads)


def _time(fn, device, warmup: int, iters: int) -> float:
    """Median seconds of fn() over iters calls (after warmup), each timed to completion."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cmd_kernels(args) -> int:
    import torch

    s, device = sizes(args.cpu), device_for(args.cpu)
    dtype = getattr(torch, s.dtype)
    kernels = kernels_here(device, dtype)
    print(
        f"kernels on {device} {s.dtype}: "
        + ", ".join(f"{n}{'' if a else ' (forced only)'}" for n, a in kernels)
    )
    rows, failed = [], []
    seed = 0
    for head_dim in model_head_dims():
        for length in s.lengths:
            for causal in (True, False):
                seed += 1
                q, k, v, dout = _inputs(device, dtype, length, s.heads, s.kv_heads, head_dim, seed)
                ref_out, ref_lse, ref_grads = run_kernel(
                    "math", *(t.double() for t in (q, k, v, dout)), causal
                )
                for name, admitted in kernels:
                    row = {
                        "kernel": name,
                        "admitted": admitted,
                        "dtype": s.dtype,
                        "length": length,
                        "heads": s.heads,
                        "kv_heads": s.kv_heads,
                        "head_dim": head_dim,
                        "causal": causal,
                        "tol": s.tol,
                        "lse_tol": s.lse_tol,
                    }
                    try:
                        out, lse, (dq, dk, dv) = run_kernel(name, q, k, v, dout, causal)
                        shapes_ok = (
                            out.shape == q.shape
                            and tuple(lse.shape) == (1, s.heads, length)
                            and dq.shape == q.shape
                            and dk.shape == k.shape
                            and dv.shape == v.shape
                        )
                        row.update(
                            out_rel_err=rel_err(out, ref_out),
                            lse_abs_err=abs_err(lse, ref_lse),
                            dq_rel_err=rel_err(dq, ref_grads[0]),
                            dk_rel_err=rel_err(dk, ref_grads[1]),
                            dv_rel_err=rel_err(dv, ref_grads[2]),
                            error="" if shapes_ok else "wrong shapes",
                        )
                        ok = (
                            shapes_ok
                            and row["lse_abs_err"] <= s.lse_tol
                            and all(row[f"{t}_rel_err"] <= s.tol for t in ("out", "dq", "dk", "dv"))
                        )
                        del out, lse, dq, dk, dv
                    except Exception as err:  # noqa: BLE001 - recorded as the row's error
                        row["error"], ok = short(err), False
                    row["ok"] = ok
                    rows.append(row)
                    if not ok and admitted:
                        why = row.get("error") or "errors above tolerance"
                        failed.append(f"{name} D={head_dim} L={length} causal={causal}: {why}")
                    print(
                        ("ok  " if ok else "BAD ")
                        + " ".join(
                            f"{key}={val:.3g}" if isinstance(val, float) else f"{key}={val}"
                            for key, val in row.items()
                            if key not in ("tol", "lse_tol")
                        )
                    )
                del q, k, v, dout, ref_out, ref_lse, ref_grads
                free(device)
    write_csv(args.out / "kernels.csv", rows)

    # timing: causal forward and forward + backward at the timing length, Llama3-8B heads
    timing = []
    for name, admitted in kernels:
        row = {
            "kernel": name,
            "admitted": admitted,
            "dtype": s.dtype,
            "length": s.timing_length,
            "heads": s.heads,
            "kv_heads": s.kv_heads,
            "head_dim": s.timing_head_dim,
            "causal": True,
            "error": "",
        }
        if name == "math" and device.type == "cuda":
            row["error"] = f"not timed: its L x L float32 scores at L={s.timing_length} need > 100 GB"
            timing.append(row)
            continue
        try:
            q, k, v, dout = _inputs(
                device, dtype, s.timing_length, s.heads, s.kv_heads, s.timing_head_dim, 99
            )
            fwd = functools.partial(run_kernel, name, q, k, v, None, True)
            fwd_s = _time(fwd, device, s.timing_warmup, s.timing_iters)
            step = functools.partial(run_kernel, name, q, k, v, dout, True)
            step_s = _time(step, device, s.timing_warmup, s.timing_iters)
            del fwd, step
            flops = attention_flops(1, s.timing_length, s.heads, s.timing_head_dim, True)
            row.update(
                fwd_ms=1e3 * fwd_s,
                fwd_bwd_ms=1e3 * step_s,
                fwd_tflops=flops / fwd_s / 1e12,
                fwd_bwd_tflops=3 * flops / step_s / 1e12,
            )
            del q, k, v, dout
        except Exception as err:  # noqa: BLE001
            row["error"] = short(err)
            if admitted:
                failed.append(f"{name} timing: {row['error']}")
        free(device)
        timing.append(row)
        print(
            "timing "
            + " ".join(
                f"{key}={val:.4g}" if isinstance(val, float) else f"{key}={val}" for key, val in row.items()
            )
        )
    write_csv(args.out / "kernel_timing.csv", timing)
    for line in failed:
        print("FAILED:", line)
    return 1 if failed else 0


# ---- 3. ring / all-gather CP block algebra --------------------------------------------------------


def simulate_ring(layout: str, q, k, v, dout, n: int, causal: bool):
    """Ring attention's block schedule for all n ranks in one process: each rank's queries against
    every rank's K/V block in ring order (methods.ring.block_plan says which rows, columns and mask),
    merged by LSE; the backward from the final out/LSE, dK/dV summed for the block's owner in the
    order the ring's travelling accumulators add them. Returns whole-sequence out, lse, dq, dk, dv."""
    import torch

    from methods.common import layout as layouts
    from methods.common.attention import acc_dtype, attn_backward, attn_forward, merge_lse
    from methods.ring import block_plan

    indices = layouts.make(layout, q.shape[1], n)
    qs, ks, vs, dos = ([layouts.shard(t, i) for i in indices] for t in (q, k, v, dout))
    local, acc = q.shape[1] // n, acc_dtype(q.dtype)
    outs, lses = [], []
    for r in range(n):
        out = lse = None
        for step in range(n):
            plan = block_plan(layout, causal, r, (r - step) % n, local)
            if plan is None:
                continue
            rows, cols, square = plan
            src = (r - step) % n
            block_out, block_lse = attn_forward(qs[r][:, rows], ks[src][:, cols], vs[src][:, cols], square)
            if out is None:
                out, lse = block_out.to(acc), block_lse.to(acc)
            else:
                out[:, rows], lse[:, :, rows] = merge_lse(out[:, rows], lse[:, :, rows], block_out, block_lse)
        outs.append(out.to(q.dtype))
        lses.append(lse)
    dqs = [torch.zeros_like(t, dtype=acc) for t in qs]
    dks, dvs = ([torch.zeros_like(t, dtype=acc) for t in ts] for ts in (ks, vs))
    for step in range(n):
        for r in range(n):
            src = (r - step) % n
            plan = block_plan(layout, causal, r, src, local)
            if plan is None:
                continue
            rows, cols, square = plan
            dq_b, dk_b, dv_b = attn_backward(
                dos[r][:, rows],
                qs[r][:, rows],
                ks[src][:, cols],
                vs[src][:, cols],
                outs[r][:, rows],
                lses[r][:, :, rows],
                square,
            )
            dqs[r][:, rows] += dq_b
            dks[src][:, cols] += dk_b
            dvs[src][:, cols] += dv_b
    return (
        layouts.unshard(outs, indices),
        layouts.unshard(lses, indices, dim=2),
        *(layouts.unshard([t.to(q.dtype) for t in ts], indices) for ts in (dqs, dks, dvs)),
    )


def simulate_allgather(layout: str, q, k, v, dout, n: int, causal: bool):
    """All-gather CP for all n ranks in one process: K/V gathered rank-major and put back in global
    order, each rank's queries in the pieces methods.allgather_cp.query_pieces gives (unmasked
    prefix + square causal block per chunk), merged by LSE; dK/dV of the whole sequence per rank in
    the accumulation dtype, back to rank-major order and summed over ranks (the reduce-scatter)."""
    import torch

    from methods.allgather_cp import query_pieces
    from methods.common import layout as layouts
    from methods.common.attention import acc_dtype, attn_backward, attn_forward, merge_lse

    length = q.shape[1]
    indices = layouts.make(layout, length, n)
    chunks, acc = layouts.CHUNKS_PER_RANK[layout], acc_dtype(q.dtype)
    qs, ks, vs, dos = ([layouts.shard(t, i) for i in indices] for t in (q, k, v, dout))
    order = torch.cat(indices).to(q.device)
    kv = torch.cat(
        [torch.cat([kr, vr], dim=2) for kr, vr in zip(ks, vs)], dim=1
    )  # what the all-gather returns
    k_all, v_all = torch.empty_like(kv).index_copy_(1, order, kv).chunk(2, dim=2)
    outs, lses, dqs, dkv_parts = [], [], [], []
    for r in range(n):
        pieces = query_pieces(indices[r], chunks, causal, length)
        out = torch.empty(qs[r].shape, dtype=acc, device=q.device)
        lse = torch.empty((q.shape[0], q.shape[2], qs[r].shape[1]), dtype=acc, device=q.device)
        started = set()
        for rows, cols, square in pieces:
            o, o_lse = attn_forward(qs[r][:, rows], k_all[:, cols], v_all[:, cols], square)
            if rows.start in started:
                out[:, rows], lse[:, :, rows] = merge_lse(out[:, rows], lse[:, :, rows], o, o_lse)
            else:
                out[:, rows], lse[:, :, rows] = o.to(acc), o_lse.to(acc)
                started.add(rows.start)
        out = out.to(q.dtype)
        dq = torch.zeros_like(qs[r], dtype=acc)
        dkv = torch.zeros((*k_all.shape[:2], 2 * k_all.shape[2], k_all.shape[3]), dtype=acc, device=q.device)
        dk_all, dv_all = dkv.chunk(2, dim=2)
        for rows, cols, square in pieces:
            dq_b, dk_b, dv_b = attn_backward(
                dos[r][:, rows],
                qs[r][:, rows],
                k_all[:, cols],
                v_all[:, cols],
                out[:, rows],
                lse[:, :, rows],
                square,
            )
            dq[:, rows] += dq_b
            dk_all[:, cols] += dk_b
            dv_all[:, cols] += dv_b
        outs.append(out)
        lses.append(lse)
        dqs.append(dq.to(q.dtype))
        dkv_parts.append(dkv.index_select(1, order))
    summed = torch.stack(dkv_parts).sum(0)  # reduce-scatter: rank r keeps rows [r L/n, (r+1) L/n)
    local = length // n
    dk_parts, dv_parts = zip(*(summed[:, r * local : (r + 1) * local].chunk(2, dim=2) for r in range(n)))
    return (
        layouts.unshard(outs, indices),
        layouts.unshard(lses, indices, dim=2),
        layouts.unshard(dqs, indices),
        layouts.unshard([t.to(q.dtype) for t in dk_parts], indices),
        layouts.unshard([t.to(q.dtype) for t in dv_parts], indices),
    )


BLOCK_CASES = [  # (method, layout, causal): every layout each method supports, causal as the jobs run
    ("ring", "basic", True),
    ("ring", "zigzag", True),
    ("ring", "stripe", True),
    ("ring", "zigzag", False),
    ("allgather_cp", "zigzag", True),
    ("allgather_cp", "contiguous", True),
    ("allgather_cp", "zigzag", False),
]


def cmd_blocks(args) -> int:
    import torch

    from methods.common.attention import use_backend

    s, device = sizes(args.cpu), device_for(args.cpu)
    dtype = getattr(torch, s.dtype)
    kernels = [name for name, admitted in kernels_here(device, dtype) if admitted]
    n = s.block_ranks
    rows, failed = [], []
    for causal in (True, False):
        q, k, v, dout = _inputs(device, dtype, s.block_length, s.heads, s.kv_heads, s.block_head_dim, 7)
        ref_out, ref_lse, ref_grads = run_kernel("math", *(t.double() for t in (q, k, v, dout)), causal)
        ref = (ref_out, ref_lse, *ref_grads)
        for name in kernels:
            whole_out, whole_lse, whole_grads = run_kernel(name, q, k, v, dout, causal)
            whole = dict(zip(("out", "lse", "dq", "dk", "dv"), (whole_out, whole_lse, *whole_grads)))
            for method, layout, case_causal in BLOCK_CASES:
                if case_causal != causal:
                    continue
                row = {
                    "kernel": name,
                    "method": method,
                    "layout": layout,
                    "causal": causal,
                    "ranks": n,
                    "length": s.block_length,
                    "heads": s.heads,
                    "kv_heads": s.kv_heads,
                    "head_dim": s.block_head_dim,
                    "dtype": s.dtype,
                    "tol": s.tol,
                    "lse_tol": s.lse_tol,
                    "error": "",
                }
                simulate = simulate_ring if method == "ring" else simulate_allgather
                try:
                    use_backend(name)
                    got = simulate(layout, q, k, v, dout, n, causal)
                    for what, g, r in zip(("out", "lse", "dq", "dk", "dv"), got, ref):
                        err = abs_err if what == "lse" else rel_err
                        row[f"{what}_{'abs' if what == 'lse' else 'rel'}_err"] = err(g, r)
                        # the same kernel on the whole sequence: what the block algebra must not exceed
                        # by much
                        row[f"whole_{what}_err"] = err(whole[what], r)
                    ok = row["lse_abs_err"] <= s.lse_tol and all(
                        row[f"{t}_rel_err"] <= s.tol for t in ("out", "dq", "dk", "dv")
                    )
                except Exception as err:  # noqa: BLE001
                    row["error"], ok = short(err), False
                finally:
                    use_backend(None)
                row["ok"] = ok
                rows.append(row)
                if not ok:
                    why = row["error"] or "errors above tolerance"
                    failed.append(f"{name} {method} {layout} causal={causal}: {why}")
                print(
                    ("ok  " if ok else "BAD ")
                    + " ".join(
                        f"{key}={val:.3g}" if isinstance(val, float) else f"{key}={val}"
                        for key, val in row.items()
                        if key not in ("tol", "lse_tol")
                    )
                )
            del whole, whole_out, whole_lse, whole_grads
        del q, k, v, dout, ref, ref_out, ref_lse, ref_grads
        free(device)
    write_csv(args.out / "blocks.csv", rows)
    for line in failed:
        print("FAILED:", line)
    return 1 if failed else 0


# ---- 5. emulate rows and 6. the real job ----------------------------------------------------------


def python_cmd() -> list[str]:
    """The interpreter to launch harness.run with: $PYTHON (gpu_check.sh sets it), else this one."""
    return shlex.split(os.environ.get("PYTHON") or "") or [sys.executable]


def llm_methods() -> list[str]:
    import harness.methods

    return harness.methods.for_workload("llm", "llama")


def emulate_overrides(part: str, cpu: bool) -> list[str]:
    """harness.run overrides of one emulate part. GPU: the paper shapes (conf/sweep/gpu_emulate*.yaml)
    with fewer layers; CPU: the same structure on the tiny models (4 ranks, short lengths)."""
    timeout = "bench.timeout_s=90"
    if part in ("llm_32k", "llm_128k"):
        methods = ",".join(llm_methods()) if part == "llm_32k" else "ulysses,ring"
        length = {"llm_32k": (32768, 256), "llm_128k": (131072, 1024)}[part][cpu]
        # tiny has 4 kv heads: TP-SP and Odysseus need them divisible by the world size
        size = (
            ["model=tiny", "hardware=cpu", "dtype=float32", "world_size=4"]
            if cpu
            else [
                "model=llama3_8b",
                "model.layers=1",
                "hardware=h100_nvlink_8x",
                "dtype=bfloat16",
                "world_size=8",
            ]
        )
        return ["+sweep=gpu_emulate", f"method={methods}", *size, f"workload.seq_len={length}", timeout]
    if part == "video":  # DSP 720M at the paper's 1M-token point (256 frames x 4096 on SP 4), one layer
        size = (
            ["model=tiny_video", "hardware=cpu", "dtype=float32", "workload.frames=8", "workload.spatial=16"]
            if cpu
            else ["model=dsp_720m", "model.layers=1", "hardware=h100_nvlink_8x", "dtype=bfloat16"]
        )
        return ["+sweep=gpu_emulate_video", "method=dsp", *size, timeout]
    if part == "linear":  # LASP-2 Table 6's 1024K tokens on 64 GPUs (rank 1 played), 2 of the 16 layers
        size = (
            ["model=tiny_linear", "hardware=cpu", "dtype=float32", "world_size=4", "workload.seq_len=256"]
            if cpu
            else ["model=linear_llama3_1b", "model.layers=2", "dtype=bfloat16"]
        )
        return ["+sweep=gpu_emulate_linear", "method=lasp2", *size, timeout]
    raise SystemExit(f"unknown emulate part {part!r}")


EMULATE_PARTS = ("llm_32k", "llm_128k", "video", "linear")
CPU_BENCH = ["bench.warmup=0", "bench.iters=1"]


def real_overrides(cpu: bool) -> list[str]:
    """World size 1 with verify: ulysses, ring, Ulysses ZeRO-3 (FSDP2) and Odysseus. GPU: NCCL, a
    narrowed Llama3 block (GQA 8 over 2 kv heads at the real head dim 128) in bf16."""
    common = [
        "mode=real",
        "world_size=1",
        "verify=true",
        "method=ulysses,ring,ulysses_zero3,odysseus",
        "bench.timeout_s=120",
    ]
    if cpu:
        return [*common, "backend=gloo", "dtype=float32", "model=tiny", "workload.seq_len=256", *CPU_BENCH]
    return [
        *common,
        "backend=nccl",
        "dtype=bfloat16",
        "hardware=h100_nvlink_8x",
        "model=llama3_8b",
        "model.layers=1",
        "model.hidden=1024",
        "model.heads=8",
        "model.kv_heads=2",
        "model.head_dim=128",
        "model.ffn_hidden=3584",
        "workload.seq_len=4096",
        "bench.warmup=1",
        "bench.iters=3",
    ]


def verify_tol(dtype: str) -> float:
    """The test suite's bounds for a run against the float64 block (tests/test_ulysses_tp_sp.py)."""
    return 5e-2 if dtype in ("bfloat16", "float16") else 1e-4


def load_rows(directory: Path) -> list[dict]:
    rows = []
    for path in sorted(directory.rglob("result.json")):
        row = json.loads(path.read_text())
        row["job_dir"] = str(path.parent.relative_to(directory))
        rows.append(row)
    return rows


def check_rows(rows: list[dict], expected: int, verify: bool) -> list[str]:
    """Why these rows fail the check: not ok, counted bytes off the cost model, verify errors too big."""
    problems = [] if len(rows) == expected else [f"{len(rows)} rows, expected {expected}"]
    for row in rows:
        name = f"{row.get('method')}{'+zero3' if row.get('zero3') else ''} seq_len={row.get('seq_len')}"
        if row.get("status") != "ok":
            problems.append(f"{name}: status {row.get('status')}: {str(row.get('error'))[:300]}")
            continue
        for phase in ("fwd", "bwd"):
            if row[f"comm_bytes_{phase}"] != row[f"theory_comm_bytes_{phase}"]:
                problems.append(
                    f"{name}: counted {phase} bytes {row[f'comm_bytes_{phase}']} != theory "
                    f"{row[f'theory_comm_bytes_{phase}']}"
                )
        if row.get("comm_detail") != row.get("theory_comm_detail"):
            problems.append(f"{name}: comm_detail differs from theory_comm_detail")
        if verify:
            tol = verify_tol(row["dtype"])
            for key in ("verify_out_rel_err", "verify_grad_rel_err"):
                if row.get(key) is None or not row[key] <= tol:
                    problems.append(f"{name}: {key}={row.get(key)} above {tol}")
    return problems


def _harness(overrides: list[str], sweep_dir: Path) -> int:
    cmd = [*python_cmd(), "-m", "harness.run", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    return subprocess.run(cmd, cwd=REPO).returncode


def _points(overrides: list[str]) -> int:
    return math.prod(len(o.split("=", 1)[1].split(",")) for o in overrides if o.startswith("method="))


COLUMNS = (
    "status",
    "method",
    "zero3",
    "layout",
    "model",
    "world_size",
    "play_rank",
    "seq_len",
    "frames",
    "spatial",
    "layers",
    "dtype",
    "attn_backend",
    "compute_time_ms",
    "step_time_ms",
    "projected_comm_ms",
    "mfu_compute",
    "mfu",
    "tflops_per_gpu_compute",
    "tokens_per_s",
    "peak_mem_bytes",
    "comm_bytes_fwd",
    "theory_comm_bytes_fwd",
    "comm_bytes_bwd",
    "theory_comm_bytes_bwd",
    "verify_out_rel_err",
    "verify_grad_rel_err",
    "job_seconds",
    "error",
    "job_dir",
)


def cmd_emulate(args) -> int:
    overrides = [*emulate_overrides(args.part, args.cpu), *(CPU_BENCH if args.cpu else []), "mode=emulate"]
    sweep = args.out / "emulate" / args.part
    rc = _harness(overrides, sweep)
    rows = load_rows(sweep)
    write_csv(args.out / f"emulate_{args.part}.csv", [{c: r.get(c) for c in COLUMNS} for r in rows])
    problems = check_rows(rows, _points(overrides), verify=False) + (
        [f"harness.run exited {rc}"] if rc else []
    )
    for p in problems:
        print("FAILED:", p)
    return 1 if problems else 0


def cmd_real(args) -> int:
    overrides = real_overrides(args.cpu)
    sweep = args.out / "real"
    rc = _harness(overrides, sweep)
    rows = load_rows(sweep)
    write_csv(args.out / "real.csv", [{c: r.get(c) for c in COLUMNS} for r in rows])
    problems = check_rows(rows, _points(overrides), verify=True) + (
        [f"harness.run exited {rc}"] if rc else []
    )
    for p in problems:
        print("FAILED:", p)
    return 1 if problems else 0


# ---- 7. summary -----------------------------------------------------------------------------------

MFU_TARGET, RATIO_TARGET = 0.40, 1.15
STEPS = (
    "versions",
    "kernels",
    "blocks",
    "micro",
    *(f"emulate_{p}" for p in EMULATE_PARTS),
    "real",
    "summary",
)


def _num(x) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _fmt(x, spec: str = ".3g") -> str:
    v = _num(x)
    return "-" if v is None else format(v, spec)


def _row(rows: list[dict], **match) -> dict | None:
    found = [r for r in rows if all(str(r.get(k)) == str(v) for k, v in match.items())]
    return found[0] if found else None


def summarize(out: Path, cpu: bool) -> tuple[str, list[dict]]:
    """summary.md's text and summary.csv's rows from what the steps left in `out`."""
    versions = json.loads((out / "versions.json").read_text()) if (out / "versions.json").exists() else {}
    steps = read_csv(out / "steps.csv")
    kernels, timing, blocks = (read_csv(out / f) for f in ("kernels.csv", "kernel_timing.csv", "blocks.csv"))
    long_rows = read_csv(out / "emulate_llm_128k.csv")
    table: list[dict] = []

    def add(section: str, item: str, target: str, measured: str, met) -> None:
        table.append(
            {
                "section": section,
                "item": item,
                "target": target,
                "measured": measured,
                "met": "-" if met is None else ("yes" if met else "NO"),
            }
        )

    long_len = 1024 if cpu else 131072
    uly, ring = _row(long_rows, method="ulysses"), _row(long_rows, method="ring")
    mfu = _num(uly.get("mfu_compute")) if uly and uly.get("status") == "ok" else None
    add(
        "a",
        f"Ulysses per-rank compute MFU, {uly.get('world_size') if uly else '?'} ranks x {long_len} tokens, "
        f"{'tiny' if cpu else 'Llama3-8B'} block, causal (emulate `mfu_compute`, causal-effective FLOPs)",
        f">= {MFU_TARGET:.0%}",
        "-"
        if mfu is None
        else f"{mfu:.1%} ({_fmt(uly.get('compute_time_ms'), '.1f')} ms, "
        f"{_fmt(uly.get('tflops_per_gpu_compute'))} TFLOP/s)",
        None if mfu is None else mfu >= MFU_TARGET,
    )
    t_u = _num(uly.get("compute_time_ms")) if uly else None
    t_r = _num(ring.get("compute_time_ms")) if ring and ring.get("status") == "ok" else None
    ratio = t_r / t_u if t_u and t_r else None
    add(
        "b",
        f"ring ({ring.get('layout') if ring else 'zigzag'}) / Ulysses per-rank compute_time_ms "
        f"at {long_len} tokens",
        f"<= {RATIO_TARGET}",
        "-" if ratio is None else f"{ratio:.3f} ({t_r:.1f} / {t_u:.1f} ms)",
        None if ratio is None else ratio <= RATIO_TARGET,
    )
    for name in dict.fromkeys(r["kernel"] for r in kernels):
        mine = [r for r in kernels if r["kernel"] == name]
        errs = {
            key: max((_num(r.get(key)) for r in mine if _num(r.get(key)) is not None), default=None)
            for key in ("out_rel_err", "lse_abs_err", "dq_rel_err", "dk_rel_err", "dv_rel_err")
        }
        block_ok = [r["ok"] == "True" for r in blocks if r["kernel"] == name]
        t = _row(timing, kernel=name) or {}
        admitted = mine[0]["admitted"] == "True"
        measured = (
            ", ".join(f"{k.removesuffix('_err')} {_fmt(v)}" for k, v in errs.items())
            + f"; blocks {sum(block_ok)}/{len(block_ok)} ok"
            + (
                f"; {_fmt(t.get('fwd_bwd_tflops'))} TFLOP/s fwd+bwd, {_fmt(t.get('fwd_tflops'))} fwd"
                f" at {t.get('length')} tokens"
                if _num(t.get("fwd_bwd_tflops"))
                else f"; timing: {t.get('error') or '-'}"
            )
            + ("" if admitted else " (forced only: the self-check does not admit it)")
        )
        failed_cases = [r for r in mine if r["ok"] != "True"]
        head_dims = "/".join(sorted({r["head_dim"] for r in mine}, key=int))
        add(
            "c",
            f"kernel {name} ({mine[0]['dtype']}, D {head_dims}, L {mine[0]['length']}, causal and not)",
            f"rel <= {mine[0]['tol']}, lse <= {mine[0]['lse_tol']} nats",
            measured
            + (
                f"; {len(failed_cases)} case(s) failed: {failed_cases[0].get('error') or 'above tolerance'}"
                if failed_cases
                else ""
            ),
            not failed_cases and (not block_ok or all(block_ok)),
        )
    order = {name: i for i, name in enumerate(STEPS)}
    for st in sorted(steps, key=lambda st: order.get(st["step"], len(order))):
        add(
            "d",
            f"step {st['step']}",
            f"pass within {st['timeout_s']} s",
            f"{st['status']} in {_fmt(st['seconds'], '.1f')} s"
            + (f" (exit {st['rc']})" if st["status"] != "passed" else ""),
            st["status"] == "passed",
        )

    title = versions.get("device", "?")
    lines = [
        f"# Device check: {title}{' (CPU mode: tiny shapes, targets indicative only)' if cpu else ''}",
        "",
        f"torch {versions.get('torch')}, CUDA {versions.get('cuda')}, cuDNN {versions.get('cudnn')}, "
        f"NCCL {versions.get('nccl')}, capability {versions.get('capability')}, "
        f"Python {versions.get('python')}, triton {versions.get('triton_version')}, "
        f"flash-attn {versions.get('flash_attn_version')}",
        "",
        "Conventions: kernel errors against math in float64 on the same inputs (out, dq, dk, dv: max abs "
        "error over max abs reference; LSE: max abs error in nats). TFLOP/s and MFU count causal-effective "
        "FLOPs (attention's masked half removed; forward + backward = 3x forward, as harness/flops.py). "
        "MFU is against the hardware profile's dense bf16 peak (h100_nvlink_8x: 989 TFLOP/s; an H200 has "
        "the same).",
        "",
        "| | item | target | measured | met |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['section']} | {r['item']} | {r['target']} | {r['measured']} | {r['met']} |" for r in table
    ]
    job_rows = [(part, r) for part in EMULATE_PARTS for r in read_csv(out / f"emulate_{part}.csv")]
    job_rows += [("real", r) for r in read_csv(out / "real.csv")]
    if job_rows:
        lines += [
            "",
            "| rows | method | ranks | tokens | status | kernel | compute ms (real: step) "
            "| comm ms (projected) | MFU compute | bytes = theory | verify out / grad |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for part, r in job_rows:
            tokens = f"{r['frames']}x{r['spatial']}" if r.get("frames") else r.get("seq_len")
            same = r.get("comm_bytes_fwd") == r.get("theory_comm_bytes_fwd") and r.get(
                "comm_bytes_bwd"
            ) == r.get("theory_comm_bytes_bwd")
            method = (
                r["method"]
                + ("+zero3" if r.get("zero3") == "True" else "")
                + (f" {r['layout']}" if r.get("layout") else "")
            )
            lines.append(
                f"| {part} | {method} | {r['world_size']} | {tokens} | {r['status']} "
                f"| {r.get('attn_backend') or '-'} "
                f"| {_fmt(r.get('compute_time_ms') or r.get('step_time_ms'), '.1f')} "
                f"| {_fmt(r.get('projected_comm_ms'), '.1f')} "
                f"| {_fmt(r.get('mfu_compute'), '.3f')} | {'yes' if same else 'NO'} "
                f"| {_fmt(r.get('verify_out_rel_err'), '.2g')} "
                f"/ {_fmt(r.get('verify_grad_rel_err'), '.2g')} |"
            )
    lines += [
        "",
        "Rows: kernels.csv, kernel_timing.csv, blocks.csv, emulate_*.csv (emulate/<part>/*/result.json), "
        "real.csv (real/*/result.json), micro_benchmarks.json, steps.csv, logs/<step>.log.",
    ]
    return "\n".join(lines) + "\n", table


def cmd_summary(args) -> int:
    text, table = summarize(args.out, args.cpu)
    (args.out / "summary.md").write_text(text)
    write_csv(args.out / "summary.csv", table)
    print(text)
    return 0


# ---- entry point ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("versions", "kernels", "blocks", "emulate", "real", "summary"):
        p = sub.add_parser(name)
        p.add_argument("--out", type=Path, required=True)
        p.add_argument(
            "--cpu", action="store_true", help="CPU sizes: float32, CPU kernels, gloo, tiny models"
        )
        if name == "emulate":
            p.add_argument("--part", choices=EMULATE_PARTS, required=True)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    return {
        "versions": cmd_versions,
        "kernels": cmd_kernels,
        "blocks": cmd_blocks,
        "emulate": cmd_emulate,
        "real": cmd_real,
        "summary": cmd_summary,
    }[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
