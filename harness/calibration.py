"""Compute time of one rank's training step from the work of each kernel class, and the calibration
profile that says how fast each class runs on a device.

Kernel classes: `gemm` (the block's projections and MLP, FLOPs), `attention` (softmax attention
forward and backward at the shapes each method really calls, causal blocks counted half; linear
attention's state products too, FLOPs) and `elementwise` (norms, RoPE, activations, residuals, layout
copies and weight traffic, bytes read and written). Each class costs a fixed time per kernel call plus
its work over its achieved rate; a square causal block costs what its kernel really computes
(`causal_fraction`, measured by length); `layer_overhead_s` is what a layer costs beyond its kernels
(Python and autograd).

`python -m harness.plan calibrate` (harness.plan.calibrate_here) measures the rates on the local
device (the GPU when there is one, else the CPU): attention from isolated kernels (`calibrate`), GEMMs,
elementwise ops and the overhead from a whole emulate step split by kernel class (`class_seconds`), and
writes results/calibration/<device>.json. Without a profile the planner uses `default_profile`: the
hardware profile's peak times the efficiencies in DEFAULT_EFFICIENCY, marked uncalibrated."""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from methods.common.attention import attn_backward, attn_forward

log = logging.getLogger(__name__)

CLASSES = ("gemm", "attention", "elementwise")
CALIBRATION_DIR = Path(__file__).resolve().parent.parent / "results" / "calibration"

# Uncalibrated defaults, as fractions of the hardware profile's dense peak: what well-tuned bf16
# training reaches on H100/A100 (GEMMs ~70% of peak, flash attention ~50%; torchtitan and FA3 report
# numbers in these ranges); elementwise kernels run at ~70% of an HBM3 GPU's ~3 TB/s.
DEFAULT_EFFICIENCY = {"gemm": 0.7, "attention": 0.5}
DEFAULT_ELEMENTWISE_GBPS = 2000.0
DEFAULT_CALL_S = 5e-6  # a kernel launch


@dataclass(frozen=True)
class ClassRate:
    rate: float  # FLOP/s (gemm, attention) or bytes/s (elementwise)
    call_s: float  # fixed time per kernel call


@dataclass(frozen=True)
class Profile:
    device: str
    dtype: str
    rates: dict[str, ClassRate]
    layer_overhead_s: float
    calibrated: bool
    # square causal blocks: time over the time of the same block unmasked, by block length. Kernels
    # skip masked tiles only at their tile size (PyTorch's CPU flash kernel: 512 keys), so a short
    # causal block costs nearly as much as a full one. Without a measurement: the ideal half.
    causal_fraction: dict[int, float] = field(default_factory=dict)

    def causal_cost(self, length: int) -> float:
        """Measured time of a causal square block of `length` over its full block's, interpolated in
        log length between the measured lengths and held at the ends."""
        if not self.causal_fraction:
            return 0.5
        points = sorted(self.causal_fraction.items())
        x = math.log2(max(length, 1))
        if x <= math.log2(points[0][0]):
            return points[0][1]
        for (l0, f0), (l1, f1) in itertools.pairwise(points):
            x0, x1 = math.log2(l0), math.log2(l1)
            if x <= x1:
                return f0 + (f1 - f0) * (x - x0) / (x1 - x0)
        return points[-1][1]

    def seconds(
        self,
        work: Mapping[str, float],
        calls: Mapping[str, float],
        layers: int,
        causal_work: Mapping[int, float] | None = None,
    ) -> float:
        """Compute time of `work` (per class) done in `calls` kernel calls (per class) over `layers`;
        `causal_work` is the part of the attention work (counted half, as flops.py does) done in
        square causal blocks, by block length, which costs what the kernel really computes."""
        attention = self.rates["attention"].rate
        causal = sum(w * (2 * self.causal_cost(n) - 1) / attention for n, w in (causal_work or {}).items())
        return (
            layers * self.layer_overhead_s
            + causal
            + sum(work[c] / self.rates[c].rate + calls[c] * self.rates[c].call_s for c in CLASSES)
        )

    def to_json(self) -> dict:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "layer_overhead_s": self.layer_overhead_s,
            "rates": {c: asdict(r) for c, r in self.rates.items()},
            "causal_fraction": {str(n): f for n, f in sorted(self.causal_fraction.items())},
        }


def default_profile(hardware: Mapping, dtype: str) -> Profile:
    peak = 1e12 * float(hardware["peak_tflops"][dtype])
    rates = {c: ClassRate(peak * DEFAULT_EFFICIENCY[c], DEFAULT_CALL_S) for c in ("gemm", "attention")}
    rates["elementwise"] = ClassRate(1e9 * DEFAULT_ELEMENTWISE_GBPS, DEFAULT_CALL_S)
    return Profile(str(hardware["name"]), dtype, rates, 0.0, calibrated=False)


def device_name(device: torch.device) -> str:
    """A file-name-safe device name: the GPU's name, or `cpu`."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).lower().replace(" ", "_")
    return "cpu"


def profile_path(device: str) -> Path:
    return CALIBRATION_DIR / f"{device}.json"


def load_profile(path: Path, dtype: str) -> Profile:
    data = json.loads(path.read_text())
    if data["dtype"] != dtype:
        log.warning("calibration %s was measured in %s, the plan is in %s", path, data["dtype"], dtype)
    rates = {c: ClassRate(**r) for c, r in data["rates"].items()}
    causal = {int(n): float(f) for n, f in data.get("causal_fraction", {}).items()}
    return Profile(data["device"], data["dtype"], rates, data["layer_overhead_s"], True, causal)


# ---- measurement -----------------------------------------------------------------------------------


def cpu_clock(device: torch.device):
    """The clock to time `device` by. On a single-threaded CPU: this process's CPU time, which the
    time other processes hold the cores does not enter (emulate steps record `step_cpu_times_s`);
    with more threads it would add theirs up, so: the wall clock, as on a GPU."""
    single = device.type == "cpu" and torch.get_num_threads() == 1
    return time.process_time if single else time.perf_counter


def _best_seconds(fn, device: torch.device, repeats: int) -> float:
    """The fastest of `repeats` runs: on a shared machine the other processes only ever add time."""
    clock = cpu_clock(device)
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - t0)
    return min(times)


def _fit(points: list[tuple[float, float, float]]) -> ClassRate:
    """Least squares of seconds = calls * call_s + work / rate over (work, calls, seconds) points,
    both coefficients kept positive."""
    a = torch.tensor([[calls, work] for work, calls, _ in points], dtype=torch.float64)
    b = torch.tensor([s for _, _, s in points], dtype=torch.float64)
    coef = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    call_s, per_work = float(coef[0]), float(coef[1])
    if (
        per_work <= 0 or call_s < 0 or call_s > min(s for _, _, s in points)
    ):  # the fit is dominated by noise: time per unit work of the largest point
        work, _, seconds = max(points)
        call_s, per_work = 0.0, seconds / work
    return ClassRate(1.0 / per_work, call_s)


def measure_gemm(device: torch.device, dtype: torch.dtype, sizes: list[int], repeats: int) -> ClassRate:
    points = []
    for n in sizes:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        points.append((2.0 * n**3, 1.0, _best_seconds(lambda a=a, b=b: a @ b, device, repeats)))
    return _fit(points)


def measure_attention(
    device: torch.device, dtype: torch.dtype, lengths: list[int], heads: int, head_dim: int, repeats: int
) -> tuple[ClassRate, dict[int, float]]:
    """Forward plus backward of the kernels the methods call: the rate fitted on unmasked blocks (a
    backward's FLOPs count twice its forward, the convention flops.py uses), and by length the time
    of a causal block over the unmasked one."""
    points, causal_fraction = [], {}
    for length in lengths:
        seconds = {}
        for causal in (False, True):
            q, k, v = (torch.randn(1, length, heads, head_dim, device=device, dtype=dtype) for _ in range(3))

            def step(q=q, k=k, v=v, causal=causal) -> None:
                out, lse = attn_forward(q, k, v, causal)
                attn_backward(torch.ones_like(out), q, k, v, out, lse, causal)

            seconds[causal] = _best_seconds(step, device, repeats)
        points.append((3 * 4.0 * length * length * heads * head_dim, 2.0, seconds[False]))
        causal_fraction[length] = min(1.0, seconds[True] / seconds[False])
    return _fit(points), causal_fraction


def measure_elementwise(
    device: torch.device, dtype: torch.dtype, sizes: list[int], repeats: int
) -> ClassRate:
    points = []
    for n in sizes:
        x, y = (torch.randn(n, device=device, dtype=dtype) for _ in range(2))
        points.append(
            (
                3.0 * n * x.element_size(),
                1.0,
                _best_seconds(lambda x=x, y=y: torch.add(x, y), device, repeats),
            )
        )
    return _fit(points)


def calibrate(
    device: torch.device,
    dtype: str,
    layer_overhead_s: float,
    quick: bool = False,
    heads: int | None = None,
    head_dim: int | None = None,
    lengths: list[int] | None = None,
) -> Profile:
    """Kernel-class rates on `device` from isolated kernels; attention at `heads` x `head_dim` over
    `lengths` when given (the shapes the planned jobs call). `layer_overhead_s` is measured by the
    caller on whole steps."""
    torch_dtype = getattr(torch, dtype)
    cuda = device.type == "cuda"
    repeats = 5 if quick else 10
    gemm_sizes = [256, 512, 1024, 2048, 4096] if cuda else [64, 128, 256, 384, 512]
    lengths = lengths or ([512, 1024, 2048, 4096] if cuda else [32, 64, 128, 256])
    elem_sizes = [1 << 16, 1 << 20, 1 << 24] if cuda else [1 << 12, 1 << 16, 1 << 19]
    attention, causal_fraction = measure_attention(
        device, torch_dtype, lengths, heads or 4, head_dim or (64 if cuda else 16), repeats
    )
    rates = {
        "gemm": measure_gemm(device, torch_dtype, gemm_sizes, repeats),
        "attention": attention,
        "elementwise": measure_elementwise(device, torch_dtype, elem_sizes, repeats),
    }
    for c, r in rates.items():
        log.info("%s: %.3g per s, %.3g s per call", c, r.rate, r.call_s)
    log.info("causal block time over unmasked, by length: %s", causal_fraction)
    return Profile(device_name(device), dtype, rates, layer_overhead_s, True, causal_fraction)


# ---- kernel classes inside a whole step -----------------------------------------------------------

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
GEMM_KERNELS = re.compile(r"gemm|cutlass|xmma|cublas", re.IGNORECASE)
ATTENTION_KERNELS = re.compile(r"scaled_dot_product|flash|fmha", re.IGNORECASE)


def kernel_class(name: str, gpu: bool) -> str:
    if ATTENTION_KERNELS.search(name):
        return "attention"
    if GEMM_KERNELS.search(name) if gpu else name in GEMM_OPS:
        return "gemm"
    return "elementwise"


def class_seconds(trace: dict) -> tuple[dict[str, float], dict[str, int], float]:
    """Seconds each kernel class took in one profiled step (a Chrome trace of torch.profiler), its
    number of ops, and the span of the whole step: GPU kernels by name; on CPU the self time of each
    aten op (its time less the aten ops it called), so that nested ops count once. What is left of
    the span is Python and autograd."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    span = (max(float(e["ts"]) + float(e["dur"]) for e in events) - min(float(e["ts"]) for e in events)) / 1e6
    kernels = [e for e in events if e.get("cat") == "kernel"]
    out, count = dict.fromkeys(CLASSES, 0.0), dict.fromkeys(CLASSES, 0)
    if kernels:
        for e in kernels:
            out[kernel_class(e["name"], True)] += float(e["dur"]) / 1e6
            count[kernel_class(e["name"], True)] += 1
        return out, count, span
    ops = sorted(
        (e for e in events if e.get("cat") == "cpu_op" and e["name"].startswith("aten::")),
        key=lambda e: (e["tid"], float(e["ts"]), -float(e["dur"])),
    )
    stack: list[tuple[dict, list[float]]] = []  # (event, [self microseconds]) of the enclosing aten ops

    def close(until_tid, until_ts: float | None) -> None:
        while stack and (
            stack[-1][0]["tid"] != until_tid
            or until_ts is None
            or float(stack[-1][0]["ts"]) + float(stack[-1][0]["dur"]) <= until_ts
        ):
            e, own = stack.pop()
            out[kernel_class(e["name"], False)] += own[0] / 1e6
            count[kernel_class(e["name"], False)] += 1

    for e in ops:
        close(e["tid"], float(e["ts"]))
        if stack:
            stack[-1][1][0] -= float(e["dur"])
        stack.append((e, [float(e["dur"])]))
    close(None, None)
    return out, count, span


def profiler_op_seconds(device: torch.device, ops: int = 2000) -> float:
    """What torch.profiler adds to each op it records: a loop of tiny adds with and without it (on a
    GPU the kernels' own times are read, which it does not lengthen: 0)."""
    if device.type == "cuda":
        return 0.0
    from torch.profiler import ProfilerActivity, profile

    x = torch.zeros(1)

    def loop() -> None:
        for _ in range(ops):
            torch.add(x, x)

    bare = _best_seconds(loop, device, 10)
    with profile(activities=[ProfilerActivity.CPU]):
        profiled = _best_seconds(loop, device, 10)
    return max(0.0, (profiled - bare) / ops)
