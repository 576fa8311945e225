"""Ulysses' communication and memory models: four all-to-alls each way per attention call."""

from __future__ import annotations

from methods.common.attention_call import AttentionCall
from methods.common.config import Problem
from methods.common.cost import CommCost
from methods.common.memory import (
    MemCost,
    linear_kernel_act,
    softmax_core_act,
)
from methods.common.replicated import sequence_sharded_comm_cost, sequence_sharded_memory_cost

from .attention import kv_heads_exchanged


def attention_cost(call: AttentionCall) -> CommCost:
    """One Ulysses attention call: forward a2a of q, k, v and out; backward a2a of dout, dq, dk, dv.
    Each all-to-all's input is a [B, L/N, heads, D] shard (the output exchange moves as many bytes)."""
    n, shard = call.n, call.batch * call.tokens_local * call.head_dim * call.elem
    q_bytes, kv_bytes = shard * call.heads, shard * kv_heads_exchanged(call.kv_heads, n)
    cost = CommCost()
    for phase in ("fwd", "bwd"):
        cost.add(phase, "all_to_all", q_bytes, n, times=2)  # q and out (fwd) / dout and dq (bwd)
        cost.add(phase, "all_to_all", kv_bytes, n, times=2)  # k and v / dk and dv
    return cost


def attention_act(call: AttentionCall) -> int:
    """One Ulysses attention over the whole sequence on `n` ranks: what the local kernel keeps for
    this rank's head group over the whole sequence, and Wo's input (the output exchanged back to the
    rank's L/N tokens, all heads). The softmax kernel's saved output is Wo's input itself on one
    rank, where nothing is exchanged; the linear kernel saves no output."""
    n, length = call.n, call.length
    heads, kv = call.heads // n, kv_heads_exchanged(call.kv_heads, n) // n
    wo_input = call.batch * call.tokens_local * call.heads * call.head_dim * call.elem
    if not call.softmax:
        return wo_input + linear_kernel_act(
            call.batch, length, heads, call.head_dim, call.dtype, call.causal, call.decay
        )
    kernel = softmax_core_act(call.batch, length, heads, length, kv, call.head_dim, call.dtype)
    return kernel + (wo_input if n > 1 else 0)


def comm_cost(p: Problem) -> CommCost:
    return sequence_sharded_comm_cost(p, attention_cost)


def memory_cost(p: Problem) -> MemCost:
    return sequence_sharded_memory_cost(p, attention_act)
