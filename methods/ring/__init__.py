"""Ring attention (methods/ring/attention.py): each rank keeps its query block while K/V blocks go
around the ring. Layouts (methods/common/layout.py): `basic` (contiguous; causal work grows with the
rank), `zigzag` (chunks r and 2N-1-r: equal causal work everywhere) and `stripe` (token t on rank
t mod N). Communication and memory models: methods/ring/cost.py."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.distributed as dist

from methods import Method, register
from methods.common import layout as layouts
from methods.common.config import Problem
from methods.common.options import ShardedOptions
from methods.common.replicated import ReplicatedSequenceModel

from .attention import block_plan, ring_attention
from .cost import attention_act, attention_cost, comm_cost, memory_cost

RingLayout = Literal["basic", "zigzag", "stripe"]


@dataclass(frozen=True)
class RingOptions(ShardedOptions):
    layout: RingLayout = "zigzag"


def validate(p: Problem) -> None:
    layouts.check_divisible(p.options.layout, p.workload.seq_len, p.world_size)


@layouts.real_indices
def layout(p: Problem) -> list[torch.Tensor]:
    return layouts.make(p.options.layout, p.workload.seq_len, p.world_size)


def build(p: Problem, reference, device: torch.device) -> ReplicatedSequenceModel:
    group = dist.group.WORLD
    core = partial(ring_attention, group=group, layout=p.options.layout)
    positions = layout(p)[dist.get_rank()]
    return ReplicatedSequenceModel(
        reference, positions, p.workload.causal, core, group, p.torch_dtype, device, zero3=p.options.zero3
    )


register(
    Method(
        "ring",
        validate=validate,
        layout=layout,
        build=build,
        comm_cost=comm_cost,
        memory_cost=memory_cost,
        options=RingOptions,
    )
)

__all__ = ["RingLayout", "RingOptions", "attention_act", "attention_cost", "block_plan", "ring_attention"]
