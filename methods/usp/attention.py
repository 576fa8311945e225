"""USP's parallel core: the Ulysses all-to-all rebuilds a ring segment for a head group, ring
attention runs over the segments, the inverse all-to-all returns the rank's own tokens."""

from __future__ import annotations

import torch
import torch.distributed as dist

from methods.common.collectives import heads_to_seq, seq_to_heads
from methods.common.layers import LocalAttention
from methods.ring import ring_attention


def usp_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    local: LocalAttention,
    ulysses_group: dist.ProcessGroup,
    ring_group: dist.ProcessGroup,
    layout: str,
) -> torch.Tensor:
    """q [B, L/N, H, D], k/v [B, L/N, Hkv, D] -> out [B, L/N, H, D]."""
    u = dist.get_world_size(ulysses_group)
    if k.shape[2] < u:  # fewer kv heads than Ulysses ranks: repeat, as Ulysses does
        k, v = k.repeat_interleave(u // k.shape[2], dim=2), v.repeat_interleave(u // v.shape[2], dim=2)
    q, k, v = (seq_to_heads(t, ulysses_group) for t in (q, k, v))  # [B, L/R, heads/U, D]: a ring segment
    return heads_to_seq(ring_attention(q, k, v, causal, local, ring_group, layout), ulysses_group)
