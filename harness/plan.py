"""`python -m harness.plan model=... workload.seq_len=... world_size=... hardware=... dtype=...`: every
registered method and every valid choice of its options for one model, workload and cluster, ranked
by predicted step time among those that fit. `python -m harness.plan calibrate` measures the local
device's kernel rates first (harness/calibration.py); `--confirm K` (plan.confirm=K) dryruns the top K
and checks that their bytes and memory equal the prediction exactly.

Predictions are closed-form, no dryrun in the loop: per-rank bytes by kind from each method's
`comm_cost` (equal to a dryrun's), split by link (a collective whose group spans nodes of
`hardware.gpus` ranks runs inter-node, as harness/projection.py projects it), memory from each
method's `memory_cost` (the same), compute from harness/work.py over the calibration profile."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import sys
import time
import typing
from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

import methods
from methods.common import options as opts
from methods.common.config import InvalidConfig, ModelConfig, Problem, Workload
from methods.common.cost import bus_bytes
from methods.common.options import MethodOptions
from methods.usp import grid_position

from . import calibration
from .capacity import training_state_bytes
from .flops import step_flops
from .labels import problem_label
from .problem import MODEL_KEYS, WORKLOAD_KEYS
from .projection import spans_nodes
from .work import BACKWARD, step_work

log = logging.getLogger(__name__)


# ---- the configurations ----------------------------------------------------------------------------


def option_grid(method: str, world_size: int, workload: str) -> Iterator[dict]:
    """Every choice of a method's typed options (methods.<m>.<M>Options), valid or not: validation
    decides. Booleans take both values, Literal fields each choice, USP's degrees every split of the
    world size. The video baselines (methods/dsp/baselines.py) take Ring's and Ulysses's options but
    build neither ZeRO-3 nor a ring layout other than basic: there only `video_attention` varies."""
    hints = typing.get_type_hints(methods.options_class(method))
    axes: dict[str, tuple] = {}
    for f in dataclasses.fields(methods.options_class(method)):
        if workload == "video" and f.name != "video_attention":
            continue
        if workload != "video" and f.name == "video_attention":
            continue
        if hints[f.name] is bool:
            axes[f.name] = (False, True)
        elif allowed := opts.choices(hints[f.name]):
            axes[f.name] = allowed
    degrees = "ulysses_degree" in hints
    splits = (
        [(u, world_size // u) for u in range(1, world_size + 1) if world_size % u == 0] if degrees else [None]
    )
    for split in splits:
        for values in itertools.product(*axes.values()):
            choice = dict(zip(axes, values))
            if split is not None:
                choice.update(ulysses_degree=split[0], ring_degree=split[1])
            yield choice


def candidates(base: Problem) -> tuple[list[Problem], dict[str, int], int]:
    """(valid problems, rejection reason -> count, methods that do not run this model/workload)."""
    valid: list[Problem] = []
    rejected: dict[str, int] = {}
    not_applicable = 0
    for name in methods.names():
        probe = replace(base, method=name, options={})
        try:
            methods.for_problem(probe)
        except InvalidConfig:
            not_applicable += 1
            continue
        for options in option_grid(name, base.world_size, base.workload.name):
            p = replace(base, method=name, options=options)
            try:
                methods.for_problem(p).validate(p)
            except InvalidConfig as e:
                reason = f"{name}: {_reason(str(e))}"
                rejected[reason] = rejected.get(reason, 0) + 1
                continue
            valid.append(p)
    return valid, rejected, not_applicable


def _reason(message: str) -> str:
    """A rejection message without its numbers' details, so equal causes count together."""
    return message.split(":")[0].split(" (")[0]


# ---- communication by link -------------------------------------------------------------------------


def group_of(p: Problem, kind: str) -> list[int]:
    """Rank 0's group for collectives of `kind`: USP's all-to-alls run in its Ulysses group and its
    sends in its ring group; every other collective of every method runs over the whole world."""
    if p.method == "usp" and kind in ("all_to_all", "send"):
        position = grid_position(p, 0)
        axis = (
            0 if kind == "all_to_all" else 1
        )  # same ring index = a Ulysses group; same Ulysses index = a ring
        return [r for r in range(p.world_size) if grid_position(p, r)[axis] == position[axis]]
    return list(range(p.world_size))


def calls_of(p: Problem, kind: str, phase: str) -> int:
    """Collective calls of a kind in a phase, for the latency term (approximate: the bytes are exact,
    the call count follows each method's structure per layer). Ring sends: K and V every step forward;
    K, V and the dK/dV accumulators backward; all-to-alls: q, k, v and the output; gradient all-reduce:
    one bucket."""
    layers = p.model.layers
    if kind == "send" and p.method == "lasp1":
        return layers * chain_hops(p, kind)
    if kind == "send":
        g = len(group_of(p, kind))
        return layers * (2 * (g - 1) if phase == "fwd" else 2 * (g - 1) + 2 * g)
    if kind == "all_to_all":
        return 4 * layers
    if kind == "all_reduce":
        return 1
    return layers


def chain_hops(p: Problem, kind: str) -> int:
    """Dependent hops one counted collective stands for on the critical path: LASP-1's state passes
    rank to rank, W-1 hops per layer and phase, each rank sending once; everything else is one."""
    return p.world_size - 1 if p.method == "lasp1" and kind == "send" else 1


def link_seconds(hardware: DictConfig, inter: bool) -> tuple[float, float]:
    """(bytes per second, latency in seconds) of an intra- or inter-node link."""
    bw = hardware.get("inter_node_bw_GBps") if inter else None
    latency = hardware.get("inter_node_latency_us") if inter else None
    return 1e9 * (bw or hardware["link_bw_GBps"]), 1e-6 * (latency or hardware["latency_us"])


def comm_by_link(p: Problem, hardware: DictConfig) -> dict:
    """Exact bytes by phase, kind and link, and their projected seconds."""
    gpus = int(hardware.get("gpus") or p.world_size)
    cost = methods.for_problem(p).comm_cost(p)
    out: dict[str, Any] = {
        "intra_bytes": Fraction(0),
        "inter_bytes": Fraction(0),
        "comm_s": 0.0,
        "comm_fwd_s": 0.0,
        "send_s_per_call": 0.0,
        "all_gather_s": 0.0,
        "comm_steps_per_layer": 0.0,
        "detail": cost.as_dict(),
    }
    for phase, kinds in cost.bytes.items():
        for kind, moved in kinds.items():
            if not moved:
                continue
            inter = spans_nodes(group_of(p, kind), gpus)
            bw, latency = link_seconds(hardware, inter)
            out["inter_bytes" if inter else "intra_bytes"] += moved
            seconds = chain_hops(p, kind) * float(moved) / bw + calls_of(p, kind, phase) * latency
            if kind != "all_reduce":  # the gradient bucket is not a step of the layers
                out["comm_steps_per_layer"] += calls_of(p, kind, phase) / p.model.layers
            out["comm_s"] += seconds
            if phase == "fwd":
                out["comm_fwd_s"] += seconds
            if kind == "send":
                out["send_s_per_call"] = max(out["send_s_per_call"], seconds / calls_of(p, kind, phase))
            if kind == "all_gather":
                out["all_gather_s"] += seconds
    out["intra_bytes"], out["inter_bytes"] = float(out["intra_bytes"]), float(out["inter_bytes"])
    return out


# ---- one prediction --------------------------------------------------------------------------------


def overlap_saving(p: Problem, work, comm: dict, profile: calibration.Profile) -> float:
    """Seconds the method's own overlap hides. Ring (and USP's ring): each step computes one block
    while the next K/V block travels, so a step costs max(block compute, transfer); LASP-2: the state
    all-gather runs during the intra-chunk compute; every other method is serial."""
    attention = profile.rates["attention"]
    if work.ring_steps and p.method in ("ring", "usp"):
        transfer = 2 * comm["send_s_per_call"]  # K and V of one step
        steps = work.ring_steps[:-1]  # nothing travels during the last step
        hidden = sum(
            min(f / attention.rate, transfer) + min(BACKWARD * f / attention.rate, transfer) for f in steps
        )
        return p.model.layers * hidden
    if p.method == "lasp2":
        return min(work.linear_attention_flops / attention.rate, comm["all_gather_s"])
    return 0.0


def predict(
    p: Problem,
    hardware: DictConfig,
    profile: calibration.Profile,
    memory_bytes: float | None,
    optimizer: str = "none",
    recompute: str = "none",
) -> dict:
    """One configuration's row. Memory: the method's one-step model plus the training state of
    harness/capacity.py (`optimizer` state; `recompute=full` keeps one layer's activations), against
    `memory_bytes`. Full recompute runs each layer's forward again in the backward: its compute and
    its forward communication once more."""
    method = methods.for_problem(p)
    memory = method.memory_cost(p)
    train = training_state_bytes(p, optimizer, recompute, memory)
    comm = comm_by_link(p, hardware)
    work = step_work(p)
    compute_s = profile.seconds(work.work, work.calls, p.model.layers, work.causal_work)
    comm_s = comm["comm_s"]
    if recompute == "full":
        compute_s += compute_s / (1 + BACKWARD)
        comm_s += comm["comm_fwd_s"]
    step_s = compute_s + comm_s
    overlap_s = step_s - overlap_saving(p, work, comm, profile)
    _, effective = step_flops(p)
    peak = 1e12 * float(hardware["peak_tflops"][p.dtype])
    required = train["train_model_bytes"]
    return {
        "label": problem_label(p) + (" recompute" if recompute == "full" else ""),
        "method": p.method,
        **{f"opt_{k}": v for k, v in opts.as_dict(p.options).items()},
        "mem_GiB": required / 2**30,
        "mem_required_bytes": required,
        **{f"mem_step_{k}_bytes": v for k, v in memory.as_dict().items()},
        **train,
        "fits": None if memory_bytes is None else required <= memory_bytes,
        "comm_fwd_bytes": float(sum(comm["detail"]["fwd"].values())),
        "comm_bwd_bytes": float(sum(comm["detail"]["bwd"].values())),
        "intra_node_bytes": comm["intra_bytes"],
        "inter_node_bytes": comm["inter_bytes"],
        "comm_detail": comm["detail"],
        "comm_steps_per_layer": comm["comm_steps_per_layer"],
        "comm_ms": 1e3 * comm_s,
        "compute_ms": 1e3 * compute_s,
        **{f"{c}_work": v for c, v in work.work.items()},
        "step_ms_serial": 1e3 * step_s,
        "step_ms": 1e3 * overlap_s,
        "tokens_per_s": p.workload.tokens / overlap_s,
        "mfu": effective / p.world_size / overlap_s / peak,
        "calibrated": profile.calibrated,
    }


def problem_of(cfg: DictConfig) -> Problem:
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model = ModelConfig(
        **{k: model_cfg[k] for k in MODEL_KEYS if k in model_cfg},
        extra={k: v for k, v in model_cfg.items() if k not in MODEL_KEYS},
    )
    workload_cfg = OmegaConf.to_container(cfg.workload, resolve=True)
    workload = Workload(**{k: workload_cfg[k] for k in WORKLOAD_KEYS if k in workload_cfg})
    return Problem(
        "",
        model,
        workload,
        int(cfg.world_size),
        cfg.dtype,
        MethodOptions(),  # each candidate replaces the method and its options
        device="cuda" if str(cfg.hardware.name) != "cpu" else "cpu",
    )


def profile_for(cfg: DictConfig) -> calibration.Profile:
    """plan.calibration: a profile's path, `auto` (results/calibration/<the hardware's device>.json
    when there is one) or `none` (the documented defaults)."""
    choice = str(cfg.plan.calibration)
    path = Path(choice) if choice not in ("auto", "none") else calibration.profile_path(str(cfg.plan.device))
    if choice != "none" and path.exists():
        return calibration.load_profile(path, cfg.dtype)
    if choice not in ("auto", "none"):
        raise InvalidConfig(f"plan.calibration={choice}: no such file")
    return calibration.default_profile(cfg.hardware, cfg.dtype)


def plan_table(
    base: Problem,
    hardware: DictConfig,
    profile: calibration.Profile,
    memory_bytes: float | None,
    optimizer: str = "none",
    recomputes: tuple[str, ...] = ("none",),
) -> tuple[pd.DataFrame, dict[str, int], int, list[Problem]]:
    """The ranked table (fastest that fits first), the rejections, and the problems in table order;
    each valid problem once per recompute choice."""
    valid, rejected, not_applicable = candidates(base)
    pairs = [(p, r) for p in valid for r in recomputes]
    rows = [predict(p, hardware, profile, memory_bytes, optimizer, r) for p, r in pairs]
    table = pd.DataFrame(rows)
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["fits"] is False, rows[i]["step_ms"]))
    table = table.iloc[order].reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    table["why_not_first"] = [why_slower(table.iloc[0], row) if i else "" for i, row in table.iterrows()]
    return table, rejected, not_applicable, [pairs[i][0] for i in order]


def why_slower(best: pd.Series, row: pd.Series) -> str:
    """The main reason a configuration loses to the winner."""
    if row["fits"] is False:
        return f"memory: {row['mem_GiB']:.1f} GiB per rank does not fit"
    gaps = {
        "inter-node traffic": (row["comm_ms"] - best["comm_ms"])
        if row["inter_node_bytes"] > best["inter_node_bytes"]
        else 0,
        "intra-node traffic": (row["comm_ms"] - best["comm_ms"])
        if row["inter_node_bytes"] <= best["inter_node_bytes"]
        else 0,
        "compute (imbalance or extra work)": row["compute_ms"] - best["compute_ms"],
        "less overlap": (row["step_ms"] - row["step_ms_serial"]) - (best["step_ms"] - best["step_ms_serial"]),
    }
    cause, gap = max(gaps.items(), key=lambda kv: kv[1])
    return f"{cause} +{gap:.3g} ms" if gap > 0 else "ties the winner"


def _capacity(memory_bytes: float | None) -> str:
    return "the device memory" if memory_bytes is None else f"{memory_bytes / 2**30:.0f} GiB"


def explain(table: pd.DataFrame, memory_bytes: float | None) -> str:
    best = table.iloc[0]
    if best["fits"] is False:
        smallest = table.loc[table["mem_required_bytes"].idxmin()]
        return (
            f"No configuration fits {_capacity(memory_bytes)} per rank: the smallest, "
            f"{smallest['label']}, needs {smallest['mem_GiB']:.1f} GiB. More ranks, a shorter sequence "
            f"or full recompute (plan.recompute) would be needed. Fastest regardless of memory: "
            f"{best['label']}, {best['step_ms']:.1f} ms per step."
        )
    fit_note = (
        ""
        if memory_bytes is None
        else f" and needs {best['mem_GiB']:.1f} GiB per rank of {memory_bytes / 2**30:.0f} GiB"
    )
    link = (
        f"{best['inter_node_bytes'] / 2**20:.0f} MiB of it over inter-node links"
        if best["inter_node_bytes"]
        else "all of it inside a node"
    )
    runner = table.iloc[1] if len(table) > 1 else None
    versus = (
        f" The runner-up, {runner['label']}, is {runner['step_ms'] / best['step_ms']:.2f}x slower "
        f"({runner['why_not_first']})."
        if runner is not None
        else ""
    )
    return (
        f"{best['label']} is predicted fastest: {best['step_ms']:.1f} ms per step "
        f"({best['compute_ms']:.1f} ms compute, {best['comm_ms']:.1f} ms communication before overlap), "
        f"{best['tokens_per_s']:.3g} tokens/s, MFU {best['mfu']:.2f}{fit_note}. Each rank moves "
        f"{(best['comm_fwd_bytes'] + best['comm_bwd_bytes']) / 2**20:.0f} MiB per step, {link}.{versus}"
    )


# ---- confirmation by dryrun ------------------------------------------------------------------------


def dryrun_check(problems: list[Problem], hardware: DictConfig) -> list[dict]:
    """Dryrun each problem in this process (ranks 0 and N-1, the two ends of every layout) and compare
    with the prediction, exactly: the busiest played rank's bytes by phase and kind and its memory by
    category, and its bytes by link (its records' groups placed on nodes of `hardware.gpus`)."""
    from .metrics import max_comm
    from .worker import Job, entry_single

    # a dryrun runs on the CPU, whose kernels allocate a little differently (methods/common/memory.py):
    # the CPU's memory model is the one it confirms
    problems = [replace(p, device="cpu") for p in problems]
    jobs, owners = [], []
    for i, p in enumerate(problems):
        for rank in sorted({0, p.world_size - 1}):
            jobs.append(Job(p, mode="dryrun", play_rank=rank))
            owners.append(i)
    results = entry_single(jobs)
    gpus = int(hardware.get("gpus") or max(p.world_size for p in problems))
    out = []
    for i, p in enumerate(problems):
        mine = [r for owner, r in zip(owners, results) if owner == i]
        memory = [_measured_memory(r) for r in mine]
        method = methods.for_problem(p)
        predicted_comm, predicted_mem = method.comm_cost(p).as_dict(), method.memory_cost(p).as_dict()
        busiest = max(memory, key=lambda d: sum(d.values()))
        links = {"intra": Fraction(0), "inter": Fraction(0)}
        for (_, _, link), moved in _bytes_by_link(mine, gpus).items():
            links[link] += moved
        predicted_links = comm_by_link(p, hardware)
        out.append(
            {
                "label": problem_label(p),
                "comm_equal": max_comm(mine) == predicted_comm,
                "memory_equal": busiest == predicted_mem,
                "links_equal": (float(links["intra"]), float(links["inter"]))
                == (predicted_links["intra_bytes"], predicted_links["inter_bytes"]),
                "dryrun_comm": max_comm(mine),
                "predicted_comm": predicted_comm,
                "dryrun_memory": busiest,
                "predicted_memory": predicted_mem,
            }
        )
    return out


def _bytes_by_link(results: list[dict], gpus: int) -> dict[tuple[str, str, str], Fraction]:
    """(phase, kind, link) -> the busiest played rank's bytes, as the cost models count the busiest
    rank per phase and kind (LASP-1's first rank sends only forward, its last only backward)."""
    busiest: dict[tuple[str, str, str], Fraction] = {}
    for result in results:
        mine: dict[tuple[str, str, str], Fraction] = {}
        for record in result["comm_records"]:
            key = (record.phase, record.kind, "inter" if spans_nodes(record.ranks, gpus) else "intra")
            mine[key] = mine.get(key, Fraction(0)) + bus_bytes(
                record.kind, record.full_bytes, record.group_size
            )
        for key, moved in mine.items():
            busiest[key] = max(busiest.get(key, Fraction(0)), moved)
    return busiest


def _measured_memory(result: dict) -> dict[str, int]:
    """A dryrun's memory in the categories of the memory models (methods/common/memory.py)."""
    fwd_end, end = result["mem_fwd_end_detail"], result["mem_end_detail"]
    return {"param": fwd_end["param"], "input": fwd_end["input"], "act": fwd_end["act"], "grad": end["grad"]}


# ---- the command -----------------------------------------------------------------------------------

COLUMNS = [
    "rank",
    "label",
    "mem_GiB",
    "fits",
    "intra_node_bytes",
    "inter_node_bytes",
    "comm_ms",
    "compute_ms",
    "step_ms",
    "mfu",
    "why_not_first",
]


def printable(table: pd.DataFrame, top: int) -> str:
    shown = table.head(top)[COLUMNS].copy()
    for col in ("intra_node_bytes", "inter_node_bytes"):
        shown[col] = (shown[col] / 2**20).round(0).astype(int)
    shown = shown.rename(columns={"intra_node_bytes": "intra_MiB", "inter_node_bytes": "inter_MiB"})
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3g}")


def run_plan(cfg: DictConfig, out_dir: Path) -> pd.DataFrame:
    start = time.perf_counter()
    base = problem_of(cfg)
    profile = profile_for(cfg)
    memory_gib = cfg.plan.memory_GiB if cfg.plan.memory_GiB is not None else cfg.hardware.get("memory_GiB")
    memory_bytes = None if memory_gib is None else float(memory_gib) * 2**30
    table, rejected, not_applicable, ordered = plan_table(
        base, cfg.hardware, profile, memory_bytes, str(cfg.plan.optimizer), tuple(cfg.plan.recompute)
    )
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = table.assign(comm_detail=table["comm_detail"].map(str))
    flat.to_csv(out_dir / "plan.csv", index=False)
    flat.to_parquet(out_dir / "plan.parquet", index=False)
    print(
        f"{base.model.name}, {base.workload.tokens} tokens, {base.world_size} ranks on {cfg.hardware.name} "
        f"({cfg.hardware.get('gpus') or base.world_size} per node), {base.dtype}: {len(table)} valid "
        f"configurations, planned in {seconds:.2f} s"
    )
    if not profile.calibrated:
        print(
            f"compute times UNCALIBRATED: default efficiencies of {cfg.hardware.name}'s peak "
            "(harness/calibration.py DEFAULT_EFFICIENCY); "
            "run `python -m harness.plan calibrate` on the device"
        )
    if memory_bytes is None:
        print("no device memory known (hardware.memory_GiB or plan.memory_GiB): `fits` is not checked")
    print(printable(table, int(cfg.plan.top)))
    total_rejected = sum(rejected.values())
    print(
        f"\n{total_rejected} configurations rejected by validation"
        + (":" if rejected else "")
        + "".join(f"\n  {n} x {why}" for why, n in sorted(rejected.items(), key=lambda kv: -kv[1]))
    )
    if not_applicable:
        print(
            f"{not_applicable} registered methods do not run a {base.model.kind} model on the "
            f"{base.workload.name} workload"
        )
    print(f"\n{explain(table, memory_bytes)}")
    print(f"\nfull table: {out_dir / 'plan.csv'} (and plan.parquet)")
    if cfg.plan.confirm:
        distinct: dict[str, Problem] = {}  # each configuration once, whatever its recompute rows
        for p in ordered:
            distinct.setdefault(problem_label(p), p)
        checks = dryrun_check(list(distinct.values())[: int(cfg.plan.confirm)], cfg.hardware)
        for c in checks:
            print(
                f"dryrun {c['label']}: bytes {'equal' if c['comm_equal'] else 'DIFFER'}, "
                f"memory {'equal' if c['memory_equal'] else 'DIFFERS'}, "
                f"bytes by link {'equal' if c['links_equal'] else 'DIFFER'}"
            )
        if not all(c["comm_equal"] and c["memory_equal"] and c["links_equal"] for c in checks):
            raise SystemExit(1)
    return table


# the default block to calibrate with (conf/model/tiny.yaml): small enough for any CPU
PROBE_MODEL = ModelConfig("tiny", hidden=64, heads=8, kv_heads=4, head_dim=8, ffn_hidden=128, layers=2)


def probe_problem(model: ModelConfig, seq_len: int, world_size: int, dtype: str, device: str) -> Problem:
    """The whole step calibrate_here measures: Ulysses over two ranks, each with a rank's share of
    `seq_len` over `world_size`."""
    share = seq_len // world_size
    return Problem("ulysses", model, Workload(batch_size=1, seq_len=2 * share), 2, dtype, {}, device=device)


def calibrate_here(
    dtype: str,
    quick: bool = False,
    model: ModelConfig = PROBE_MODEL,
    seq_len: int = 256,
    world_size: int = 2,
) -> calibration.Profile:
    """Kernel rates on the local device (the GPU when there is one) at the shapes a plan of `model` at
    `seq_len` over `world_size` ranks runs. Attention: isolated kernels at the model's heads and head
    size over the whole length and the blocks of a rank's share. GEMMs and elementwise ops: inside a
    whole emulate step of Ulysses over two ranks, each holding a rank's share of tokens, split by
    kernel class with torch.profiler; isolated kernels run with warm caches and, on CPU, faster than
    the same GEMMs do between the norms, copies and activations of a real step. The per-layer
    overhead is what that step takes beyond its kernels' predicted time (Python and autograd)."""
    import tempfile

    import torch

    from .worker import Job, entry_single

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    share = seq_len // world_size
    lengths = sorted({max(1, share // 2), share, seq_len // 2, seq_len} - {0})
    isolated = calibration.calibrate(device, dtype, 0.0, quick, model.heads, model.head_dim, lengths)
    probe = probe_problem(model, seq_len, world_size, dtype, device.type)
    with tempfile.TemporaryDirectory() as trace_dir:
        [result] = entry_single(
            [Job(probe, mode="emulate", warmup=2, iters=10 if quick else 30, profile_dir=trace_dir)]
        )
        trace = json.loads((Path(trace_dir) / "trace_rank0.json").read_text())
    spent, count, span = calibration.class_seconds(trace)
    rest = max(0.0, span - sum(spent.values()))  # Python and autograd
    # the profiler lengthens every op it records by about the same time: take it off each class,
    # then scale the step to the bare steps' time (calibration._best_seconds)
    per_op = calibration.profiler_op_seconds(device)
    own = {c: max(0.0, spent[c] - count[c] * per_op) for c in spent}
    single = calibration.cpu_clock(device) is time.process_time  # as the isolated kernels were timed
    measured = min(result["step_cpu_times_s"] if single else result["step_times_s"])
    scale = measured / (sum(own.values()) + rest)
    work = step_work(probe)
    rates = dict(isolated.rates)
    for c in ("gemm", "elementwise"):
        rates[c] = calibration.ClassRate(work.work[c] / (scale * own[c]), 0.0)
        log.info(
            "%s in a step: %.3g per s (isolated kernels: %.3g)", c, rates[c].rate, isolated.rates[c].rate
        )
    log.info(
        "profiler per op %.3g s; step %.3g s, of it Python and autograd %.3g s",
        per_op,
        measured,
        scale * rest,
    )
    return replace(isolated, rates=rates, layer_overhead_s=scale * rest / model.layers)


def run_calibrate(cfg: DictConfig) -> Path:
    profile = calibrate_here(cfg.dtype, quick=bool(cfg.plan.quick))
    out = cfg.plan.calibration_out
    path = Path(str(out)) if out else calibration.profile_path(profile.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.to_json(), indent=2) + "\n")
    print(f"calibration of {profile.device} ({cfg.dtype}) written to {path}")
    return path


@hydra.main(version_base=None, config_path="../conf", config_name="plan")
def _hydra_main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO if cfg.plan.verbose else logging.WARNING)
    if cfg.plan.action == "calibrate":
        run_calibrate(cfg)
        return
    from hydra.core.hydra_config import HydraConfig

    run_plan(cfg, Path(HydraConfig.get().runtime.output_dir))


def main() -> None:
    """`calibrate` as the first argument and `--confirm K` become Hydra overrides."""
    args = sys.argv[1:]
    if args[:1] == ["calibrate"]:
        args = ["plan.action=calibrate", *args[1:]]
    if "--confirm" in args:
        i = args.index("--confirm")
        args[i : i + 2] = [f"plan.confirm={args[i + 1]}"]
    sys.argv = [sys.argv[0], *args]
    _hydra_main()


if __name__ == "__main__":
    main()
