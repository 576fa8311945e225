"""LASP-1's parallel core: rank t receives the state S_t from rank t-1 and sends
S_{t+1} = lambda^C S_t + M_t on to t+1; backward, the gradient suffix G goes the other way."""

from __future__ import annotations

import torch
import torch.distributed as dist

from methods.common.attention import acc_dtype
from methods.common.layers import LocalAttention
from methods.common.linear_attention import LinearKernel
from methods.lasp2 import chunk_factors, state_decay


class LASP1Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kernel: LinearKernel, group):
        t, w, acc, c = dist.get_rank(group), dist.get_world_size(group), acc_dtype(q.dtype), q.shape[1]
        a, b = chunk_factors(kernel, c, q.device, acc)
        memory = torch.einsum("bkhd,bkhe->bhde", k.to(acc) * b, v.to(acc))
        state = torch.zeros_like(memory)  # S_t: everything before this rank's chunk
        if t > 0:
            dist.recv(state, dist.get_global_rank(group, t - 1), group=group)
        if t < w - 1:
            dist.send(
                state_decay(kernel, c, q.device, acc) * state + memory,
                dist.get_global_rank(group, t + 1),
                group=group,
            )
        out = kernel(q, k, v, True) + torch.einsum("bqhd,bhde->bqhe", q.to(acc) * a, state).to(q.dtype)
        ctx.save_for_backward(q, k, v, state)
        ctx.kernel, ctx.group = kernel, group
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, state = ctx.saved_tensors
        kernel, group = ctx.kernel, ctx.group
        t, w, acc, c = dist.get_rank(group), dist.get_world_size(group), acc_dtype(q.dtype), q.shape[1]
        a, b = chunk_factors(kernel, c, q.device, acc)
        dmemory = torch.einsum("bqhd,bqhe->bhde", q.to(acc) * a, dout.to(acc))
        g = torch.zeros_like(dmemory)  # G_t: gradient of this rank's state from every later rank
        if t < w - 1:
            dist.recv(g, dist.get_global_rank(group, t + 1), group=group)
        if t > 0:
            dist.send(
                state_decay(kernel, c, q.device, acc) * g + dmemory,
                dist.get_global_rank(group, t - 1),
                group=group,
            )
        with torch.enable_grad():
            qi, ki, vi = (x.detach().requires_grad_() for x in (q, k, v))
            dq_i, dk_i, dv_i = torch.autograd.grad(kernel(qi, ki, vi, True), (qi, ki, vi), dout)
        dq = (torch.einsum("bqhe,bhde->bqhd", dout.to(acc), state) * a).to(q.dtype) + dq_i
        dk = (torch.einsum("bkhe,bhde->bkhd", v.to(acc), g) * b).to(k.dtype) + dk_i
        dv = torch.einsum("bkhd,bhde->bkhe", k.to(acc) * b, g).to(v.dtype) + dv_i
        return dq, dk, dv, None, None


def lasp1_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    local: LocalAttention,
    group: dist.ProcessGroup,
) -> torch.Tensor:
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    return LASP1Attention.apply(q, k, v, local, group)
