"""Embedded sequence parallelism on the spatial-temporal block, as the DSP paper compares it: the
flattened sequence is sharded over frames, spatial blocks are local (whole frames), and only the
temporal attention communicates, through Ulysses or Ring; Megatron-SP (TP-SP) communicates around
every attention and MLP. Registered as the `video` variants of ulysses, ring and tp_sp.

Parallel models: baselines/model.py; communication and memory models: baselines/cost.py."""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
from torch import nn

from methods import Method, register
from methods.common import layout as layouts
from methods.common.attention_call import check_heads
from methods.common.config import InvalidConfig, Problem
from methods.common.layers import local_core
from methods.common.video import check_video
from methods.ring import RingOptions, ring_attention
from methods.ulysses import UlyssesOptions, ulysses_attention

from .cost import ring_memory, ring_video_cost, tp_memory, tp_video_cost, ulysses_memory, ulysses_video_cost
from .model import FrameShardModel, TPVideoModel, spatial_ulysses


@layouts.real_indices
def frame_layout(p: Problem) -> list[torch.Tensor]:
    return layouts.contiguous(p.workload.frames * p.workload.spatial, p.world_size)


def check_frames(p: Problem) -> None:
    check_video(p)
    if p.workload.frames % p.world_size:
        raise InvalidConfig(
            f"workload.frames={p.workload.frames} is not divisible by world_size={p.world_size}: "
            f"{p.method} shards the frames (DSP pads them instead)"
        )


def ulysses_validate(p: Problem) -> None:
    check_frames(p)
    check_heads(p.model.heads, p.model.kv_heads, p.world_size, "Ulysses degree")
    if p.options.video_attention == "all" and p.model.kv_heads < p.world_size:
        raise InvalidConfig("method.video_attention=all needs kv_heads >= world_size")


def ulysses_build(p: Problem, reference: nn.Module, device: torch.device) -> FrameShardModel:
    group = dist.group.WORLD
    spatial = local_core  # passed explicitly: None would select the reference math path
    if p.options.video_attention == "all":
        spatial = partial(spatial_ulysses, group=group, frames_local=p.workload.frames // p.world_size)
    return FrameShardModel(
        reference, partial(ulysses_attention, group=group), group, p.torch_dtype, device, spatial
    )


def ring_validate(p: Problem) -> None:
    check_frames(p)


def ring_build(p: Problem, reference: nn.Module, device: torch.device) -> FrameShardModel:
    group = dist.group.WORLD
    return FrameShardModel(
        reference, partial(ring_attention, group=group, layout="basic"), group, p.torch_dtype, device
    )


def tp_validate(p: Problem) -> None:
    check_video(p)
    m, n = p.model, p.world_size
    for name, value in (
        ("heads", m.heads),
        ("kv_heads", m.kv_heads),
        ("ffn_hidden", m.ffn_hidden),
        ("frames x spatial", p.workload.frames * p.workload.spatial),
    ):
        if value % n:
            raise InvalidConfig(f"{name}={value} is not divisible by the TP degree {n}")


def tp_build(p: Problem, reference: nn.Module, device: torch.device) -> TPVideoModel:
    return TPVideoModel(reference, dist.group.WORLD, p.torch_dtype, device)


VIDEO = {"workloads": ("video",), "model_kinds": ("video",)}
register(
    Method(
        "ulysses",
        validate=ulysses_validate,
        layout=frame_layout,
        build=ulysses_build,
        comm_cost=ulysses_video_cost,
        memory_cost=ulysses_memory,
        options=UlyssesOptions,
        unused_options=("zero3",),  # the video block's parameters stay replicated
        **VIDEO,
    )
)
register(
    Method(
        "ring",
        validate=ring_validate,
        layout=frame_layout,
        build=ring_build,
        comm_cost=ring_video_cost,
        memory_cost=ring_memory,
        options=RingOptions,
        unused_options=("zero3", "layout"),  # frames are sharded contiguously; parameters replicated
        **VIDEO,
    )
)
register(
    Method(
        "tp_sp",
        validate=tp_validate,
        layout=frame_layout,
        build=tp_build,
        comm_cost=tp_video_cost,
        memory_cost=tp_memory,
        **VIDEO,
    )
)
