"""Odysseus' communication and memory models: TP-SP's attention, the MLP's FSDP2 unit traffic."""

from __future__ import annotations

from methods.common.attention_call import AttentionCall
from methods.common.config import Problem
from methods.common.cost import CommCost
from methods.common.memory import MemCost, swiglu_act
from methods.common.zero3 import unit_cost
from methods.tp_sp import attention_cost, norm_sync_cost, tp_memory


def mlp_shapes(p: Problem) -> list[tuple[int, int]]:
    d, i = p.model.hidden, p.model.ffn_hidden
    return [(i, d), (i, d), (d, i)]


def comm_cost(p: Problem) -> CommCost:
    cost = CommCost()
    for _ in range(p.model.layers):
        cost += attention_cost(AttentionCall.of(p))  # 3 AG + 2 RS of one hidden state
    return cost + unit_cost(p, mlp_shapes(p), units=p.model.layers) + norm_sync_cost(p)


def memory_cost(p: Problem) -> MemCost:
    """TP-SP attention; the MLP keeps its FSDP2 shards (padded on dim 0) and saves the SwiGLU
    activations of the rank's own tokens (the gathered weights are freed after each use)."""
    n = p.world_size
    mlp_params = sum(-(-rows // n) * cols for rows, cols in mlp_shapes(p))
    tokens = p.workload.batch_size * p.workload.seq_len // n
    return tp_memory(p, mlp_params, swiglu_act(tokens, p.model.ffn_hidden, p.elem_bytes))
