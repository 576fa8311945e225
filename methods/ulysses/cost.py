"""Ulysses' communication and memory models: four all-to-alls each way per attention call."""

from __future__ import annotations

from methods.common.attention_call import AttentionCall
from methods.common.config import Problem
from methods.common.cost import CommCost
from methods.common.layers import llama_block_shapes
from methods.common.memory import (
    MemCost,
    linear_kernel_act,
    llama_layer_act,
    positions_storage,
    replicated_memory,
    softmax_core_act,
)
from methods.common.replicated import param_sync_cost

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
    m = p.model
    cost = CommCost()
    for _ in range(m.layers):
        cost += attention_cost(AttentionCall.of(p))
    return cost + param_sync_cost(p, llama_block_shapes(m), m.layers)


def memory_cost(p: Problem) -> MemCost:
    """Replicated weights (or ZeRO-3 shards); positions are a view of the whole arange (L int64)."""
    m, w, n = p.model, p.workload, p.world_size
    tokens = w.batch_size * w.seq_len // n
    layers = [
        llama_layer_act(p, tokens, w.seq_len // n, attention_act(AttentionCall.of(p, i)))
        for i in range(m.layers)
    ]
    return replicated_memory(p, llama_block_shapes(m), tokens, positions_storage(w.seq_len, n), layers)
