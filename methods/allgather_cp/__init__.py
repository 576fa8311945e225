"""All-gather context parallelism (Llama 3; methods/allgather_cp/attention.py): K and V gathered, the
rank's queries attend the whole sequence. Layout zigzag (balanced causal work) or contiguous.
Communication and memory models: methods/allgather_cp/cost.py."""

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

from .attention import allgather_attention, query_pieces
from .cost import attention_act, attention_cost, comm_cost, memory_cost


@dataclass(frozen=True)
class AllGatherCPOptions(ShardedOptions):
    layout: Literal["zigzag", "contiguous"] = "zigzag"


def validate(p: Problem) -> None:
    layouts.check_divisible(p.options.layout, p.workload.seq_len, p.world_size)


@layouts.real_indices
def layout(p: Problem) -> list[torch.Tensor]:
    return layouts.make(p.options.layout, p.workload.seq_len, p.world_size)


def build(p: Problem, reference, device: torch.device) -> ReplicatedSequenceModel:
    group, indices = dist.group.WORLD, layout(p)
    core = partial(
        allgather_attention, group=group, indices=indices, chunks=layouts.CHUNKS_PER_RANK[p.options.layout]
    )
    return ReplicatedSequenceModel(
        reference,
        indices[dist.get_rank()],
        p.workload.causal,
        core,
        group,
        p.torch_dtype,
        device,
        zero3=p.options.zero3,
    )


register(
    Method(
        "allgather_cp",
        validate=validate,
        layout=layout,
        build=build,
        comm_cost=comm_cost,
        memory_cost=memory_cost,
        options=AllGatherCPOptions,
    )
)

__all__ = ["AllGatherCPOptions", "allgather_attention", "attention_act", "attention_cost", "query_pieces"]
