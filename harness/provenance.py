"""Where a row's numbers come from: code version, machine, software, device. Each field is read once
per process (they cannot change while a sweep runs)."""

from __future__ import annotations

import platform
import socket
import subprocess
from functools import cache
from pathlib import Path

import hydra
import torch

REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


@cache
def git_sha() -> str | None:
    return _git("rev-parse", "HEAD")


@cache
def git_dirty() -> bool | None:
    """Whether tracked files differ from the commit (untracked files do not change what runs)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


@cache
def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@cache
def host() -> dict:
    """The machine and the software stack, the same for every row of this process."""
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "python_version": platform.python_version(),
        "hydra_version": hydra.__version__,
        "torch_version": torch.__version__,
        "git_sha": git_sha(),
        "git_dirty": git_dirty(),
    }


def uses_gpu(backend: str, mode: str, device: str = "auto") -> bool:
    """Real runs on NCCL, and emulation on a machine with CUDA (dryrun never computes)."""
    return backend == "nccl" or (mode == "emulate" and device == "auto" and torch.cuda.is_available())


def device_name(backend: str, mode: str, device: str = "auto") -> str:
    if mode == "dryrun":
        return "fake"
    if device == "meta":
        return "meta"
    if uses_gpu(backend, mode, device):
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine() or "cpu"


def versions(backend: str, mode: str, world_size: int, device: str = "auto") -> dict:
    """GPUs used, CUDA and NCCL versions (None without CUDA)."""
    gpu = uses_gpu(backend, mode, device)
    nccl = torch.cuda.nccl.version() if gpu and backend == "nccl" else None
    return {
        "device_count": (world_size if backend == "nccl" else 1) if gpu else 0,
        "cuda_version": torch.version.cuda if gpu else None,
        "nccl_version": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl,
    }
