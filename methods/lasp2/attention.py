"""LASP-2's parallel core (arXiv 2502.07563): sequence parallelism for linear attention with one
all-gather of the per-rank memory states forward and one of their gradients backward, whatever the
sequence length.


Rank t holds the contiguous chunk t. Forward: M_t = (b * K_t)^T V_t, all-gathered (asynchronously,
while the intra-chunk term is computed), the decayed prefix S_t = sum_{j<t} lambda^(C(t-1-j)) M_j,
and O_t = intra + (a * Q_t) S_t. Backward: dM_t = (a * Q_t)^T dO_t all-gathered, the suffix
G_t = sum_{j>t} lambda^(C(j-1-t)) dM_j, then dQ += a * dO S^T, dK += b * V G^T, dV += (b * K) G.
Bidirectional: every rank uses the total sum (prefix and suffix become the sum over all ranks).
States travel in the accumulation dtype (float32; float64 for float64 runs), per query head.

LASP-2H (hybrid stacks): linear layers as above, softmax layers with all-gather K/V context
parallelism (methods/allgather_cp) on the same contiguous layout.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from methods.common.attention import acc_dtype
from methods.common.collectives import all_gather_async
from methods.common.layers import LocalAttention
from methods.common.linear_attention import LinearKernel, chunk_weights


def state_decay(kernel: LinearKernel, tokens: int, device, dtype) -> torch.Tensor | float:
    """lambda^tokens per head as [1, H, 1, 1] (1 without decay): a state crossing `tokens` tokens."""
    if kernel.decay is None:
        return 1.0
    return torch.exp(tokens * torch.log(kernel.decay.to(device=device, dtype=torch.float64)))[
        None, :, None, None
    ].to(dtype)


def chunk_factors(kernel: LinearKernel, c: int, device, dtype) -> tuple:
    """(a, b) row weights of the queries reading and the keys writing a chunk's state."""
    if kernel.decay is None:
        return 1.0, 1.0
    a, b, _ = chunk_weights(kernel.decay, c, device)
    return a.to(dtype), b.to(dtype)


def weighted_prefix(
    states: torch.Tensor, kernel: LinearKernel, rank: int, chunk: int, before: bool
) -> torch.Tensor:
    """sum over ranks j < rank (before) or j > rank of lambda^(C(|rank - j| - 1)) states[j]."""
    others = range(rank) if before else range(rank + 1, states.shape[0])
    total = torch.zeros_like(states[0])
    for j in others:
        total = (
            total + state_decay(kernel, chunk * (abs(rank - j) - 1), states.device, states.dtype) * states[j]
        )
    return total


class LASP2Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal: bool, kernel: LinearKernel, group):
        t, acc, c = dist.get_rank(group), acc_dtype(q.dtype), q.shape[1]
        a, b = chunk_factors(kernel, c, q.device, acc) if causal else (1.0, 1.0)
        memory = torch.einsum("bkhd,bkhe->bhde", k.to(acc) * b, v.to(acc))
        states, work = all_gather_async(memory, group)
        intra = kernel(q, k, v, True) if causal else None  # overlaps the gather
        if work is not None:
            work.wait()
        state = weighted_prefix(states, kernel, t, c, before=True) if causal else states.sum(0)
        out = torch.einsum("bqhd,bhde->bqhe", q.to(acc) * a, state).to(q.dtype)
        if causal:
            out = out + intra
        ctx.save_for_backward(q, k, v, state)
        ctx.causal, ctx.kernel, ctx.group = causal, kernel, group
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, state = ctx.saved_tensors
        causal, kernel, group = ctx.causal, ctx.kernel, ctx.group
        t, acc, c = dist.get_rank(group), acc_dtype(q.dtype), q.shape[1]
        a, b = chunk_factors(kernel, c, q.device, acc) if causal else (1.0, 1.0)
        dmemory = torch.einsum("bqhd,bqhe->bhde", q.to(acc) * a, dout.to(acc))
        grads, work = all_gather_async(dmemory, group)
        dq = torch.einsum("bqhe,bhde->bqhd", dout.to(acc), state) * a  # needs only the saved state
        if causal:  # intra-chunk term through the local kernel's own autograd, overlapping the gather
            with torch.enable_grad():
                qi, ki, vi = (x.detach().requires_grad_() for x in (q, k, v))
                dq_i, dk_i, dv_i = torch.autograd.grad(kernel(qi, ki, vi, True), (qi, ki, vi), dout)
        if work is not None:
            work.wait()
        g = weighted_prefix(grads, kernel, t, c, before=False) if causal else grads.sum(0)
        dk = torch.einsum("bkhe,bhde->bkhd", v.to(acc), g) * b
        dv = torch.einsum("bkhd,bhde->bkhe", k.to(acc) * b, g)
        dq, dk, dv = dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
        if causal:
            dq, dk, dv = dq + dq_i, dk + dk_i, dv + dv_i
        return dq, dk, dv, None, None, None


def lasp2_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    local: LocalAttention,
    group: dist.ProcessGroup,
    softmax_core,
) -> torch.Tensor:
    """Distributed core for linear (LASP-2) and, in hybrid stacks, softmax layers (`softmax_core`)."""
    if not isinstance(local, LinearKernel):
        return softmax_core(q, k, v, causal, local)
    rep = q.shape[2] // k.shape[2]  # states are per query head; autograd sums the repeats back
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    return LASP2Attention.apply(q, k, v, causal, local, group)
