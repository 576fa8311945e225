"""Ring attention: every rank keeps its query block and passes K/V blocks around the ring; each step
posts the next transfer before computing on the block in hand, and partial outputs are merged with
their log-sum-exp. The backward sends K/V around again together with dK/dV accumulators, which come
home to their owner after N hops.

Layouts (methods/common/layout.py): `basic` (contiguous; causal work grows with the rank), `zigzag`
(chunks r and 2N-1-r: equal causal work everywhere) and `stripe` (token t on rank t mod N). Every
block a rank computes is square, full, or skipped, so only square causal kernels are ever called.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist

from methods import Method, register
from methods.common import layout as layouts
from methods.common.attention import acc_dtype, attn_backward, attn_forward, merge_lse
from methods.common.config import InvalidConfig, Problem
from methods.common.cost import CommCost
from methods.common.layers import LocalAttention, llama_block_shapes
from methods.common.memory import MemCost, llama_layer_act, positions_storage, replicated_memory, softmax_core_act
from methods.common.replicated import ReplicatedSequenceModel, param_sync_cost
from methods.common.ring_comm import RingComm

ALL = slice(None)


def block_plan(layout: str, causal: bool, rank: int, source: int, length: int) -> tuple[slice, slice, bool] | None:
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
                    out[:, rows], lse[:, :, rows] = merge_lse(out[:, rows], lse[:, :, rows], block_out, block_lse)
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
                dq_b, dk_b, dv_b = attn_backward(dout[:, rows], q[:, rows], k_cur[:, cols], v_cur[:, cols],
                                                 out[:, rows], lse[:, :, rows], block_causal)
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


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, local: LocalAttention,
                   group: dist.ProcessGroup, layout: str) -> torch.Tensor:
    """Distributed core: q [B, L/N, H, D], k/v [B, L/N, Hkv, D] in `layout` over `group`. Softmax
    attention only (it needs the LSE kernels), so the layer's `local` kernel is not used."""
    return RingAttention.apply(q, k, v, causal, layout, group)


# ---- layout, checks, build -------------------------------------------------------------------------

def ring_layout(p: Problem) -> str:
    return p.opt("layout", "zigzag")


def validate(p: Problem) -> None:
    if ring_layout(p) not in ("basic", "zigzag", "stripe"):
        raise InvalidConfig(f"method.layout={ring_layout(p)!r}: ring layouts are basic, zigzag, stripe")
    layouts.check_divisible(ring_layout(p), p.workload.seq_len, p.world_size)


@layouts.real_indices
def layout(p: Problem) -> list[torch.Tensor]:
    return layouts.make(ring_layout(p), p.workload.seq_len, p.world_size)


def build(p: Problem, reference, device: torch.device) -> ReplicatedSequenceModel:
    group = dist.group.WORLD
    core = partial(ring_attention, group=group, layout=ring_layout(p))
    positions = layout(p)[dist.get_rank()]
    return ReplicatedSequenceModel(reference, positions, p.workload.causal, core, group, p.torch_dtype, device,
                                   zero3=p.opt("zero3", False))


# ---- cost model ------------------------------------------------------------------------------------

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


register(Method("ring", validate=validate, layout=layout, build=build, comm_cost=comm_cost, memory_cost=memory_cost))
