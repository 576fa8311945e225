"""The reference stack run on one rank's tokens with replicated weights and a distributed attention
core: the shape shared by every method that only changes how attention sees the sequence
(Ulysses, Ring, USP, all-gather CP, ...)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from .attention_call import AttentionCall
from .collectives import sum_grads
from .config import Problem
from .cost import CommCost
from .layers import AttentionCore, copy_to, llama_block_shapes
from .memory import MemCost, llama_layer_act, positions_storage, replicated_memory
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


def sequence_sharded_comm_cost(p: Problem, attention_cost: Callable[[AttentionCall], CommCost]) -> CommCost:
    """A replicated Llama block whose layers communicate only in attention (Ulysses, ring, all-gather
    CP): each layer's attention call, then the parameters' gradient sync."""
    cost = CommCost()
    for _ in range(p.model.layers):
        cost += attention_cost(AttentionCall.of(p))
    return cost + param_sync_cost(p, llama_block_shapes(p.model), p.model.layers)


def sequence_sharded_memory_cost(p: Problem, attention_act: Callable[[AttentionCall], int]) -> MemCost:
    """Per-rank memory of that block: replicated weights (or ZeRO-3 shards), L/N tokens per rank, and
    each layer's activations with what its attention call saves."""
    m, w, n = p.model, p.workload, p.world_size
    tokens_local = w.seq_len // n
    layers = [
        llama_layer_act(p, w.batch_size * tokens_local, tokens_local, attention_act(AttentionCall.of(p, i)))
        for i in range(m.layers)
    ]
    return replicated_memory(
        p, llama_block_shapes(m), w.batch_size * tokens_local, positions_storage(w.seq_len, n), layers
    )
