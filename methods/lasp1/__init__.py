"""LASP-1 (arXiv 2404.02882): linear-attention sequence parallelism by passing the memory state rank
to rank. Forward: rank t receives S_t from rank t-1, sends S_{t+1} = lambda^C S_t + M_t on to t+1;
backward: the gradient suffix G goes the other way. W-1 dependent hops each way (the chain LASP-2
replaces by one all-gather); each rank sends at most one state per direction. Causal only."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from methods import Method, register
from methods.common.attention import acc_dtype
from methods.common.config import InvalidConfig, Problem
from methods.common.cost import CommCost
from methods.common.layers import LocalAttention, llama_block_shapes
from methods.common.linear_attention import LinearKernel
from methods.common.options import ShardedOptions
from methods.common.replicated import ReplicatedSequenceModel, param_sync_cost
from methods.lasp2 import chunk_factors, layout, state_bytes, state_decay
from methods.lasp2 import memory_cost as lasp2_memory_cost
from methods.lasp2 import validate as lasp2_validate


@dataclass(frozen=True)
class Lasp1Options(ShardedOptions):
    """zero3 only."""


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
            dist.send(state_decay(kernel, c, q.device, acc) * state + memory, dist.get_global_rank(group, t + 1), group=group)
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
            dist.send(state_decay(kernel, c, q.device, acc) * g + dmemory, dist.get_global_rank(group, t - 1), group=group)
        with torch.enable_grad():
            qi, ki, vi = (x.detach().requires_grad_() for x in (q, k, v))
            dq_i, dk_i, dv_i = torch.autograd.grad(kernel(qi, ki, vi, True), (qi, ki, vi), dout)
        dq = (torch.einsum("bqhe,bhde->bqhd", dout.to(acc), state) * a).to(q.dtype) + dq_i
        dk = (torch.einsum("bkhe,bhde->bkhd", v.to(acc), g) * b).to(k.dtype) + dk_i
        dv = torch.einsum("bkhd,bhde->bkhe", k.to(acc) * b, g).to(v.dtype) + dv_i
        return dq, dk, dv, None, None


def lasp1_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, local: LocalAttention,
                    group: dist.ProcessGroup) -> torch.Tensor:
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    return LASP1Attention.apply(q, k, v, local, group)


def validate(p: Problem) -> None:
    if not p.workload.causal:
        raise InvalidConfig("lasp1 is causal only (its state chain runs forward); use lasp2 for bidirectional")
    lasp2_validate(p)


def build(p: Problem, reference, device: torch.device) -> ReplicatedSequenceModel:
    group = dist.group.WORLD
    return ReplicatedSequenceModel(reference, layout(p)[dist.get_rank()], True, partial(lasp1_attention, group=group),
                                   group, p.torch_dtype, device, zero3=p.options.zero3)


def comm_cost(p: Problem) -> CommCost:
    """Per linear layer the busiest rank sends one state forward and one state gradient backward."""
    cost = CommCost()
    if p.world_size > 1:
        cost.add("fwd", "send", state_bytes(p), p.world_size, times=p.model.layers)
        cost.add("bwd", "send", state_bytes(p), p.world_size, times=p.model.layers)
    return cost + param_sync_cost(p, llama_block_shapes(p.model), p.model.layers)


# LASP-1 keeps what LASP-2 keeps: q, k, v of the chunk and the incoming state per layer
register(Method("lasp1", validate=validate, layout=layout, build=build, comm_cost=comm_cost,
                memory_cost=lasp2_memory_cost, model_kinds=("linear",), options=Lasp1Options))
