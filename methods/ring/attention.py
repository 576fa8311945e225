"""Ring attention: every rank keeps its query block and passes K/V blocks around the ring; each step
posts the next transfer before computing on the block in hand, and partial outputs are merged with
their log-sum-exp. The backward sends K/V around again together with dK/dV accumulators, which come
home to their owner after N hops.

Every block a rank computes is square, full, or skipped (`block_plan`), so only square causal
kernels are ever called.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from methods.common.attention import acc_dtype, attn_backward, attn_forward, merge_lse
from methods.common.layers import LocalAttention
from methods.common.ring_comm import RingComm

ALL = slice(None)


def block_plan(
    layout: str, causal: bool, rank: int, source: int, length: int
) -> tuple[slice, slice, bool] | None:
    """Which query rows of `rank` attend which key columns of `source`'s block (both `length` long),
    and whether that piece is a square causal block; None when no query sees any key."""
    if not causal:
        return ALL, ALL, False
    if source == rank:
        return ALL, ALL, True  # local positions increase with the local index in every layout
    half = length // 2
    if layout == "basic":
        return (ALL, ALL, False) if source < rank else None
    if layout == "zigzag":  # rank holds chunks (rank, 2N-1-rank)
        # an earlier rank's first chunk is in the past of both of ours, its second in the future;
        # a later rank's two chunks are in the future of our first chunk and the past of our second
        return (ALL, slice(0, half), False) if source < rank else (slice(half, None), ALL, False)
    if layout == "stripe":  # local index i is position i*N + rank
        # key m of a later rank is seen by query i iff m < i: causal on rows 1.. vs keys ..L-2
        return (slice(1, None), slice(0, length - 1), True) if source > rank else (ALL, ALL, True)
    raise ValueError(f"unknown ring layout {layout!r}")


class RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal: bool, layout: str, group):
        n, r = dist.get_world_size(group), dist.get_rank(group)
        comm = RingComm(group) if n > 1 else None
        acc = acc_dtype(q.dtype)
        out = lse = None
        k_cur, v_cur = k, v
        for step in range(n):
            if step < n - 1:
                k_next, v_next = comm.send_recv(k_cur), comm.send_recv(v_cur)
                comm.commit()
            plan = block_plan(layout, causal, r, (r - step) % n, q.shape[1])
            if plan is not None:
                rows, cols, block_causal = plan
                block_out, block_lse = attn_forward(q[:, rows], k_cur[:, cols], v_cur[:, cols], block_causal)
                if out is None:  # step 0 always covers every row
                    out, lse = block_out.to(acc), block_lse.to(acc)
                else:
                    out[:, rows], lse[:, :, rows] = merge_lse(
                        out[:, rows], lse[:, :, rows], block_out, block_lse
                    )
            if step < n - 1:
                comm.wait()
                k_cur, v_cur = k_next, v_next
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.layout, ctx.group = causal, layout, group
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        group = ctx.group
        n, r = dist.get_world_size(group), dist.get_rank(group)
        acc = acc_dtype(q.dtype)
        kv_comm, dkv_comm = (RingComm(group), RingComm(group)) if n > 1 else (None, None)
        dq = torch.zeros_like(q, dtype=acc)
        k_cur, v_cur = k, v
        dk_next = dv_next = None
        for step in range(n):
            if step < n - 1:
                k_next, v_next = kv_comm.send_recv(k_cur), kv_comm.send_recv(v_cur)
                kv_comm.commit()
            plan = block_plan(ctx.layout, ctx.causal, r, (r - step) % n, q.shape[1])
            if plan is not None:
                rows, cols, block_causal = plan
                dq_b, dk_b, dv_b = attn_backward(
                    dout[:, rows],
                    q[:, rows],
                    k_cur[:, cols],
                    v_cur[:, cols],
                    out[:, rows],
                    lse[:, :, rows],
                    block_causal,
                )
                dq[:, rows] += dq_b
            if step == 0:  # the accumulators of the block in hand: fresh at step 0, then received
                dk_acc, dv_acc = torch.zeros_like(k, dtype=acc), torch.zeros_like(v, dtype=acc)
            else:
                dkv_comm.wait()
                dk_acc, dv_acc = dk_next, dv_next
            if plan is not None:
                dk_acc[:, cols] += dk_b
                dv_acc[:, cols] += dv_b
            if step < n - 1:
                kv_comm.wait()
                k_cur, v_cur = k_next, v_next
            if n > 1:  # pass the accumulators on with the block they belong to
                dk_next, dv_next = dkv_comm.send_recv(dk_acc), dkv_comm.send_recv(dv_acc)
                dkv_comm.commit()
        if n > 1:
            dkv_comm.wait()  # after n hops our own block's accumulators are back, complete
            dk_acc, dv_acc = dk_next, dv_next
        return dq.to(q.dtype), dk_acc.to(k.dtype), dv_acc.to(v.dtype), None, None, None


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    local: LocalAttention,
    group: dist.ProcessGroup,
    layout: str,
) -> torch.Tensor:
    """Distributed core: q [B, L/N, H, D], k/v [B, L/N, Hkv, D] in `layout` over `group`. Softmax
    attention only (it needs the LSE kernels), so the layer's `local` kernel is not used."""
    return RingAttention.apply(q, k, v, causal, layout, group)
