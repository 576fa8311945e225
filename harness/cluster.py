"""Where a job's ranks run: one node (the default), or several nodes of a SLURM job step.

hydra-submitit-launcher runs each sweep point as one SLURM job whose step starts one task per node
(`srun`, tasks_per_node=1). Each of those tasks runs the whole Hydra job, so each must start only
its own node's share of the ranks and meet the other nodes at one rendezvous. `node_plan` reads
that from the step's environment and gives what torch's elastic launcher needs; with no SLURM step
(a laptop, `submitit_local`, a plain `sbatch` shell) it is the single-node plan the harness always
used.

Importing this module also registers the OmegaConf resolvers the `hydra/launcher=slurm_*` presets
use to size a job from the benchmark config."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import product
from typing import Any

from omegaconf import OmegaConf

from methods.common.config import InvalidConfig

DEFAULT_PORT_BASE = 20000
PORT_SPAN = 10000


class ClusterError(InvalidConfig):
    """The allocation cannot run the job as configured (the message says what to change). An
    InvalidConfig, so a job that checks its plan up front writes an `invalid` row instead of hanging."""


@dataclass(frozen=True)
class NodePlan:
    """This node's part of one launch."""

    nnodes: int
    nproc_per_node: int
    node_rank: int
    rdzv_endpoint: str
    run_id: str
    hosts: tuple[str, ...] = ()

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def primary(self) -> bool:
        """Node 0 holds global rank 0 (the static rendezvous numbers nodes by node_rank): the node
        whose job writes the result row."""
        return self.node_rank == 0

    @property
    def idle(self) -> bool:
        """Nothing to start on this node (emulate/dryrun play one rank, on node 0 only)."""
        return self.nproc_per_node == 0

    def launch_kwargs(self) -> dict[str, Any]:
        """The node-placement fields of torch's LaunchConfig."""
        if self.nnodes == 1:
            # c10d on localhost:0: the launcher picks a free port, so concurrent jobs never collide
            return {
                "min_nodes": 1,
                "max_nodes": 1,
                "nproc_per_node": self.nproc_per_node,
                "run_id": self.run_id,
                "rdzv_backend": "c10d",
                "rdzv_endpoint": "localhost:0",
            }
        # static rendezvous (torchrun's --node-rank): node k gets global ranks k*nproc .. (k+1)*nproc-1,
        # so SLURM's node 0 holds rank 0, and the TCPStore lives on node 0 at a port every node knows
        return {
            "min_nodes": self.nnodes,
            "max_nodes": self.nnodes,
            "nproc_per_node": self.nproc_per_node,
            "run_id": self.run_id,
            "rdzv_backend": "static",
            "rdzv_endpoint": self.rdzv_endpoint,
            "rdzv_configs": {"rank": self.node_rank},
        }


def local_plan(nproc: int, node_rank: int = 0) -> NodePlan:
    """`nproc` ranks on this machine only."""
    return NodePlan(
        nnodes=1,
        nproc_per_node=nproc,
        node_rank=node_rank,
        rdzv_endpoint="localhost:0",
        run_id=str(uuid.uuid4()),
    )


_BRACKET = re.compile(r"\[([^\[\]]*)\]")


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets: `a[1-2],b3` -> [`a[1-2]`, `b3`]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"nested brackets in node list {text!r}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in node list {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced '[' in node list {text!r}")
    parts.append(text[start:])
    return [p for p in parts if p]


def _expand_ranges(spec: str) -> list[str]:
    """`01-03,07` -> 01 02 03 07; a range keeps the zero padding of its first number."""
    out = []
    for item in spec.split(","):
        lo, sep, hi = item.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad range {item!r} in [{spec}]")
        if not sep:
            out.append(lo)
            continue
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r} in [{spec}]")
        width = len(lo) if lo.startswith("0") else 1
        out += [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
    return out


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list in order: `gpu[01-02,05],login1` -> gpu01 gpu02 gpu05 login1.
    Several bracket groups in one name expand left to right (`r[1-2]n[1-2]` -> r1n1 r1n2 r2n1 r2n2),
    as `scontrol show hostnames` does."""
    hosts = []
    for item in _split_top_level(nodelist.strip()):
        pieces = _BRACKET.split(item)  # text, range, text, range, ..., text
        if any(c in piece for piece in pieces[::2] for c in "[]"):
            raise ValueError(f"bad node list entry {item!r}")
        choices = [[piece] if i % 2 == 0 else _expand_ranges(piece) for i, piece in enumerate(pieces)]
        hosts += ["".join(parts) for parts in product(*choices)]
    return hosts


def hostnames(nodelist: str) -> list[str]:
    """The step's hosts: parsed here, or by `scontrol show hostnames` for a form the parser rejects
    (so an unusual site syntax still works wherever SLURM's own tool is on the PATH)."""
    try:
        return expand_nodelist(nodelist)
    except ValueError:
        if not shutil.which("scontrol"):
            raise
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
        )
        return out.stdout.split()


def _int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise ClusterError(f"{name}={value!r} is not a count") from None
    return None


def node_plan(world_size: int, one_process: bool = False, env: Mapping[str, str] | None = None) -> NodePlan:
    """This node's part of a job of `world_size` ranks, from the environment (`os.environ` unless
    `env` is given).

    Multi-node only inside a SLURM step spanning several nodes (SLURM_STEP_NUM_NODES > 1, which
    `srun`, and so submitit, sets): the ranks split evenly over the nodes, node k (SLURM_NODEID) gets
    global ranks k*n .. k*n+n-1, and the rendezvous is on the step's first host. A batch shell or an
    `salloc` shell also carries SLURM_NNODES but runs one process, which would wait for peers that
    never start, so those stay single-node. `one_process` (emulate, dryrun: one process plays one rank)
    puts that process on node 0 and leaves the others idle."""
    env = os.environ if env is None else env
    nnodes = _int(env, "SLURM_STEP_NUM_NODES") or 1
    node_rank = (_int(env, "SLURM_NODEID") or 0) if nnodes > 1 else 0
    if one_process:
        return local_plan(1 if node_rank == 0 else 0, node_rank)
    if world_size < 1:
        raise ClusterError(f"world_size must be at least 1, got {world_size}")
    if nnodes == 1:
        return local_plan(world_size)
    ntasks = _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
    if ntasks is not None and ntasks != nnodes:
        # every task would start its node's ranks again: one task per node starts them all
        raise ClusterError(
            f"the SLURM step has {ntasks} tasks on {nnodes} nodes; each node's task starts all of "
            f"its ranks, so set hydra.launcher.tasks_per_node=1"
        )
    if world_size % nnodes:
        raise ClusterError(
            f"world_size={world_size} does not split evenly over the step's {nnodes} nodes; "
            f"set hydra.launcher.nodes to a divisor of world_size"
        )
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise ClusterError(
            "SLURM_STEP_NUM_NODES > 1 but no SLURM_STEP_NODELIST / SLURM_JOB_NODELIST to find node 0"
        )
    try:
        hosts = tuple(hostnames(nodelist))
    except (ValueError, OSError, subprocess.CalledProcessError) as e:
        raise ClusterError(f"cannot read the SLURM node list {nodelist!r}: {e}") from e
    if len(hosts) < nnodes or not 0 <= node_rank < nnodes:
        raise ClusterError(
            f"SLURM node list {nodelist!r} ({len(hosts)} hosts) and SLURM_NODEID={node_rank} "
            f"do not describe a {nnodes}-node step"
        )
    job = env.get("SLURM_JOB_ID", "0")
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID", "0"))
    # every node derives the same port and run id from the job, without talking to the others first;
    # MASTER_PORT overrides the port where a site reserves a range
    port = _int(env, "MASTER_PORT") or DEFAULT_PORT_BASE + (int(job) % PORT_SPAN if job.isdigit() else 0)
    run_id = f"spbench-{job}-{step}-{env.get('SLURM_RESTART_COUNT', '0')}"
    return NodePlan(
        nnodes=nnodes,
        nproc_per_node=world_size // nnodes,
        node_rank=node_rank,
        rdzv_endpoint=f"{hosts[0]}:{port}",
        run_id=run_id,
        hosts=hosts[:nnodes],
    )


def primary_node(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is node 0 of its job (always, outside a multi-node SLURM step): the one
    whose job writes the result row."""
    return node_plan(1, one_process=True, env=env).primary


def _nodes_for(world_size: int, gpus_per_node: int | None) -> int:
    """Fewest nodes holding `world_size` ranks, one GPU each (presets: hydra.launcher.nodes)."""
    return max(1, math.ceil(int(world_size) / int(gpus_per_node))) if gpus_per_node else 1


def _minutes_for(timeout_s: float, margin_min: int = 10) -> int:
    """SLURM time limit for a job whose ranks the watchdog ends after `timeout_s`: the start-up
    (Python, torch, Hydra, rendezvous) and the row must fit too, so a margin on top."""
    return math.ceil(float(timeout_s) / 60) + int(margin_min)


for _name, _fn in (("spbench_nodes", _nodes_for), ("spbench_minutes", _minutes_for)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


__all__ = [
    "ClusterError",
    "NodePlan",
    "expand_nodelist",
    "hostnames",
    "local_plan",
    "node_plan",
    "primary_node",
]
