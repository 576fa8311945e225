"""Start `world_size` ranks for one job with torch's elastic launcher (the machinery behind torchrun:
free port via a c10d rendezvous on localhost:0, RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* in each rank's
environment), so the same rank code also runs under torchrun or a cluster launcher.

Ranks are forked from a forkserver that has already imported torch and the harness, so a launch costs
about a second instead of one torch import per rank."""
from __future__ import annotations

import multiprocessing
import os
import uuid
from pathlib import Path
from typing import Any, Callable

from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

PRELOAD = ["torch", "torch.distributed", "harness.worker", "methods"]


def _start_method() -> str:
    # CUDA cannot be initialised in a forked child of a process that touched it; the forkserver
    # never does. Fall back to spawn where forkserver does not exist.
    if "forkserver" in multiprocessing.get_all_start_methods():
        multiprocessing.set_forkserver_preload(PRELOAD)
        return "forkserver"
    return "spawn"


def launch(entry: Callable[..., Any], args: tuple, world_size: int, log_dir: str | Path | None = None) -> dict[int, Any]:
    """Run `entry(*args)` on `world_size` local ranks; returns {rank: return value}.
    Raises ChildFailedError (with every failed rank's error) if any rank fails."""
    logs = DefaultLogsSpecs(log_dir=str(log_dir) if log_dir else None, tee=Std.ALL, local_ranks_filter={0})
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=world_size, run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
        start_method=_start_method(), monitor_interval=0.1, logs_specs=logs,
    )
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # elastic sets it anyway; silence its warning
    return elastic_launch(config, entry)(*args)


__all__ = ["launch", "ChildFailedError"]
