"""The embedded baselines' communication and memory models on the video block."""

from __future__ import annotations

import math

from methods.common.attention_call import AttentionCall
from methods.common.config import ModelConfig, Problem
from methods.common.cost import CommCost
from methods.common.memory import (
    MemCost,
    gelu_mlp_act,
    qk_norm_act,
    softmax_core_act,
    video_block_act,
    video_memory,
    video_rope_positions,
)
from methods.common.replicated import param_sync_cost
from methods.common.video import video_block_shapes, video_layer_shapes, video_options
from methods.ring import attention_act as ring_act
from methods.ring import attention_cost as ring_cost
from methods.ulysses import attention_act as ulysses_act
from methods.ulysses import attention_cost as ulysses_cost

from ..cost import replicated_weights


def temporal_call(p: Problem) -> AttentionCall:
    """The temporal attention over the world: B*S sequences of T frames."""
    m, w = p.model, p.workload
    return AttentionCall(
        w.batch_size * w.spatial,
        w.frames,
        m.heads,
        m.kv_heads,
        m.head_dim,
        p.world_size,
        p.torch_dtype,
        m.hidden,
        causal=False,
    )


def frame_shard_memory(p: Problem, spatial_attention: int, temporal_attention: int) -> MemCost:
    """FrameShardModel on every rank ([B, T/N, S, C], replicated weights), given what one spatial and
    one temporal attention keep. Each block boundary leaves one [B, T/N, S, C] storage to the next
    norm (the previous output, or the copy the transposing reshape makes), the first block's being
    x itself; with the output that is two per layer. The temporal block ropes its T/N frames."""
    m, w, n = p.model, p.workload, p.world_size
    frames_local = w.frames // n
    tokens = w.batch_size * frames_local * w.spatial
    layer = (
        video_block_act(p, tokens, 0, spatial_attention)
        + video_block_act(p, tokens, video_rope_positions(p, frames_local), temporal_attention)
        + 2 * tokens * m.hidden * p.elem_bytes
    )
    return video_memory(p, replicated_weights(p), tokens, m.layers * layer)


def local_spatial_act(p: Problem) -> int:
    """The local kernel over the S tokens of each of the B*T/N frames held."""
    m, w = p.model, p.workload
    return softmax_core_act(
        w.batch_size * w.frames // p.world_size,
        w.spatial,
        m.heads,
        w.spatial,
        m.kv_heads,
        m.head_dim,
        p.torch_dtype,
    )


def ulysses_video_cost(p: Problem) -> CommCost:
    m = p.model
    cost = CommCost()
    for _ in range(
        m.layers
    ):  # sequences of T frames, one per (b, s); with `all` again for the spatial attention
        for _ in range(2 if p.options.video_attention == "all" else 1):
            cost += ulysses_cost(temporal_call(p))
    return cost + param_sync_cost(p, video_layer_shapes(m), m.layers)


def spatial_ulysses_act(p: Problem) -> int:
    """`spatial_ulysses`: the local kernel keeps this rank's head group over the S tokens of all B*T
    frames, and Wo's input is the output exchanged back ([B*T/N, S, H*D]). On one rank nothing is
    exchanged and that input is the kernel's own output, unless the reshapes around the exchange
    copy it ([B, T, S] -> [B, S, T] is a view only when one of them is 1)."""
    m, w, n = p.model, p.workload, p.world_size
    B, T, S = w.batch_size, w.frames, w.spatial
    kernel = softmax_core_act(B * T, S, m.heads // n, S, m.kv_heads // n, m.head_dim, p.torch_dtype)
    copied = n > 1 or min(B, T, S) > 1
    return kernel + (B * T // n * S * m.heads * m.head_dim * p.elem_bytes if copied else 0)


def ulysses_memory(p: Problem) -> MemCost:
    """Ulysses on sequences of T frames, one per (b, s), as on the LLM block (methods/ulysses);
    with `all` the spatial attention too (`spatial_ulysses_act`)."""
    spatial = spatial_ulysses_act(p) if p.options.video_attention == "all" else local_spatial_act(p)
    return frame_shard_memory(p, spatial, ulysses_act(temporal_call(p)))


def ring_video_cost(p: Problem) -> CommCost:
    m = p.model
    cost = CommCost()
    for _ in range(m.layers):
        cost += ring_cost(temporal_call(p))
    return cost + param_sync_cost(p, video_layer_shapes(m), m.layers)


def ring_memory(p: Problem) -> MemCost:
    """Ring attention on sequences of T frames, one per (b, s), each rank holding T/N of them."""
    temporal = ring_act(temporal_call(p))
    return frame_shard_memory(p, local_spatial_act(p), temporal)


def tp_video_cost(p: Problem) -> CommCost:
    """Per block (2 per layer): AG + RS around attention and MLP forward; backward the g-bar
    all-gathers, the re-gathers and the dx reduce-scatters; then the LayerNorm gradients."""
    m, w, n, e = p.model, p.workload, p.world_size, p.elem_bytes
    activation = w.batch_size * w.frames * w.spatial * m.hidden * e  # M * element size
    blocks = 2 * m.layers
    cost = (
        CommCost()
        .add("fwd", "all_gather", activation, n, times=2 * blocks)
        .add("fwd", "reduce_scatter", activation, n, times=2 * blocks)
        .add("bwd", "all_gather", activation, n, times=4 * blocks)
        .add("bwd", "reduce_scatter", activation, n, times=2 * blocks)
    )
    return cost.add("bwd", "all_reduce", blocks * replicated_block_params(m) * e, n)


def tp_sharded_block_params(m: ModelConfig) -> int:
    """The block's weights TP-SP splits over the ranks: q/k/v, Wo, fc1, fc2 (at every degree)."""
    return 2 * m.hidden * (m.heads + m.kv_heads) * m.head_dim + 2 * m.hidden * m.ffn_hidden


def replicated_block_params(m: ModelConfig) -> int:
    """A TPVideoBlock's replicated weights: LayerNorms (affine only), qk-norms and the adaLN modulation."""
    return sum(math.prod(s) for s in video_block_shapes(m)) - tp_sharded_block_params(m)


def tp_attention_act(p: Problem, temporal: bool) -> int:
    """One TPVideoBlock attention on this rank's heads over all B*T*S tokens: the packed QKV output
    (or the copy the temporal transpose makes), which v, a view of it, keeps whole (q and k too
    without RoPE); with RoPE the rotated q and k; the kernel's output and LSE. Wo's input is the
    output itself, except in the temporal block where [B, S, T] back to [B, T*S] copies it unless S
    or T is 1, or B is 1 without RoPE: the QKV transpose is then a view, so q is laid out t-major,
    and the CPU kernel (real and fake alike) lays its output out like q."""
    m, w, n, e = p.model, p.workload, p.world_size, p.elem_bytes
    B, T, S = w.batch_size, w.frames, w.spatial
    heads, kv_heads, hd = m.heads // n, m.kv_heads // n, m.head_dim
    tokens = B * T * S
    batch, length = (B * S, T) if temporal else (B * T, S)
    rope = temporal and video_rope_positions(p, T) > 0
    qk_new = rope or video_options(m).qk_norm  # q and k reach the kernel as new tensors, not views
    views = (kv_heads if qk_new else heads + 2 * kv_heads) * tokens * hd * e  # q, k, v inside the QKV output
    wo_input = tokens * heads * hd * e if temporal and min(T, S) > 1 and (rope or B > 1) else 0
    return (
        (heads + 2 * kv_heads) * tokens * hd * e
        - views
        + wo_input
        + softmax_core_act(batch, length, heads, length, kv_heads, hd, p.torch_dtype)
    )


def tp_memory(p: Problem) -> MemCost:
    """TP-SP on the flattened t-major sequence: norms, residuals and the column linears' saved inputs
    on the rank's B*T*S/N rows, attention and MLP over all tokens for 1/N of the heads and channels.
    Each block's input is the previous one's output (the first: x), so the stream adds two
    [B, T*S/N, C] storages per layer, the output included."""
    m, w, n, e = p.model, p.workload, p.world_size, p.elem_bytes
    d, tokens = m.hidden, w.batch_size * w.frames * w.spatial
    block_params = replicated_block_params(m) + tp_sharded_block_params(m) // n
    mlp = gelu_mlp_act(tokens, m.ffn_hidden // n, e)
    # qk-norm on this rank's heads over all tokens; its input is a view of the QKV output, kept anyway
    qk_norm = qk_norm_act(tokens * (m.heads + m.kv_heads) // n, m.head_dim, p.torch_dtype, input_saved=False)
    layer = sum(
        video_block_act(
            p,
            tokens // n,
            video_rope_positions(p, w.frames) if temporal else 0,
            tp_attention_act(p, temporal),
            mlp,
            qk_norm,
        )
        for temporal in (False, True)
    )
    act = m.layers * (layer + 2 * tokens // n * d * e)
    return video_memory(p, 2 * m.layers * block_params * e, tokens // n, act)
