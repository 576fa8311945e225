"""LASP-1 (arXiv 2404.02882; methods/lasp1/attention.py): linear-attention sequence parallelism by
passing the memory state rank to rank, W-1 dependent hops each way (the chain LASP-2 replaces by one
all-gather). Causal only; LASP-2's contiguous layout. Models: methods/lasp1/cost.py."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from methods import Method, register
from methods.common.config import InvalidConfig, Problem
from methods.common.options import ShardedOptions
from methods.common.replicated import ReplicatedSequenceModel
from methods.lasp2 import layout
from methods.lasp2 import validate as lasp2_validate

from .attention import lasp1_attention
from .cost import comm_cost, memory_cost


@dataclass(frozen=True)
class Lasp1Options(ShardedOptions):
    """zero3 only."""


def validate(p: Problem) -> None:
    if not p.workload.causal:
        raise InvalidConfig(
            "lasp1 is causal only (its state chain runs forward); use lasp2 for bidirectional"
        )
    lasp2_validate(p)


def build(p: Problem, reference, device: torch.device) -> ReplicatedSequenceModel:
    group = dist.group.WORLD
    return ReplicatedSequenceModel(
        reference,
        layout(p)[dist.get_rank()],
        True,
        partial(lasp1_attention, group=group),
        group,
        p.torch_dtype,
        device,
        zero3=p.options.zero3,
    )


register(
    Method(
        "lasp1",
        validate=validate,
        layout=layout,
        build=build,
        comm_cost=comm_cost,
        memory_cost=memory_cost,
        model_kinds=("linear",),
        options=Lasp1Options,
    )
)
