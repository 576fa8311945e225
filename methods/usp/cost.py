"""USP's communication and memory models: Ulysses' all-to-alls over a ring segment inside a ring of
head groups."""

from __future__ import annotations

from methods.common.attention_call import AttentionCall
from methods.common.config import Problem
from methods.common.cost import CommCost
from methods.common.layers import llama_block_shapes
from methods.common.memory import MemCost, llama_layer_act, positions_storage, replicated_memory
from methods.common.replicated import param_sync_cost
from methods.ring import attention_act as ring_act
from methods.ring import attention_cost as ring_cost
from methods.ulysses import attention_cost as ulysses_cost
from methods.ulysses import kv_heads_exchanged

from .grid import degrees


def ulysses_call(p: Problem) -> AttentionCall:
    """The all-to-all over U ranks rebuilds a ring segment of L/R tokens."""
    ud, rd = degrees(p)
    return AttentionCall.of(p, length=p.workload.seq_len // rd, n=ud)


def ring_call(p: Problem) -> AttentionCall:
    """The ring over R ranks on a head group: H/U query heads and the exchanged kv heads / U."""
    m = p.model
    ud, rd = degrees(p)
    return AttentionCall.of(p, heads=m.heads // ud, kv_heads=kv_heads_exchanged(m.kv_heads, ud) // ud, n=rd)


def comm_cost(p: Problem) -> CommCost:
    m = p.model
    cost = CommCost()
    for _ in range(m.layers):
        cost += ulysses_cost(ulysses_call(p)) + ring_cost(ring_call(p))
    return cost + param_sync_cost(p, llama_block_shapes(m), m.layers)


def memory_cost(p: Problem) -> MemCost:
    """The ring attention's saved q, k, v, output and LSE on a ring segment (L/R tokens) for a head
    group (H/U heads), plus Wo's input exchanged back to the rank's L/N tokens when U > 1, and the
    rank's own L/N positions."""
    m, w, n = p.model, p.workload, p.world_size
    ud, _ = degrees(p)
    tokens_local = w.seq_len // n
    attention = ring_act(ring_call(p))
    if ud > 1:
        attention += w.batch_size * tokens_local * m.heads * m.head_dim * p.elem_bytes
    layer = llama_layer_act(p, w.batch_size * tokens_local, tokens_local, attention)
    return replicated_memory(
        p,
        llama_block_shapes(m),
        w.batch_size * tokens_local,
        positions_storage(w.seq_len, n),
        [layer] * m.layers,
    )
