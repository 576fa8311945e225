"""Megatron tensor + sequence parallelism (arXiv 2205.05198; the block in methods/tp_sp/model.py):
column-parallel linears gather the sequence, row-parallel ones reduce-scatter it. Layout: contiguous
sequence shards. Communication and memory models: methods/tp_sp/cost.py."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from methods import Method, register
from methods.common import layout as layouts
from methods.common.attention_call import check_heads
from methods.common.config import InvalidConfig, Problem

from .cost import attention_act, attention_cost, comm_cost, memory_cost, norm_sync_cost, tp_memory
from .model import TPSPModel, column_linear_sp


def check_tp(p: Problem) -> None:
    """Whole query and kv heads per rank (column-parallel linears) and equal sequence shards."""
    check_heads(p.model.heads, p.model.kv_heads, p.world_size, "TP degree", kv_repeat=False)
    layouts.check_divisible("contiguous", p.workload.seq_len, p.world_size)


def validate(p: Problem) -> None:
    check_tp(p)
    if p.model.ffn_hidden % p.world_size:
        raise InvalidConfig(
            f"ffn_hidden={p.model.ffn_hidden} is not divisible by the TP degree {p.world_size}: "
            "column-parallel linears give each rank an equal slice"
        )


@layouts.real_indices
def layout(p: Problem) -> list[torch.Tensor]:
    return layouts.make("contiguous", p.workload.seq_len, p.world_size)


def build(p: Problem, reference: nn.Module, device: torch.device) -> TPSPModel:
    return TPSPModel(reference, p.workload.causal, dist.group.WORLD, p.torch_dtype, device)


register(
    Method(
        "tp_sp",
        validate=validate,
        layout=layout,
        build=build,
        comm_cost=comm_cost,
        memory_cost=memory_cost,
        model_kinds=("llama", "linear", "hybrid"),
    )
)

__all__ = [
    "TPSPModel",
    "attention_act",
    "attention_cost",
    "check_tp",
    "column_linear_sp",
    "norm_sync_cost",
    "tp_memory",
]
