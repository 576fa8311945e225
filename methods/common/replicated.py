"""The reference stack run on one rank's tokens with replicated weights and a distributed attention
core: the shape shared by every method that only changes how attention sees the sequence
(Ulysses, Ring, USP, all-gather CP, ...)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from .collectives import sum_grads
from .config import Problem
from .cost import CommCost
from .layers import AttentionCore, copy_to
from .options import zero3
from .zero3 import full_grad, shard_, unit_cost


class ReplicatedSequenceModel(nn.Module):
    """With `zero3` every block is one FSDP2 unit (see zero3.py) instead of a replica."""

    def __init__(
        self,
        reference: nn.Module,
        positions: torch.Tensor,
        causal: bool,
        core: AttentionCore,
        group: dist.ProcessGroup,
        dtype: torch.dtype,
        device: torch.device,
        zero3: bool = False,
    ):
        super().__init__()
        self.model = copy_to(reference, device, dtype)
        self.register_buffer("positions", positions.to(device), persistent=False)
        self.causal, self.core, self.group, self.zero3 = causal, core, group, zero3
        if zero3:
            blocks = self.model.blocks
            assert isinstance(blocks, nn.ModuleList)
            for block in blocks:
                shard_(block, group, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.causal, self.positions, core=self.core)

    def finish_grads(self) -> None:
        # Every rank saw different tokens of the same weights: their gradients add up (SP ranks are
        # data-parallel ranks for the weights, as in DeepSpeed-Ulysses). Under ZeRO-3 the backward's
        # reduce-scatter already did it.
        if not self.zero3:
            sum_grads(list(self.parameters()), self.group)

    def full_grads(self) -> dict[str, torch.Tensor]:
        return {name: full_grad(p) for name, p in self.model.named_parameters()}


def param_sync_cost(p: Problem, block_shapes: list[tuple[int, ...]], layers: int) -> CommCost:
    """Parameter traffic of a step for `layers` blocks with these parameter shapes: one SUM all-reduce
    of all gradients over the SP group after backward, or with `method.zero3` per block an all-gather
    forward, one backward and a reduce-scatter of its gradients."""
    if zero3(p):
        return unit_cost(p, block_shapes, units=layers)
    params = layers * sum(math.prod(s) for s in block_shapes)
    return CommCost().add("bwd", "all_reduce", params * p.elem_bytes, p.world_size)
