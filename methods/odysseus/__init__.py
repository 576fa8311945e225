"""Odysseus (feifeibear/Odysseus-Transformer): attention exactly as TP-SP (gather the sequence, split
heads, reduce-scatter the output, re-gather in backward); the MLP (methods/odysseus/mlp.py) runs
whole on the rank's own tokens (no activation traffic) with its weights ZeRO-3 sharded through
FSDP2: gathered for forward, gathered again for backward, gradients reduce-scattered with SUM
semantics. Norm weights stay replicated (one SUM all-reduce of their gradients). Models:
methods/odysseus/cost.py."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from methods import Method, register
from methods.common import layout as layouts
from methods.common.config import Problem
from methods.tp_sp import TPSPModel, check_tp

from .cost import comm_cost, memory_cost, mlp_shapes
from .mlp import ZeRO3MLP


def validate(p: Problem) -> None:
    check_tp(p)


@layouts.real_indices
def layout(p: Problem) -> list[torch.Tensor]:
    return layouts.make("contiguous", p.workload.seq_len, p.world_size)


def build(p: Problem, reference: nn.Module, device: torch.device) -> TPSPModel:
    return TPSPModel(reference, p.workload.causal, dist.group.WORLD, p.torch_dtype, device, make_mlp=ZeRO3MLP)


register(
    Method(
        "odysseus",
        validate=validate,
        layout=layout,
        build=build,
        comm_cost=comm_cost,
        memory_cost=memory_cost,
    )
)

__all__ = ["ZeRO3MLP", "mlp_shapes"]
