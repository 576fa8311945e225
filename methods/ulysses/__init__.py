"""DeepSpeed-Ulysses: all-to-all q, k, v from a sequence shard to a head group over the whole
sequence, ordinary attention per head group, all-to-all the output back.

Layout: contiguous sequence shards. GQA: kv heads are exchanged at their own count when they divide
over the ranks; with fewer kv heads than ranks each kv head is repeated N/Hkv times before the
exchange (so every rank receives the one kv head its query heads use) and its gradient is summed back
by autograd.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from functools import partial

import torch
import torch.distributed as dist

from methods import Method, register
from methods.common import layout as layouts
from methods.common.collectives import heads_to_seq, seq_to_heads
from methods.common.config import InvalidConfig, Problem
from methods.common.cost import CommCost
from methods.common.layers import LocalAttention, is_softmax_layer, llama_block_shapes
from methods.common.options import ShardedOptions
from methods.common.memory import MemCost, linear_kernel_act, llama_layer_act, positions_storage, replicated_memory, softmax_core_act
from methods.common.replicated import ReplicatedSequenceModel, param_sync_cost


@dataclass(frozen=True)
class UlyssesOptions(ShardedOptions):
    # video workload: Ulysses on the temporal attention only (the DSP paper's baseline), or on the
    # spatial attention too (as Open-Sora v1.0 applied it)
    video_attention: Literal["temporal", "all"] = "temporal"


def kv_heads_exchanged(kv_heads: int, n: int) -> int:
    """kv heads that travel: their own count, or n once each is repeated n/kv_heads times."""
    return kv_heads if kv_heads >= n else n


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, local: LocalAttention,
                      group: dist.ProcessGroup) -> torch.Tensor:
    """q [B, L/N, H, D], k/v [B, L/N, Hkv, D] on a contiguous shard -> out [B, L/N, H, D]; `local` is
    the layer's single-device kernel, run on a head group over the whole sequence."""
    n = dist.get_world_size(group)
    if hasattr(local, "for_heads"):  # per-head kernel state (linear attention decay): this rank's heads
        heads = q.shape[2] // n
        local = local.for_heads(dist.get_rank(group) * heads, heads)
    if k.shape[2] < n:
        rep = n // k.shape[2]
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    q, k, v = (seq_to_heads(t, group) for t in (q, k, v))  # [B, L, heads/N, D]
    return heads_to_seq(local(q, k, v, causal), group)


# ---- layout and checks -----------------------------------------------------------------------------

def check_heads(heads: int, kv_heads: int, n: int, what: str = "Ulysses degree") -> None:
    if heads % n:
        raise InvalidConfig(f"heads={heads} is not divisible by the {what} {n}: each rank takes whole query heads")
    if kv_heads % n and n % kv_heads:
        raise InvalidConfig(f"kv_heads={kv_heads} and the {what} {n} must divide one another "
                            f"(kv heads are split over ranks, or each repeated {what}/kv_heads times)")


def validate(p: Problem) -> None:
    check_heads(p.model.heads, p.model.kv_heads, p.world_size)
    layouts.check_divisible("contiguous", p.workload.seq_len, p.world_size)


@layouts.real_indices
def layout(p: Problem) -> list[torch.Tensor]:
    return layouts.make("contiguous", p.workload.seq_len, p.world_size)


def build(p: Problem, reference, device: torch.device) -> ReplicatedSequenceModel:
    group = dist.group.WORLD
    core = partial(ulysses_attention, group=group)
    positions = layout(p)[dist.get_rank()]
    return ReplicatedSequenceModel(reference, positions, p.workload.causal, core, group, p.torch_dtype, device,
                                   zero3=p.options.zero3)


# ---- cost model ------------------------------------------------------------------------------------

def attention_cost(batch: int, tokens_local: int, heads: int, kv_heads: int, head_dim: int, n: int,
                   elem: int) -> CommCost:
    """One Ulysses attention call: forward a2a of q, k, v and out; backward a2a of dout, dq, dk, dv.
    Each all-to-all's input is a [B, L/N, heads, D] shard (the output exchange moves as many bytes)."""
    q_bytes = batch * tokens_local * heads * head_dim * elem
    kv_bytes = batch * tokens_local * kv_heads_exchanged(kv_heads, n) * head_dim * elem
    cost = CommCost()
    for phase in ("fwd", "bwd"):
        cost.add(phase, "all_to_all", q_bytes, n, times=2)  # q and out (fwd) / dout and dq (bwd)
        cost.add(phase, "all_to_all", kv_bytes, n, times=2)  # k and v / dk and dv
    return cost


def comm_cost(p: Problem) -> CommCost:
    m, w, n, e = p.model, p.workload, p.world_size, p.elem_bytes
    cost = CommCost()
    for _ in range(m.layers):
        cost += attention_cost(w.batch_size, w.seq_len // n, m.heads, m.kv_heads, m.head_dim, n, e)
    return cost + param_sync_cost(p, llama_block_shapes(m), m.layers)


# ---- memory model ----------------------------------------------------------------------------------

def attention_act(p: Problem, batch: int, length: int, n: int, softmax: bool = True) -> int:
    """One Ulysses attention over `length` tokens (whole sequence) on `n` ranks: what the local
    kernel keeps for this rank's head group over the whole sequence, and Wo's input (the output
    exchanged back to the rank's L/N tokens, all heads). The softmax kernel's saved output is Wo's
    input itself on one rank, where nothing is exchanged; the linear kernel saves no output."""
    m, e = p.model, p.elem_bytes
    heads, kv = m.heads // n, kv_heads_exchanged(m.kv_heads, n) // n
    wo_input = batch * (length // n) * m.heads * m.head_dim * e
    if not softmax:
        return wo_input + linear_kernel_act(batch, length, heads, m.head_dim, p.torch_dtype, p.workload.causal,
                                            bool(m.extra.get("decay")))
    return softmax_core_act(batch, length, heads, length, kv, m.head_dim, p.torch_dtype) + (wo_input if n > 1 else 0)


def memory_cost(p: Problem) -> MemCost:
    """Replicated weights (or ZeRO-3 shards); positions are a view of the whole arange (L int64)."""
    m, w, n = p.model, p.workload, p.world_size
    tokens = w.batch_size * w.seq_len // n
    layers = [llama_layer_act(p, tokens, w.seq_len // n,
                              attention_act(p, w.batch_size, w.seq_len, n, is_softmax_layer(m, i)))
              for i in range(m.layers)]
    return replicated_memory(p, llama_block_shapes(m), tokens, positions_storage(w.seq_len, p.world_size), layers)


register(Method("ulysses", validate=validate, layout=layout, build=build, comm_cost=comm_cost, memory_cost=memory_cost,
                model_kinds=("llama", "linear", "hybrid"), options=UlyssesOptions))
