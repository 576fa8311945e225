"""DSP's parallel core: the switch (one all-to-all that makes one dimension whole and shards the
other, padded to a multiple of N and trimmed back) and the model that runs every stage between two
switches on whole frames or whole positions."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from methods.common.collectives import sum_grads
from methods.common.layers import copy_to, local_core
from methods.common.video import conditioning, spatial_stage, temporal_stage


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


def switch(
    x: torch.Tensor, gather_dim: int, scatter_dim: int, gather_len: int, group: dist.ProcessGroup
) -> torch.Tensor:
    return Switch.apply(x, gather_dim, scatter_dim, gather_len, group)


def spatial_sizes(spatial: int, n: int) -> list[int]:
    """Spatial tokens per rank: as equal as possible (ceil for the first S mod N ranks)."""
    return [len(chunk) for chunk in torch.arange(spatial, device="cpu").tensor_split(n)]


class DSPModel(nn.Module):
    def __init__(
        self, reference: nn.Module, group: dist.ProcessGroup, dtype: torch.dtype, device: torch.device
    ):
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
            h = spatial_stage(
                layer.spatial, h.index_select(2, real), local_core, cond
            )  # whole frames, no padding
            h = h.new_zeros(*h.shape[:2], n * pad, C).index_copy(2, real, h)
            x = switch(h, 1, 2, m.frames, self.group).narrow(2, 0, sizes[r])  # back to [B, T, S_r, C]
            x = temporal_stage(layer.temporal, x, frames, local_core, cond)  # whole T: no communication
        return x.reshape(B, -1, C)

    def finish_grads(self) -> None:
        sum_grads(list(self.parameters()), self.group)  # replicated weights, disjoint tokens

    def full_grads(self) -> dict[str, torch.Tensor]:
        return {name: p.grad for name, p in self.model.named_parameters()}
