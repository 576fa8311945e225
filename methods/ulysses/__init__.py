"""DeepSpeed-Ulysses (methods/ulysses/attention.py): all-to-all from a sequence shard to a head group
over the whole sequence and back. Layout: contiguous sequence shards. Communication and memory
models: methods/ulysses/cost.py."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.distributed as dist

from methods import Method, register
from methods.common import layout as layouts
from methods.common.attention_call import check_heads
from methods.common.config import Problem
from methods.common.options import ShardedOptions
from methods.common.replicated import ReplicatedSequenceModel

from .attention import kv_heads_exchanged, ulysses_attention
from .cost import attention_act, attention_cost, comm_cost, memory_cost


@dataclass(frozen=True)
class UlyssesOptions(ShardedOptions):
    # video workload: Ulysses on the temporal attention only (the DSP paper's baseline), or on the
    # spatial attention too (as Open-Sora v1.0 applied it)
    video_attention: Literal["temporal", "all"] = "temporal"


def validate(p: Problem) -> None:
    check_heads(p.model.heads, p.model.kv_heads, p.world_size, "Ulysses degree")
    layouts.check_divisible("contiguous", p.workload.seq_len, p.world_size)


@layouts.real_indices
def layout(p: Problem) -> list[torch.Tensor]:
    return layouts.make("contiguous", p.workload.seq_len, p.world_size)


def build(p: Problem, reference, device: torch.device) -> ReplicatedSequenceModel:
    group = dist.group.WORLD
    core = partial(ulysses_attention, group=group)
    positions = layout(p)[dist.get_rank()]
    return ReplicatedSequenceModel(
        reference, positions, p.workload.causal, core, group, p.torch_dtype, device, zero3=p.options.zero3
    )


register(
    Method(
        "ulysses",
        validate=validate,
        layout=layout,
        build=build,
        comm_cost=comm_cost,
        memory_cost=memory_cost,
        model_kinds=("llama", "linear", "hybrid"),
        options=UlyssesOptions,
    )
)

__all__ = ["UlyssesOptions", "attention_act", "attention_cost", "kv_heads_exchanged", "ulysses_attention"]
