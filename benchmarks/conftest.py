"""Shared set-up of the micro-benchmarks (benchmarks/test_micro.py): the one place that defines the
problem sizes, which attention kernels run here, and the one-rank process group.

Kernels are found by trying them, not from a list of names: a kernel added to
`methods.common.attention.KERNELS` is benchmarked wherever it runs, and one that cannot run on this
device and dtype (no CUDA, package missing, architecture too old) is left out of the parametrization
instead of being skipped, so "every collected benchmark passed" means every runnable kernel was timed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist

from methods.common.attention import KERNELS


@dataclass(frozen=True)
class Size:
    batch: int
    length: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    ref_length: int  # causal prefix compared with the math kernel (math at full GPU length is slow)
    tol: float  # max |got - ref| <= tol * max |ref| + tol (float32 kernels agree to ~1e-6, bf16 to ~1e-2)


# CPU: tiny, so the suite's untimed run stays quick; CUDA: one Llama3-8B attention layer (32 query
# heads, 8 KV heads, head dim 128) at 8K tokens in bf16.
SIZES = {
    "cpu": Size(
        batch=1, length=256, heads=8, kv_heads=4, head_dim=64, dtype=torch.float32, ref_length=256, tol=1e-4
    ),
    "cuda": Size(
        batch=1,
        length=8192,
        heads=32,
        kv_heads=8,
        head_dim=128,
        dtype=torch.bfloat16,
        ref_length=1024,
        tol=5e-2,
    ),
}
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SIZE = SIZES[DEVICE.type]


@functools.cache
def kernel_probe(name: str, device: torch.device, size: Size) -> str | None:
    """None when kernel `name` runs a small causal GQA forward and backward on `device` in the size's
    dtype and head dim, else why not. Only "does it run" is decided here; whether it is right is
    what the benchmarks assert, so a kernel that runs but is wrong fails rather than disappears."""
    rep = size.heads // size.kv_heads
    q = torch.randn(1, 128, rep, size.head_dim, device=device, dtype=size.dtype)
    k, v = (torch.randn(1, 128, 1, size.head_dim, device=device, dtype=size.dtype) for _ in range(2))
    fwd, bwd = KERNELS[name]
    try:
        out, lse = fwd(q, k, v, True)
        bwd(torch.ones_like(out), q, k, v, out, lse, True)
    except Exception as err:  # noqa: BLE001 - any failure means "cannot run here"
        return f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
    return None


def usable_kernels(device: torch.device = DEVICE, size: Size = SIZE) -> list[str]:
    """Names of the KERNELS entries that run on `device` at `size` (in KERNELS order)."""
    return [name for name in KERNELS if kernel_probe(name, device, size) is None]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # a benchmark that takes a `kernel` argument runs once per usable kernel
    if "kernel" in metafunc.fixturenames:
        metafunc.parametrize("kernel", usable_kernels())


def pytest_report_header(config: pytest.Config) -> list[str]:
    s = SIZE
    left_out = {n: kernel_probe(n, DEVICE, s) for n in KERNELS if n not in usable_kernels()}
    return [
        f"micro-benchmarks on {DEVICE.type}: B={s.batch} L={s.length} H={s.heads} Hkv={s.kv_heads} "
        f"D={s.head_dim} {s.dtype}; kernels: {', '.join(usable_kernels())}",
        *(f"  not runnable here: {n} ({why})" for n, why in left_out.items()),
    ]


@pytest.fixture(scope="session", autouse=True)
def _describe_run(record_testsuite_property) -> None:
    """Device, dtype and kernels into the JUnit XML (when asked for one), so tests/test_benchmarks_run.py
    checks the run against this configuration rather than a copy of it."""
    record_testsuite_property("device", DEVICE.type)
    record_testsuite_property("dtype", str(SIZE.dtype).removeprefix("torch."))
    record_testsuite_property("kernels", ",".join(usable_kernels()))


@pytest.fixture(scope="session")
def single_rank_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dist.ProcessGroup]:
    """A real one-rank gloo group (FileStore rendezvous: no port to pick), so collectives go through
    c10d's dispatcher ops exactly as on a real run and the counter sees them."""
    if dist.is_initialized():  # one default group per process: refuse rather than tear down someone else's
        raise RuntimeError("a default process group already exists in this process")
    store = dist.FileStore(os.fspath(tmp_path_factory.mktemp("pg") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()
