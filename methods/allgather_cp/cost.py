"""All-gather CP's communication and memory models: K/V gathered forward, dK/dV reduce-scattered."""

from __future__ import annotations

from methods.common.attention import acc_dtype
from methods.common.attention_call import AttentionCall
from methods.common.config import Problem
from methods.common.cost import CommCost
from methods.common.memory import (
    INDEX_BYTES,
    MemCost,
    softmax_core_act,
)
from methods.common.replicated import sequence_sharded_comm_cost, sequence_sharded_memory_cost


def attention_cost(call: AttentionCall) -> CommCost:
    """One call: all-gather of K and V together (output: the whole sequence's K and V) forward, and
    the reduce-scatter of their gradients (input: the same size, in the accumulation dtype) backward."""
    kv_full = 2 * call.batch * call.length * call.kv_heads * call.head_dim
    return (
        CommCost()
        .add("fwd", "all_gather", kv_full * call.elem, call.n)
        .add("bwd", "reduce_scatter", kv_full * acc_dtype(call.dtype).itemsize, call.n)
    )


def attention_act(call: AttentionCall) -> int:
    """One call saves the local q, the gathered K and V of the whole sequence (one buffer), the output
    (also Wo's input), the LSE and the int64 gather order of the L positions."""
    return (
        softmax_core_act(
            call.batch, call.tokens_local, call.heads, call.length, call.kv_heads, call.head_dim, call.dtype
        )
        + call.length * INDEX_BYTES
    )


def comm_cost(p: Problem) -> CommCost:
    return sequence_sharded_comm_cost(p, attention_cost)


def memory_cost(p: Problem) -> MemCost:
    return sequence_sharded_memory_cost(p, attention_act)
