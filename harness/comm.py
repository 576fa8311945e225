"""Counted communication: a TorchDispatchMode that sees every collective a step issues.

Hand-written collectives, FSDP2's, DTensor's (after they desugar) and ring send/recv all reach the
dispatcher as `c10d.*` or `_c10d_functional.*` ops, so one mode records them all, forward and backward
(autograd carries the mode into its threads). The harness sets `phase` around forward and backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from methods.common.cost import CommCost

# op name -> (kind, index of the tensor (list) argument whose bytes are the "full" bytes, group arg index)
_C10D = {
    "_allgather_base_": ("all_gather", 0, 2),
    "allgather_": ("all_gather", 0, 2),
    "allgather_into_tensor_coalesced_": ("all_gather", 0, 2),
    "_reduce_scatter_base_": ("reduce_scatter", 1, 2),
    "reduce_scatter_": ("reduce_scatter", 1, 2),
    "reduce_scatter_tensor_coalesced_": ("reduce_scatter", 1, 2),
    "allreduce_": ("all_reduce", 0, 1),
    "allreduce_coalesced_": ("all_reduce", 0, 1),
    "alltoall_base_": ("all_to_all", 1, 2),
    "alltoall_": ("all_to_all", 1, 2),
    "send": ("send", 0, 1),
    "recv_": ("recv", 0, 1),
    "recv_any_source_": ("recv", 0, 1),
    "broadcast_": ("broadcast", 0, 1),
}
# functional ops: (kind, how to find the group size)
_FUNCTIONAL = {
    "all_gather_into_tensor": "all_gather",
    "all_gather_into_tensor_coalesced": "all_gather",
    "reduce_scatter_tensor": "reduce_scatter",
    "reduce_scatter_tensor_coalesced": "reduce_scatter",
    "all_reduce": "all_reduce",
    "all_reduce_coalesced": "all_reduce",
    "all_to_all_single": "all_to_all",
    "broadcast": "broadcast",
}


def _nbytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(t) for t in x)
    return 0


def _group(pg) -> dist.ProcessGroup:
    if isinstance(pg, str):
        return dist.distributed_c10d._resolve_process_group(dist.distributed_c10d.GroupName(pg))
    if isinstance(pg, torch.ScriptObject):
        return dist.ProcessGroup.unbox(pg)
    return pg


@dataclass(frozen=True)
class Record:
    phase: str
    kind: str
    op: str
    group_size: int
    full_bytes: int
    ranks: tuple[int, ...]  # the group's global ranks: where its links are (intra- or inter-node)


class CommCounter(TorchDispatchMode):
    """`with CommCounter() as c: c.phase = "fwd"; ...` then `c.cost()` gives a CommCost."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "fwd"
        self.records: list[Record] = []
        self._ranks: dict[str, tuple[int, ...]] = {}  # group name -> its global ranks

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ns, name = func.namespace, func._opname
        if ns == "c10d" and name in _C10D:
            kind, tensor_arg, group_arg = _C10D[name]
            self._record(kind, name, _group(args[group_arg]), _nbytes(args[tensor_arg]))
        elif ns == "_c10d_functional" and name in _FUNCTIONAL:
            self._record_functional(_FUNCTIONAL[name], name, args)
        return func(*args, **kwargs)

    def _record_functional(self, kind: str, name: str, args) -> None:
        group = _group(args[-1])
        full = _nbytes(args[0])
        if kind == "all_gather":
            full *= group.size()  # the op's input is the local shard; the convention counts the output
        self._record(kind, name, group, full)

    def _record(self, kind: str, op: str, group: dist.ProcessGroup, full: int) -> None:
        ranks = self._ranks.get(group.group_name)
        if ranks is None:
            ranks = self._ranks[group.group_name] = tuple(dist.get_process_group_ranks(group))
        self.records.append(Record(self.phase, kind, op, group.size(), full, ranks))

    def cost(self) -> CommCost:
        cost = CommCost()
        for r in self.records:
            if r.kind != "recv":
                cost.add(r.phase, r.kind, r.full_bytes, r.group_size)
        return cost

    def calls(self) -> dict[str, dict[str, int]]:
        """Number of collectives per phase and kind (recv included), for tests and reports."""
        out: dict[str, dict[str, int]] = {"fwd": {}, "bwd": {}}
        for r in self.records:
            out[r.phase][r.kind] = out[r.phase].get(r.kind, 0) + 1
        return out
