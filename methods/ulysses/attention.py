"""DeepSpeed-Ulysses' parallel core: all-to-all q, k, v from a sequence shard to a head group over
the whole sequence, the layer's own kernel per head group, all-to-all the output back.

GQA: kv heads are exchanged at their own count when they divide over the ranks; with fewer kv heads
than ranks each kv head is repeated N/Hkv times before the exchange (so every rank receives the one
kv head its query heads use) and its gradient is summed back by autograd.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from methods.common.collectives import heads_to_seq, seq_to_heads
from methods.common.layers import LocalAttention


def kv_heads_exchanged(kv_heads: int, n: int) -> int:
    """kv heads that travel: their own count, or n once each is repeated n/kv_heads times."""
    return max(kv_heads, n)


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    local: LocalAttention,
    group: dist.ProcessGroup,
) -> torch.Tensor:
    """q [B, L/N, H, D], k/v [B, L/N, Hkv, D] on a contiguous shard -> out [B, L/N, H, D]; `local` is
    the layer's single-device kernel, run on a head group over the whole sequence."""
    n = dist.get_world_size(group)
    if hasattr(local, "for_heads"):  # per-head kernel state (linear attention decay): this rank's heads
        heads = q.shape[2] // n
        local = local.for_heads(dist.get_rank(group) * heads, heads)
    if k.shape[2] < n:
        rep = n // k.shape[2]
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    q, k, v = (seq_to_heads(t, group) for t in (q, k, v))  # [B, L, heads/N, D]
    return heads_to_seq(local(q, k, v, causal), group)
