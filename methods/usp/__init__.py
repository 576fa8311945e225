"""USP, unified sequence parallelism: Ulysses over `ulysses_degree` ranks inside Ring over
`ring_degree` ranks (ulysses_degree x ring_degree == world_size).

Layout: the sequence is first laid out for the ring (basic / zigzag / stripe over ring_degree
segments), then each segment is split contiguously over its Ulysses ranks; the Ulysses all-to-all
rebuilds the ring segment for a head group, the ring runs over the segments, and the inverse
all-to-all returns the rank's own tokens. Placement: `ulysses_inner` puts each Ulysses group on
consecutive ranks (the fast links of a node carry the all-to-all), `ring_inner` puts each ring there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

import torch
import torch.distributed as dist

from methods import Method, register
from methods.common import layout as layouts
from methods.common.collectives import heads_to_seq, seq_to_heads
from methods.common.config import InvalidConfig, Problem
from methods.common.cost import CommCost
from methods.common.layers import LocalAttention, llama_block_shapes
from methods.common.options import ShardedOptions
from methods.common.memory import MemCost, llama_layer_act, positions_storage, replicated_memory, softmax_core_act
from methods.common.replicated import ReplicatedSequenceModel, param_sync_cost
from methods.ring import attention_cost as ring_cost
from methods.ring import RingLayout, ring_attention
from methods.ulysses import attention_cost as ulysses_cost
from methods.ulysses import check_heads, kv_heads_exchanged



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


def usp_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, local: LocalAttention,
                  ulysses_group: dist.ProcessGroup, ring_group: dist.ProcessGroup, layout: str) -> torch.Tensor:
    """q [B, L/N, H, D], k/v [B, L/N, Hkv, D] -> out [B, L/N, H, D]."""
    u = dist.get_world_size(ulysses_group)
    if k.shape[2] < u:  # fewer kv heads than Ulysses ranks: repeat, as Ulysses does
        k, v = k.repeat_interleave(u // k.shape[2], dim=2), v.repeat_interleave(u // v.shape[2], dim=2)
    q, k, v = (seq_to_heads(t, ulysses_group) for t in (q, k, v))  # [B, L/R, heads/U, D]: a ring segment
    return heads_to_seq(ring_attention(q, k, v, causal, local, ring_group, layout), ulysses_group)


# ---- degrees, placement, layout --------------------------------------------------------------------

def degrees(p: Problem) -> tuple[int, int]:
    """(ulysses_degree, ring_degree); unset degrees default to the largest divisor of world_size not
    above its square root for Ulysses (2 x 2 on 4 ranks, 2 x 4 on 8) and the rest for the ring."""
    n, ud, rd = p.world_size, p.options.ulysses_degree, p.options.ring_degree
    if ud is None and rd is None:
        ud = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    if ud is None:
        ud = n // rd if rd and n % rd == 0 else 0
    if rd is None:
        rd = n // ud if ud and n % ud == 0 else 0
    return ud, rd


def grid_position(p: Problem, rank: int) -> tuple[int, int]:
    """(ring index, Ulysses index) of a global rank under the placement."""
    ud, rd = degrees(p)
    if p.options.placement == "ulysses_inner":
        return rank // ud, rank % ud
    return rank % rd, rank // rd


def validate(p: Problem) -> None:
    ud, rd = degrees(p)
    if ud < 1 or rd < 1 or ud * rd != p.world_size:
        raise InvalidConfig(f"method.ulysses_degree x method.ring_degree must equal world_size={p.world_size}, "
                            f"got {p.options.ulysses_degree} x {p.options.ring_degree}")
    check_heads(p.model.heads, p.model.kv_heads, ud)
    layouts.check_divisible(p.options.layout, p.workload.seq_len, rd)
    if (p.workload.seq_len // rd) % ud:
        raise InvalidConfig(f"seq_len {p.workload.seq_len} / ring_degree {rd} is not divisible by the "
                            f"ulysses_degree {ud} (each ring segment is split over the Ulysses ranks)")


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
    return ReplicatedSequenceModel(reference, positions, p.workload.causal, core, dist.group.WORLD,
                                   p.torch_dtype, device, zero3=p.options.zero3)


# ---- cost model ------------------------------------------------------------------------------------

def comm_cost(p: Problem) -> CommCost:
    m, w, n = p.model, p.workload, p.world_size
    ud, rd = degrees(p)
    kv_per_ring_rank = kv_heads_exchanged(m.kv_heads, ud) // ud
    cost = CommCost()
    for _ in range(m.layers):
        cost += ulysses_cost(w.batch_size, w.seq_len // n, m.heads, m.kv_heads, m.head_dim, ud, p.elem_bytes)
        cost += ring_cost(w.batch_size, w.seq_len // rd, kv_per_ring_rank, m.head_dim, rd, p.torch_dtype)
    return cost + param_sync_cost(p, llama_block_shapes(m), m.layers)


# ---- memory model ----------------------------------------------------------------------------------

def memory_cost(p: Problem) -> MemCost:
    """The ring attention's saved q, k, v, output and LSE on a ring segment (L/R tokens) for a head
    group (H/U heads), plus Wo's input exchanged back to the rank's L/N tokens when U > 1, and the
    rank's own L/N positions."""
    m, w, n = p.model, p.workload, p.world_size
    ud, rd = degrees(p)
    tokens_local, segment = w.seq_len // n, w.seq_len // rd
    attention = softmax_core_act(w.batch_size, segment, m.heads // ud, segment, kv_heads_exchanged(m.kv_heads, ud) // ud,
                                 m.head_dim, p.torch_dtype)
    if ud > 1:
        attention += w.batch_size * tokens_local * m.heads * m.head_dim * p.elem_bytes
    layer = llama_layer_act(p, w.batch_size * tokens_local, tokens_local, attention)
    return replicated_memory(p, llama_block_shapes(m), w.batch_size * tokens_local,
                             positions_storage(w.seq_len, p.world_size), [layer] * m.layers)


register(Method("usp", validate=validate, layout=layout, build=build, comm_cost=comm_cost, memory_cost=memory_cost,
                options=UspOptions))
