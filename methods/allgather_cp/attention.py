"""All-gather context parallelism's core (Llama 3): all-gather K and V (kv heads only, one
collective for both), attend the rank's queries to the whole sequence with the global causal mask,
and reduce-scatter dK/dV in backward.

With queries at global positions [a, a+C) the causal mask against all keys is bottom-right aligned;
it is computed as two kernel calls merged by their LSE, keys [0, a) unmasked and keys [a, a+C) as a
square causal block, because kernels disagree on causal alignment for non-square blocks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from methods.common.attention import acc_dtype, attn_backward, attn_forward, merge_lse
from methods.common.collectives import all_gather_dim, reduce_scatter_dim
from methods.common.layers import LocalAttention


def query_pieces(
    index: torch.Tensor, chunks: int, causal: bool, length: int
) -> list[tuple[slice, slice, bool]]:
    """(local query rows, global key columns, square-causal?) pieces covering the rank's attention.
    `index` holds the rank's global positions as `chunks` contiguous runs."""
    if not causal:
        return [(slice(None), slice(0, length), False)]
    pieces = []
    run = index.numel() // chunks
    starts = index.tolist()[::run]  # plain ints: no tensor op, so a dryrun's fake mode never sees it
    for c in range(chunks):
        rows = slice(c * run, (c + 1) * run)
        start = starts[c]
        if start:
            pieces.append((rows, slice(0, start), False))
        pieces.append((rows, slice(start, start + run), True))
    return pieces


class AllGatherAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal: bool, indices: list[torch.Tensor], chunks: int, group):
        r = dist.get_rank(group)
        order = torch.cat(indices).to(q.device)  # gathered rows (rank after rank) -> global positions
        kv = all_gather_dim(torch.cat([k, v], dim=2), 1, group)  # [B, L, 2 Hkv, D], rank-major
        kv_global = torch.empty_like(kv).index_copy_(1, order, kv)
        k_all, v_all = kv_global.chunk(2, dim=2)
        pieces = query_pieces(indices[r], chunks, causal, kv.shape[1])
        acc = acc_dtype(q.dtype)
        out = torch.empty(q.shape, dtype=acc, device=q.device)
        lse = torch.empty((q.shape[0], q.shape[2], q.shape[1]), dtype=acc, device=q.device)
        started = set()  # row runs that already hold a partial result
        for rows, cols, square in pieces:
            o, o_lse = attn_forward(q[:, rows], k_all[:, cols], v_all[:, cols], square)
            if rows.start in started:
                out[:, rows], lse[:, :, rows] = merge_lse(out[:, rows], lse[:, :, rows], o, o_lse)
            else:
                out[:, rows], lse[:, :, rows] = o.to(acc), o_lse.to(acc)
                started.add(rows.start)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k_all, v_all, out, lse, order)
        ctx.pieces, ctx.group = pieces, group
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k_all, v_all, out, lse, order = ctx.saved_tensors
        acc = acc_dtype(q.dtype)
        dq = torch.zeros_like(q, dtype=acc)
        dkv_global = torch.zeros(
            (*k_all.shape[:2], 2 * k_all.shape[2], k_all.shape[3]), dtype=acc, device=q.device
        )
        dk_all, dv_all = dkv_global.chunk(2, dim=2)
        for rows, cols, square in ctx.pieces:
            dq_b, dk_b, dv_b = attn_backward(
                dout[:, rows],
                q[:, rows],
                k_all[:, cols],
                v_all[:, cols],
                out[:, rows],
                lse[:, :, rows],
                square,
            )
            dq[:, rows] += dq_b
            dk_all[:, cols] += dk_b
            dv_all[:, cols] += dv_b
        # back to rank-major order, then sum over ranks and keep our rows (in the accumulation dtype)
        dkv = reduce_scatter_dim(dkv_global.index_select(1, order), 1, ctx.group)
        dk, dv = dkv.chunk(2, dim=2)
        return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype), None, None, None, None


def allgather_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    local: LocalAttention,
    group: dist.ProcessGroup,
    indices: list[torch.Tensor],
    chunks: int,
) -> torch.Tensor:
    """Distributed core: q [B, L/N, H, D], k/v [B, L/N, Hkv, D] at the group ranks' `indices`, each
    made of `chunks` contiguous runs. Softmax attention only (it merges LSEs), so the layer's `local`
    kernel is not used."""
    return AllGatherAttention.apply(q, k, v, causal, indices, chunks, group)
