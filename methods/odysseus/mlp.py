"""Odysseus' MLP: the reference SwiGLU whole on the rank's own tokens, its weights ZeRO-3 sharded."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from methods.common.layers import copy_to
from methods.common.zero3 import full_grad, shard_


class ZeRO3MLP(nn.Module):
    """The reference SwiGLU on local tokens, one FSDP2 unit over the SP group."""

    def __init__(
        self, ref_mlp: nn.Module, group: dist.ProcessGroup, dtype: torch.dtype, device: torch.device
    ):
        super().__init__()
        self.mlp = shard_(copy_to(ref_mlp, device, dtype), group, device)

    def forward(self, x_local: torch.Tensor) -> torch.Tensor:
        return self.mlp(x_local)

    def full_grads(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{name}": full_grad(p) for name, p in self.mlp.named_parameters()}
