"""TP-SP's communication model (hidden-state all-gathers and reduce-scatters, the norm-gradient
all-reduce) and memory model (shared with Odysseus: `tp_memory`)."""

from __future__ import annotations

from methods.common.attention_call import AttentionCall
from methods.common.config import Problem
from methods.common.cost import CommCost
from methods.common.memory import (
    MemCost,
    decay_buffers,
    linear_kernel_act,
    llama_layer_act,
    residual_act,
    softmax_core_act,
    swiglu_act,
)


def attention_cost(call: AttentionCall) -> CommCost:
    """Per layer: g before QKV (AG fwd, RS bwd), g-bar after Wo (RS fwd, AG bwd), the re-gather (AG
    bwd), each of S, one full [B, L, d] hidden state (the unit of every TP-SP collective)."""
    s, n = call.batch * call.length * call.hidden * call.elem, call.n
    return (
        CommCost()
        .add("fwd", "all_gather", s, n)
        .add("fwd", "reduce_scatter", s, n)
        .add("bwd", "all_gather", s, n, times=2)
        .add("bwd", "reduce_scatter", s, n)
    )


def norm_sync_cost(p: Problem) -> CommCost:
    """One SUM all-reduce of the two norm weights' gradients of every layer."""
    return CommCost().add(
        "bwd", "all_reduce", 2 * p.model.layers * p.model.hidden * p.elem_bytes, p.world_size
    )


def comm_cost(p: Problem) -> CommCost:
    cost = CommCost()
    for _ in range(p.model.layers):
        call = AttentionCall.of(p)
        cost += attention_cost(call) + attention_cost(call)  # the MLP's column/row pair moves the same
    return cost + norm_sync_cost(p)


def attention_act(call: AttentionCall) -> int:
    """Per layer on this rank's heads over the whole sequence. Softmax: the packed QKV output (v, a
    view of it, keeps it whole), the rotated q and k, the kernel's output (also Wo's input) and LSE.
    Linear: what the linear kernel keeps (it copies q, k, v) and its output, Wo's input. The column
    linear keeps only the local normed shard, counted with the norm."""
    B, L, D, e, n = call.batch, call.length, call.head_dim, call.elem, call.n
    heads, kv_heads = call.heads // n, call.kv_heads // n
    if not call.softmax:
        return B * L * heads * D * e + linear_kernel_act(B, L, heads, D, call.dtype, call.causal, call.decay)
    qkv = B * L * (heads + 2 * kv_heads) * D * e
    v = B * L * kv_heads * D * e
    return qkv - v + softmax_core_act(B, L, heads, L, kv_heads, D, call.dtype)


def tp_layer_act(p: Problem, mlp: int, index: int) -> int:
    """Layer `index` of TP-SP: norms on the sequence shard, RoPE tables over the whole sequence, the
    attention above and the method's MLP."""
    w = p.workload
    return llama_layer_act(
        p, w.batch_size * w.seq_len // p.world_size, w.seq_len, attention_act(AttentionCall.of(p, index)), mlp
    )


def tp_memory(p: Problem, mlp_params: int, mlp_act: int) -> MemCost:
    """TP-SP's shared shape (Odysseus too): replicated norms, the rank's packed attention weights,
    an MLP of `mlp_params` elements per layer on this rank saving `mlp_act` bytes."""
    m, w, n, e = p.model, p.workload, p.world_size, p.elem_bytes
    attention = (m.heads + 2 * m.kv_heads) // n * m.head_dim * m.hidden + m.hidden * m.heads // n * m.head_dim
    weights = m.layers * (2 * m.hidden + attention + mlp_params) * e
    tokens = w.batch_size * w.seq_len // n
    stream = tokens * m.hidden * e
    act = sum(tp_layer_act(p, mlp_act, i) for i in range(m.layers)) + residual_act(
        tokens, m.hidden, m.layers, p.torch_dtype
    )
    return MemCost(
        param=weights + decay_buffers(p, m.heads // n), input=2 * stream, act=act, grad=weights + stream
    )


def memory_cost(p: Problem) -> MemCost:
    """Column-parallel SwiGLU: the packed w1/w3 output (gate and up are views of it), silu's output
    and the product, each over the whole sequence for ffn/N channels."""
    m, w, n = p.model, p.workload, p.world_size
    mlp_params = 3 * m.ffn_hidden // n * m.hidden
    return tp_memory(p, mlp_params, swiglu_act(w.batch_size * w.seq_len, m.ffn_hidden // n, p.elem_bytes))
