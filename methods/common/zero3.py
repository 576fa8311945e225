"""ZeRO-3 through FSDP2: parameters sharded over the SP group, gathered for forward, gathered again
for backward (resharded after forward), gradients reduce-scattered with SUM semantics (the ranks hold
disjoint tokens of one batch, so their gradients add up; FSDP2's default would average them)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard

from .config import Problem
from .cost import CommCost


def shard_(module: nn.Module, group: dist.ProcessGroup, device: torch.device) -> nn.Module:
    """Make `module` one FSDP2 unit over `group` (in place)."""
    if device.type == "meta":
        raise NotImplementedError(
            "ZeRO-3 cannot run on the meta device: FSDP2 refuses meta parameters (it wants them "
            "materialised before training). The nearest check runs it on CPU with meta as the default "
            "device, so a tensor made without the device of its data fails there (tests/test_meta_device.py)"
        )
    with unset_fake_temporarily():  # the mesh keeps its rank map as real tensors (mode=dryrun)
        mesh = DeviceMesh.from_group(group, device.type)
    sharded = fully_shard(module, mesh=mesh, reshard_after_forward=True)  # the same module, now FSDP's
    sharded.set_gradient_divide_factor(1.0)
    if device.type == "cpu":  # gloo has no PREMUL_SUM, which a divide factor would otherwise select
        sharded.set_force_sum_reduction_for_comms(True)
    return module


def full_grad(param: nn.Parameter) -> torch.Tensor:
    """The whole gradient of a (possibly sharded) parameter."""
    grad = param.grad
    assert grad is not None, "full_grad after a backward pass: the parameter has no gradient"
    return grad.full_tensor() if hasattr(grad, "full_tensor") else grad


def unit_bytes(shapes: Sequence[tuple[int, ...]], n: int, elem: int) -> int:
    """Bytes of one FSDP2 unit's all-gather output (= its gradient reduce-scatter input): every
    parameter is split on dim 0 and padded to n equal shards."""
    return n * sum(math.ceil(s[0] / n) * math.prod(s[1:]) for s in shapes) * elem


def unit_cost(p: Problem, shapes: Sequence[tuple[int, ...]], units: int = 1) -> CommCost:
    """`units` FSDP2 units with these parameter shapes: all-gather forward, all-gather again in
    backward, reduce-scatter of the gradients."""
    full, n = unit_bytes(shapes, p.world_size, p.elem_bytes), p.world_size
    return (
        CommCost()
        .add("fwd", "all_gather", full, n, times=units)
        .add("bwd", "all_gather", full, n, times=units)
        .add("bwd", "reduce_scatter", full, n, times=units)
    )
