"""Ring's communication and memory models: K/V blocks around the ring, dK/dV accumulators home."""

from __future__ import annotations

from methods.common.attention import acc_dtype
from methods.common.attention_call import AttentionCall
from methods.common.config import Problem
from methods.common.cost import CommCost
from methods.common.memory import (
    MemCost,
    softmax_core_act,
)
from methods.common.replicated import sequence_sharded_comm_cost, sequence_sharded_memory_cost


def attention_cost(call: AttentionCall) -> CommCost:
    """One ring attention call: K and V make N-1 hops forward and again backward (input dtype); the
    dK and dV accumulators make N hops backward (accumulation dtype)."""
    n = call.n
    kv_block = call.batch * call.tokens_local * call.kv_heads * call.head_dim
    cost = CommCost()
    cost.add("fwd", "send", kv_block * call.elem, n, times=2 * (n - 1))
    cost.add("bwd", "send", kv_block * call.elem, n, times=2 * (n - 1))
    cost.add("bwd", "send", kv_block * acc_dtype(call.dtype).itemsize, n, times=2 * n)
    return cost


def attention_act(call: AttentionCall) -> int:
    """One ring attention call saves its own q, k, v blocks, the output (Wo's input too: it is
    already [B, L/N, H*D]) and the LSE; the blocks in flight are freed before the forward returns."""
    t = call.tokens_local
    return softmax_core_act(call.batch, t, call.heads, t, call.kv_heads, call.head_dim, call.dtype)


def comm_cost(p: Problem) -> CommCost:
    return sequence_sharded_comm_cost(p, attention_cost)


def memory_cost(p: Problem) -> MemCost:
    return sequence_sharded_memory_cost(p, attention_act)
