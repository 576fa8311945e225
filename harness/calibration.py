"""Compute time of one rank's training step from the work of each kernel class, and the calibration
profile that says how fast each class runs on a device.

Kernel classes: `gemm` (the block's projections and MLP, FLOPs), `attention` (softmax attention
forward and backward at the shapes each method really calls, causal blocks counted half; linear
attention's state products too, FLOPs) and `elementwise` (norms, RoPE, activations, residuals, bytes
read and written). Each class costs a fixed time per kernel call plus its work over its achieved
rate; `layer_overhead_s` is what a layer costs beyond its kernels (autograd and Python), measured on
whole emulate steps.

`python -m harness.plan calibrate` measures the rates on the local device (the GPU when there is
one, else the CPU) and writes results/calibration/<device>.json. Without a profile the planner uses
`default_profile`: the hardware profile's peak times the efficiencies in DEFAULT_EFFICIENCY, marked
uncalibrated."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
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

    def seconds(self, work: Mapping[str, float], calls: Mapping[str, float], layers: int) -> float:
        """Compute time of `work` (per class) done in `calls` kernel calls (per class) over `layers`."""
        return layers * self.layer_overhead_s + sum(
            work[c] / self.rates[c].rate + calls[c] * self.rates[c].call_s for c in CLASSES
        )

    def to_json(self) -> dict:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "layer_overhead_s": self.layer_overhead_s,
            "rates": {c: asdict(r) for c, r in self.rates.items()},
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
    return Profile(data["device"], data["dtype"], rates, data["layer_overhead_s"], calibrated=True)


# ---- measurement -----------------------------------------------------------------------------------


def _best_seconds(fn, device: torch.device, repeats: int) -> float:
    """The fastest of `repeats` runs: on a shared machine the other processes only ever add time."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
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
) -> ClassRate:
    """Forward plus backward of the kernels the methods call, causal and not; a backward's FLOPs
    count twice its forward (the convention flops.py uses)."""
    points = []
    for length in lengths:
        for causal in (False, True):
            q, k, v = (torch.randn(1, length, heads, head_dim, device=device, dtype=dtype) for _ in range(3))

            def step(q=q, k=k, v=v, causal=causal) -> None:
                out, lse = attn_forward(q, k, v, causal)
                attn_backward(torch.ones_like(out), q, k, v, out, lse, causal)

            flops = 3 * 4.0 * length * length * heads * head_dim * (0.5 if causal else 1.0)
            points.append((flops, 2.0, _best_seconds(step, device, repeats)))
    return _fit(points)


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


def calibrate(device: torch.device, dtype: str, layer_overhead_s: float, quick: bool = False) -> Profile:
    """Kernel-class rates on `device`; `layer_overhead_s` is measured by the caller on whole steps."""
    torch_dtype = getattr(torch, dtype)
    cuda = device.type == "cuda"
    repeats = 5 if quick else 10
    gemm_sizes = [256, 512, 1024, 2048, 4096] if cuda else [64, 128, 256, 384, 512]
    lengths = [512, 1024, 2048, 4096] if cuda else [32, 64, 128, 256]
    elem_sizes = [1 << 16, 1 << 20, 1 << 24] if cuda else [1 << 12, 1 << 16, 1 << 19]
    rates = {
        "gemm": measure_gemm(device, torch_dtype, gemm_sizes, repeats),
        "attention": measure_attention(device, torch_dtype, lengths, 4, 64 if cuda else 16, repeats),
        "elementwise": measure_elementwise(device, torch_dtype, elem_sizes, repeats),
    }
    for c, r in rates.items():
        log.info("%s: %.3g per s, %.3g s per call", c, r.rate, r.call_s)
    return Profile(device_name(device), dtype, rates, layer_overhead_s, calibrated=True)
