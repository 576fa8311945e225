"""The reference stack run on one rank's tokens with replicated weights and a distributed attention
core: the shape shared by every method that only changes how attention sees the sequence
(Ulysses, Ring, USP, all-gather CP, ...)."""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from .collectives import sum_grads
from .config import Problem
from .cost import CommCost
from .layers import AttentionCore


class ReplicatedSequenceModel(nn.Module):
    def __init__(self, reference: nn.Module, positions: torch.Tensor, causal: bool, core: AttentionCore,
                 group: dist.ProcessGroup, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.model = copy.deepcopy(reference).to(device=device, dtype=dtype)
        self.register_buffer("positions", positions.to(device), persistent=False)
        self.causal, self.core, self.group = causal, core, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.causal, self.positions, core=self.core)

    def finish_grads(self) -> None:
        # Every rank saw different tokens of the same weights: their gradients add up (SP ranks are
        # data-parallel ranks for the weights, as in DeepSpeed-Ulysses).
        sum_grads(list(self.parameters()), self.group)

    def full_grads(self) -> dict[str, torch.Tensor]:
        return {name: p.grad for name, p in self.model.named_parameters()}


def param_sync_cost(p: Problem, params: int) -> CommCost:
    """Bytes of `finish_grads` for `params` replicated parameters: one SUM all-reduce of their
    gradients (in the run's dtype) over the SP group after backward."""
    return CommCost().add("bwd", "all_reduce", params * p.elem_bytes, p.world_size)
