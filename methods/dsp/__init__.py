"""DSP, dynamic sequence parallelism (arXiv 2403.10266), on the spatial-temporal block: keep the data
sharded on the dimension the current stage does not attend over, and switch between stages with one
all-to-all. The resident shard is S ([B, T, S/N, C]): before each spatial block one switch makes S
whole and shards T, after it the inverse switch returns to the S-shard, and the temporal block runs
locally. 2 all-to-alls per layer forward, 2 backward, each moving (N-1)/N^2 of the activation.

T or S not divisible by N (T < N included): the switch pads T to a multiple of N and trims it back,
and spatial shards (which differ by at most one token) travel padded to the largest; padding never
reaches a result, so it contributes nothing to outputs or gradients. No head-count
constraint: switches move whole tokens. Embedded baselines on the same block: methods/dsp/baselines.py.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from methods import Method, register
from methods.common import layout as layouts
from methods.common.collectives import sum_grads
from methods.common.config import InvalidConfig, Problem
from methods.common.cost import CommCost
from methods.common.layers import copy_to, local_core
from methods.common.memory import (INDEX_BYTES, MemCost, softmax_core_act, video_block_act, video_memory,
                                   video_rope_positions)
from methods.common.replicated import param_sync_cost
from methods.common.video import conditioning, spatial_stage, temporal_stage, video_layer_shapes


def _switch(x: torch.Tensor, gather_dim: int, scatter_dim: int, gather_len: int, group) -> torch.Tensor:
    """x sharded on `gather_dim`, whole on `scatter_dim` -> whole on `gather_dim` (trimmed to
    `gather_len`), sharded on `scatter_dim` (padded to a multiple of N first)."""
    n = dist.get_world_size(group)
    pad = -x.shape[scatter_dim] % n
    if pad:
        widths = [0, 0] * (x.dim() - 1 - scatter_dim) + [0, pad]
        x = F.pad(x, widths)
    send = torch.stack(x.chunk(n, dim=scatter_dim)).contiguous()  # slot j goes to rank j
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return torch.cat(recv.unbind(0), dim=gather_dim).narrow(gather_dim, 0, gather_len)


class Switch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gather_dim: int, scatter_dim: int, gather_len: int, group):
        ctx.dims, ctx.scatter_len, ctx.group = (gather_dim, scatter_dim), x.shape[scatter_dim], group
        return _switch(x, gather_dim, scatter_dim, gather_len, group)

    @staticmethod
    def backward(ctx, grad):
        gather_dim, scatter_dim = ctx.dims
        return _switch(grad, scatter_dim, gather_dim, ctx.scatter_len, ctx.group), None, None, None, None


def switch(x: torch.Tensor, gather_dim: int, scatter_dim: int, gather_len: int, group: dist.ProcessGroup) -> torch.Tensor:
    return Switch.apply(x, gather_dim, scatter_dim, gather_len, group)


class DSPModel(nn.Module):
    def __init__(self, reference: nn.Module, group: dist.ProcessGroup, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.model = copy_to(reference, device, dtype)
        self.group = group

    def forward(self, x_local: torch.Tensor) -> torch.Tensor:
        m, n, r = self.model, dist.get_world_size(self.group), dist.get_rank(self.group)
        B, _, C = x_local.shape
        sizes = spatial_sizes(m.spatial, n)
        pad = max(sizes)  # every rank's spatial shard travels padded to the largest
        real = torch.cat([i * pad + torch.arange(s, device=x_local.device) for i, s in enumerate(sizes)])
        x = x_local.view(B, m.frames, sizes[r], C)  # resident: the S-shard
        frames = torch.arange(m.frames, device=x.device)
        cond = conditioning(m.cond, x.dtype)  # per sample: the same on every rank
        for layer in m.blocks:
            h = switch(F.pad(x, (0, 0, 0, pad - sizes[r])), 2, 1, n * pad, self.group)  # [B, T/N, N*pad, C]
            h = spatial_stage(layer.spatial, h.index_select(2, real), local_core, cond)  # whole frames, no padding
            h = h.new_zeros(*h.shape[:2], n * pad, C).index_copy(2, real, h)
            x = switch(h, 1, 2, m.frames, self.group).narrow(2, 0, sizes[r])  # back to [B, T, S_r, C]
            x = temporal_stage(layer.temporal, x, frames, local_core, cond)  # whole T: no communication
        return x.reshape(B, -1, C)

    def finish_grads(self) -> None:
        sum_grads(list(self.parameters()), self.group)  # replicated weights, disjoint tokens

    def full_grads(self) -> dict[str, torch.Tensor]:
        return {name: p.grad for name, p in self.model.named_parameters()}


# ---- layout, checks, build -------------------------------------------------------------------------

def video_shape(p: Problem) -> tuple[int, int, int]:
    w = p.workload
    return w.batch_size, w.frames, w.spatial


def check_video(p: Problem) -> None:
    if p.workload.frames < 1 or p.workload.spatial < 1:
        raise InvalidConfig(f"the video workload needs frames >= 1 and spatial >= 1, got "
                            f"frames={p.workload.frames} spatial={p.workload.spatial}")


def spatial_sizes(spatial: int, n: int) -> list[int]:
    """Spatial tokens per rank: as equal as possible (ceil for the first S mod N ranks)."""
    return [len(chunk) for chunk in torch.arange(spatial, device="cpu").tensor_split(n)]


def validate(p: Problem) -> None:
    check_video(p)
    if p.workload.spatial < p.world_size:
        raise InvalidConfig(f"workload.spatial={p.workload.spatial} is below world_size={p.world_size}: "
                            "DSP keeps a spatial shard on every rank")


@layouts.real_indices
def layout(p: Problem) -> list[torch.Tensor]:
    """Rank r holds its run of spatial positions in every frame (flattened t-major); runs differ by at
    most one token when N does not divide S."""
    _, T, S = video_shape(p)
    grid = torch.arange(T * S, device="cpu").view(T, S)
    return [shard.reshape(-1) for shard in grid.tensor_split(p.world_size, dim=1)]


def build(p: Problem, reference: nn.Module, device: torch.device) -> DSPModel:
    return DSPModel(reference, dist.group.WORLD, p.torch_dtype, device)


# ---- cost model ------------------------------------------------------------------------------------

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


# ---- memory model ----------------------------------------------------------------------------------

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
    spatial = video_block_act(p, B * frames_local * S, 0,
                              softmax_core_act(B * frames_local, S, m.heads, S, m.kv_heads, m.head_dim, dtype))
    temporal = video_block_act(p, B * s * T, video_rope_positions(p, T),
                               softmax_core_act(B * s, T, m.heads, T, m.kv_heads, m.head_dim, dtype))
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


register(Method("dsp", validate=validate, layout=layout, build=build, comm_cost=comm_cost, memory_cost=memory_cost,
                workloads=("video",), model_kinds=("video",)))

from . import baselines  # noqa: E402,F401  (the embedded-SP variants of ulysses, ring, tp_sp)
