"""LASP-1's communication model (one state hop each way per linear layer) and memory model (what
LASP-2 keeps: q, k, v of the chunk and the incoming state per layer)."""

from __future__ import annotations

from methods.common.config import Problem
from methods.common.cost import CommCost
from methods.common.layers import llama_block_shapes
from methods.common.replicated import param_sync_cost
from methods.lasp2 import memory_cost, state_bytes


def comm_cost(p: Problem) -> CommCost:
    """Per linear layer the busiest rank sends one state forward and one state gradient backward."""
    cost = CommCost()
    if p.world_size > 1:
        cost.add("fwd", "send", state_bytes(p), p.world_size, times=p.model.layers)
        cost.add("bwd", "send", state_bytes(p), p.world_size, times=p.model.layers)
    return cost + param_sync_cost(p, llama_block_shapes(p.model), p.model.layers)


__all__ = ["comm_cost", "memory_cost"]
