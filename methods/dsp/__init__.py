"""DSP, dynamic sequence parallelism (arXiv 2403.10266), on the spatial-temporal block: keep the data
sharded on the dimension the current stage does not attend over, and switch between stages with one
all-to-all. The resident shard is S ([B, T, S/N, C]): before each spatial block one switch makes S
whole and shards T, after it the inverse switch returns to the S-shard, and the temporal block runs
locally. 2 all-to-alls per layer forward, 2 backward, each moving (N-1)/N^2 of the activation.

T or S not divisible by N (T < N included): the switch pads T to a multiple of N and trims it back,
and spatial shards (which differ by at most one token) travel padded to the largest; padding never
reaches a result, so it contributes nothing to outputs or gradients. No head-count constraint:
switches move whole tokens.

The parallel core: methods/dsp/model.py; communication and memory models: methods/dsp/cost.py; the
embedded baselines on the same block (video variants of ulysses, ring, tp_sp): methods/dsp/baselines/.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from methods import Method, register
from methods.common import layout as layouts
from methods.common.config import InvalidConfig, Problem
from methods.common.options import MethodOptions
from methods.common.video import check_video, video_shape

from .cost import comm_cost, memory_cost, rank_memory
from .model import DSPModel


@dataclass(frozen=True)
class DSPOptions(MethodOptions):
    """DSP has no options: the resident shard (S) and the switch placement (around the spatial stage)
    are fixed, as in the paper's benchmark block."""


def validate(p: Problem) -> None:
    check_video(p)
    if p.workload.spatial < p.world_size:
        raise InvalidConfig(
            f"workload.spatial={p.workload.spatial} is below world_size={p.world_size}: "
            "DSP keeps a spatial shard on every rank"
        )


@layouts.real_indices
def layout(p: Problem) -> list[torch.Tensor]:
    """Rank r holds its run of spatial positions in every frame (flattened t-major); runs differ by at
    most one token when N does not divide S."""
    _, T, S = video_shape(p)
    grid = torch.arange(T * S, device="cpu").view(T, S)
    return [shard.reshape(-1) for shard in grid.tensor_split(p.world_size, dim=1)]


def build(p: Problem, reference: nn.Module, device: torch.device) -> DSPModel:
    return DSPModel(reference, dist.group.WORLD, p.torch_dtype, device)


register(
    Method(
        "dsp",
        validate=validate,
        layout=layout,
        build=build,
        comm_cost=comm_cost,
        memory_cost=memory_cost,
        workloads=("video",),
        model_kinds=("video",),
        options=DSPOptions,
    )
)

# the embedded-SP variants of ulysses, ring, tp_sp, registered after dsp itself
from . import baselines  # noqa: E402, F401 -- imported for its registrations, in this order

__all__ = ["DSPModel", "DSPOptions", "rank_memory"]
