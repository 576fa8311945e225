"""Tensor-parallel weight pieces: a rank's rows or columns of a reference weight, as a parameter of
its own (TP-SP, Odysseus and the video TP baseline)."""

from __future__ import annotations

import torch
from torch import nn


def rows(weight: torch.Tensor, rank: int, n: int) -> torch.Tensor:
    """Rank's contiguous block of output rows of a [out, in] weight."""
    return weight.chunk(n, dim=0)[rank]


def cols(weight: torch.Tensor, rank: int, n: int) -> torch.Tensor:
    """Rank's contiguous block of input columns of a [out, in] weight."""
    return weight.chunk(n, dim=1)[rank]


def local_param(weight: torch.Tensor, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    """A parameter of its own (a copy) from a piece of a reference weight."""
    return nn.Parameter(weight.detach().to(device=device, dtype=dtype, copy=True))
