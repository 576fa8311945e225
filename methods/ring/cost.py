"""Ring's communication and memory models: K/V blocks around the ring, dK/dV accumulators home."""
from __future__ import annotations

import torch

from methods.common.attention import acc_dtype
from methods.common.config import Problem
from methods.common.cost import CommCost
from methods.common.layers import llama_block_shapes
from methods.common.memory import MemCost, llama_layer_act, positions_storage, replicated_memory, softmax_core_act
from methods.common.replicated import param_sync_cost

def attention_cost(batch: int, tokens_local: int, kv_heads: int, head_dim: int, n: int, dtype: torch.dtype) -> CommCost:
    """One ring attention call: K and V make N-1 hops forward and again backward (input dtype); the
    dK and dV accumulators make N hops backward (accumulation dtype)."""
    kv_block = batch * tokens_local * kv_heads * head_dim
    elem, acc_elem = dtype.itemsize, acc_dtype(dtype).itemsize
    cost = CommCost()
    if n > 1:
        cost.add("fwd", "send", kv_block * elem, n, times=2 * (n - 1))
        cost.add("bwd", "send", kv_block * elem, n, times=2 * (n - 1))
        cost.add("bwd", "send", kv_block * acc_elem, n, times=2 * n)
    return cost


def comm_cost(p: Problem) -> CommCost:
    m, w, n = p.model, p.workload, p.world_size
    cost = CommCost()
    for _ in range(m.layers):
        cost += attention_cost(w.batch_size, w.seq_len // n, m.kv_heads, m.head_dim, n, p.torch_dtype)
    return cost + param_sync_cost(p, llama_block_shapes(m), m.layers)


# ---- memory model ----------------------------------------------------------------------------------

def attention_act(p: Problem, batch: int, tokens_local: int, kv_heads: int) -> int:
    """One ring attention call saves its own q, k, v blocks, the output (Wo's input too: it is
    already [B, L/N, H*D]) and the LSE; the blocks in flight are freed before the forward returns."""
    m = p.model
    return softmax_core_act(batch, tokens_local, m.heads, tokens_local, kv_heads, m.head_dim, p.torch_dtype)


def memory_cost(p: Problem) -> MemCost:
    m, w, n = p.model, p.workload, p.world_size
    tokens_local = w.seq_len // n
    layer = llama_layer_act(p, w.batch_size * tokens_local, tokens_local,
                            attention_act(p, w.batch_size, tokens_local, m.kv_heads))
    return replicated_memory(p, llama_block_shapes(m), w.batch_size * tokens_local,
                             positions_storage(w.seq_len, n), [layer] * m.layers)
