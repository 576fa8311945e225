"""LASP-2 (arXiv 2502.07563; methods/lasp2/attention.py): linear attention with one all-gather of
the per-rank memory states forward and one of their gradients backward; LASP-2H runs the softmax
layers of hybrid stacks with all-gather CP on the same contiguous layout. Communication and memory
models: methods/lasp2/cost.py."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from methods import Method, register
from methods.allgather_cp import allgather_attention
from methods.common import layout as layouts
from methods.common.config import InvalidConfig, Problem
from methods.common.options import ShardedOptions
from methods.common.replicated import ReplicatedSequenceModel

from .attention import chunk_factors, lasp2_attention, state_decay
from .cost import comm_cost, memory_cost, state_attention_act, state_bytes


@dataclass(frozen=True)
class Lasp2Options(ShardedOptions):
    """zero3 only."""


def validate(p: Problem) -> None:
    if p.model.extra.get("decay") and not p.workload.causal:
        raise InvalidConfig(
            "decay is defined for causal linear attention only "
            "(set workload.causal=true or model.decay=false)"
        )
    layouts.check_divisible("contiguous", p.workload.seq_len, p.world_size)


@layouts.real_indices
def layout(p: Problem) -> list[torch.Tensor]:
    return layouts.make("contiguous", p.workload.seq_len, p.world_size)


def build(p: Problem, reference, device: torch.device) -> ReplicatedSequenceModel:
    group, indices = dist.group.WORLD, layout(p)
    softmax_core = partial(allgather_attention, group=group, indices=indices, chunks=1)
    core = partial(lasp2_attention, group=group, softmax_core=softmax_core)
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
        "lasp2",
        validate=validate,
        layout=layout,
        build=build,
        comm_cost=comm_cost,
        memory_cost=memory_cost,
        model_kinds=("linear", "hybrid"),
        options=Lasp2Options,
    )
)

__all__ = [
    "Lasp2Options",
    "chunk_factors",
    "lasp2_attention",
    "state_attention_act",
    "state_bytes",
    "state_decay",
]
