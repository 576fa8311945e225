"""LASP-2's communication and memory models: one state all-gather each way per linear layer, the
all-gather CP models for the softmax layers of hybrid stacks."""

from __future__ import annotations

from methods.allgather_cp import attention_act as allgather_act
from methods.allgather_cp import attention_cost as allgather_cost
from methods.common.attention import acc_dtype
from methods.common.attention_call import AttentionCall
from methods.common.config import Problem
from methods.common.cost import CommCost
from methods.common.layers import is_softmax_layer, llama_block_shapes
from methods.common.memory import MemCost, llama_layer_act, positions_storage, replicated_memory
from methods.common.replicated import param_sync_cost


def state_bytes(p: Problem) -> int:
    """One rank's memory state: [B, H, D, D] in the accumulation dtype (per query head)."""
    m = p.model
    return p.workload.batch_size * m.heads * m.head_dim * m.head_dim * acc_dtype(p.torch_dtype).itemsize


def comm_cost(p: Problem) -> CommCost:
    m, n = p.model, p.world_size
    cost = CommCost()
    for i in range(m.layers):
        if is_softmax_layer(m, i):
            cost += allgather_cost(AttentionCall.of(p, i))
        else:  # one all-gather of the states forward, one of their gradients backward: no L in it
            cost.add("fwd", "all_gather", n * state_bytes(p), n).add(
                "bwd", "all_gather", n * state_bytes(p), n
            )
    return cost + param_sync_cost(p, llama_block_shapes(m), m.layers)


def state_attention_act(p: Problem) -> int:
    """A LASP layer's attention (LASP-2 and LASP-1): the autograd function keeps q and the kv-head-
    repeated k and v of the rank's chunk, and the incoming state [B, H, D, D] (accumulation dtype);
    its output is Wo's input. The local kernel runs inside the function, so it saves nothing."""
    m, w = p.model, p.workload
    chunk = w.batch_size * (w.seq_len // p.world_size) * m.heads * m.head_dim * p.elem_bytes
    return 4 * chunk + state_bytes(p)


def memory_cost(p: Problem) -> MemCost:
    """Linear layers as above, softmax layers (LASP-2H) as all-gather CP; contiguous positions are a
    view of the whole arange."""
    m, w, n = p.model, p.workload, p.world_size
    tokens_local = w.seq_len // n
    layers = [
        llama_layer_act(
            p,
            w.batch_size * tokens_local,
            tokens_local,
            allgather_act(AttentionCall.of(p, i)) if is_softmax_layer(m, i) else state_attention_act(p),
        )
        for i in range(m.layers)
    ]
    return replicated_memory(
        p, llama_block_shapes(m), w.batch_size * tokens_local, positions_storage(w.seq_len, n), layers
    )
