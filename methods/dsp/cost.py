"""DSP's communication and memory models (the resident S-shard, switches around the spatial stage)."""

from __future__ import annotations

import math

from methods.common.config import Problem
from methods.common.cost import CommCost
from methods.common.memory import (
    INDEX_BYTES,
    MemCost,
    softmax_core_act,
    video_block_act,
    video_memory,
    video_rope_positions,
)
from methods.common.replicated import param_sync_cost
from methods.common.video import video_layer_shapes, video_shape

from .model import spatial_sizes


def comm_cost(p: Problem) -> CommCost:
    """Per layer and direction: two switches, each an all-to-all of the rank's [B, T_pad, S_pad/N, C]
    activation (T and S padded to multiples of N) = (N-1)/N^2 * M when both divide."""
    B, T, S = video_shape(p)
    n, e = p.world_size, p.elem_bytes
    t_pad = -(-T // n) * n
    local = B * t_pad * max(spatial_sizes(S, n)) * p.model.hidden * e
    cost = CommCost()
    for phase in ("fwd", "bwd"):
        cost.add(phase, "all_to_all", local, n, times=2 * p.model.layers)
    return cost + param_sync_cost(p, video_layer_shapes(p.model), p.model.layers)


def replicated_weights(p: Problem) -> int:
    """Every video layer's weights on every rank (`method.zero3` does not apply to the video block)."""
    return p.model.layers * sum(math.prod(s) for s in video_layer_shapes(p.model)) * p.elem_bytes


def rank_memory(p: Problem, rank: int) -> MemCost:
    """`rank`'s step. Per layer: the spatial block on whole frames of T_pad/N frames (padding frames
    included), its input (index_select's result, which the first norm saves) and its output (which
    index_copy saves: its backward reads the source's shape); the temporal block on the rank's S_r
    positions over the T frames, and its input: the switch's result in [B, S_r, T, C] order, which
    the first norm saves, a copy unless the reshape is a view (see below); then the output, and the
    S int64 indices of the real spatial tokens (saved by index_select and index_copy)."""
    B, T, S = video_shape(p)
    m, n, e, dtype = p.model, p.world_size, p.elem_bytes, p.torch_dtype
    sizes = spatial_sizes(S, n)
    frames_local, s, pad = -(-T // n), sizes[rank], max(sizes)
    spatial = video_block_act(
        p,
        B * frames_local * S,
        0,
        softmax_core_act(B * frames_local, S, m.heads, S, m.kv_heads, m.head_dim, dtype),
    )
    temporal = video_block_act(
        p,
        B * s * T,
        video_rope_positions(p, T),
        softmax_core_act(B * s, T, m.heads, T, m.kv_heads, m.head_dim, dtype),
    )
    stream = m.hidden * e
    # The switch returns T of the T_pad frames and S_r of the `pad` slots of its [B, T_pad, pad, C]
    # buffer; [B, S_r, T, C] -> [B*S_r, T, C] views it only when B or S_r is 1 or the buffer holds
    # just that shard (one rank, one frame), and then the norm keeps the whole buffer.
    view = B == 1 or s == 1 or n * frames_local == 1
    temporal_input = B * n * frames_local * pad * stream if view else B * T * s * stream
    per_layer = 2 * B * frames_local * S * stream + spatial + temporal_input + temporal
    act = m.layers * per_layer + B * T * s * stream + S * INDEX_BYTES
    return video_memory(p, replicated_weights(p), B * T * s, act)


def memory_cost(p: Problem) -> MemCost:
    """The busiest rank. Every rank holds the largest spatial shard (rank 0's) or the smallest (rank
    N-1's); the largest keeps the most, except where the smallest is one token a frame: its
    temporal norm then keeps the whole padded switch buffer, which outweighs rank 0's extra rows
    when few frames are padded to many (T=1 over 8 ranks: every buffer has 8 frames)."""
    return max((rank_memory(p, 0), rank_memory(p, p.world_size - 1)), key=lambda cost: cost.total)
