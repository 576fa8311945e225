"""Odysseus (feifeibear/Odysseus-Transformer): attention exactly as TP-SP (gather the sequence, split
heads, reduce-scatter the output, re-gather in backward); the MLP runs whole on the rank's own tokens
(no activation traffic) with its weights ZeRO-3 sharded through FSDP2: gathered for forward, gathered
again for backward, gradients reduce-scattered with SUM semantics. Norm weights stay replicated
(one SUM all-reduce of their gradients)."""
from __future__ import annotations


import torch
import torch.distributed as dist
from torch import nn

from methods import Method, register
from methods.common import layout as layouts
from methods.common.config import Problem
from methods.common.cost import CommCost
from methods.common.layers import copy_to
from methods.common.zero3 import full_grad, shard_, unit_cost
from methods.common.memory import MemCost, swiglu_act
from methods.tp_sp import TPSPModel, attention_cost, check_heads, norm_sync_cost, tp_memory


class ZeRO3MLP(nn.Module):
    """The reference SwiGLU on local tokens, one FSDP2 unit over the SP group."""

    def __init__(self, ref_mlp: nn.Module, group: dist.ProcessGroup, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.mlp = shard_(copy_to(ref_mlp, device, dtype), group, device)

    def forward(self, x_local: torch.Tensor) -> torch.Tensor:
        return self.mlp(x_local)

    def full_grads(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{name}": full_grad(p) for name, p in self.mlp.named_parameters()}


def validate(p: Problem) -> None:
    check_heads(p)


@layouts.real_indices
def layout(p: Problem) -> list[torch.Tensor]:
    return layouts.make("contiguous", p.workload.seq_len, p.world_size)


def build(p: Problem, reference: nn.Module, device: torch.device) -> TPSPModel:
    return TPSPModel(reference, p.workload.causal, dist.group.WORLD, p.torch_dtype, device, make_mlp=ZeRO3MLP)


def mlp_shapes(p: Problem) -> list[tuple[int, int]]:
    d, i = p.model.hidden, p.model.ffn_hidden
    return [(i, d), (i, d), (d, i)]


def comm_cost(p: Problem) -> CommCost:
    cost = CommCost()
    for _ in range(p.model.layers):
        cost += attention_cost(p)  # 3 AG + 2 RS of one hidden state
    return cost + unit_cost(p, mlp_shapes(p), units=p.model.layers) + norm_sync_cost(p)


def memory_cost(p: Problem) -> MemCost:
    """TP-SP attention; the MLP keeps its FSDP2 shards (padded on dim 0) and saves the SwiGLU
    activations of the rank's own tokens (the gathered weights are freed after each use)."""
    n = p.world_size
    mlp_params = sum(-(-rows // n) * cols for rows, cols in mlp_shapes(p))
    tokens = p.workload.batch_size * p.workload.seq_len // n
    return tp_memory(p, mlp_params, swiglu_act(tokens, p.model.ffn_hidden, p.elem_bytes))


register(Method("odysseus", validate=validate, layout=layout, build=build, comm_cost=comm_cost, memory_cost=memory_cost))
