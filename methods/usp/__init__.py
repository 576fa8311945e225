"""USP, unified sequence parallelism: Ulysses over `ulysses_degree` ranks inside Ring over
`ring_degree` ranks (ulysses_degree x ring_degree == world_size).

Layout: the sequence is first laid out for the ring (basic / zigzag / stripe over ring_degree
segments), then each segment is split contiguously over its Ulysses ranks; the Ulysses all-to-all
rebuilds the ring segment for a head group, the ring runs over the segments, and the inverse
all-to-all returns the rank's own tokens. Placement: `ulysses_inner` puts each Ulysses group on
consecutive ranks (the fast links of a node carry the all-to-all), `ring_inner` puts each ring there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

import torch
import torch.distributed as dist

from methods import Method, register
from methods.common import layout as layouts
from methods.common.attention_call import check_heads
from methods.common.config import InvalidConfig, Problem
from methods.common.options import ShardedOptions
from methods.common.replicated import ReplicatedSequenceModel
from methods.ring import RingLayout

from .attention import usp_attention
from .cost import comm_cost, memory_cost
from .grid import degrees, grid_position


@dataclass(frozen=True)
class UspOptions(ShardedOptions):
    ulysses_degree: int | None = None  # None: largest divisor of world_size not above its square root
    ring_degree: int | None = None  # None: world_size / ulysses_degree
    # ulysses_inner: Ulysses groups on consecutive ranks (a node's fast links carry the all-to-all)
    placement: Literal["ulysses_inner", "ring_inner"] = "ulysses_inner"
    layout: RingLayout = "zigzag"  # the ring's layout

    def resolved(self, p: Problem) -> UspOptions:
        ud, rd = degrees(p)
        return replace(self, ulysses_degree=ud, ring_degree=rd)


def validate(p: Problem) -> None:
    ud, rd = degrees(p)
    if ud < 1 or rd < 1 or ud * rd != p.world_size:
        raise InvalidConfig(
            f"method.ulysses_degree x method.ring_degree must equal world_size={p.world_size}, "
            f"got {p.options.ulysses_degree} x {p.options.ring_degree}"
        )
    check_heads(p.model.heads, p.model.kv_heads, ud, "Ulysses degree")
    layouts.check_divisible(p.options.layout, p.workload.seq_len, rd)
    if (p.workload.seq_len // rd) % ud:
        raise InvalidConfig(
            f"seq_len {p.workload.seq_len} / ring_degree {rd} is not divisible by the "
            f"ulysses_degree {ud} (each ring segment is split over the Ulysses ranks)"
        )


@layouts.real_indices
def layout(p: Problem) -> list[torch.Tensor]:
    ud, rd = degrees(p)
    segments = layouts.make(p.options.layout, p.workload.seq_len, rd)
    out = []
    for rank in range(p.world_size):
        ring_index, ulysses_index = grid_position(p, rank)
        out.append(segments[ring_index].chunk(ud)[ulysses_index].clone())  # its own storage (layout.py)
    return out


def build(p: Problem, reference, device: torch.device) -> ReplicatedSequenceModel:
    ud, rd = degrees(p)
    members = {r: grid_position(p, r) for r in range(p.world_size)}
    ulysses_groups = [[r for r, (i, _) in members.items() if i == ring_index] for ring_index in range(rd)]
    ring_groups = [[r for r, (_, u) in members.items() if u == ulysses_index] for ulysses_index in range(ud)]
    # every rank takes part in creating every group, in the same order
    ulysses_group, _ = dist.new_subgroups_by_enumeration(ulysses_groups)
    ring_group, _ = dist.new_subgroups_by_enumeration(ring_groups)
    core = partial(usp_attention, ulysses_group=ulysses_group, ring_group=ring_group, layout=p.options.layout)
    positions = layout(p)[dist.get_rank()]
    return ReplicatedSequenceModel(
        reference,
        positions,
        p.workload.causal,
        core,
        dist.group.WORLD,
        p.torch_dtype,
        device,
        zero3=p.options.zero3,
    )


register(
    Method(
        "usp",
        validate=validate,
        layout=layout,
        build=build,
        comm_cost=comm_cost,
        memory_cost=memory_cost,
        options=UspOptions,
    )
)

__all__ = ["UspOptions", "degrees", "grid_position", "usp_attention"]
