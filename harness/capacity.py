"""Does one rank's memory fit its device, and what does training add beyond the one measured step?

`fit_fields` gives a row its capacity fields: the one-step per-rank peak (measured or dryrun) plus the
training-state terms of `training_state_bytes`, against the hardware profile's `memory_GiB` (per device;
`null` on the CPU profile: this machine's RAM shared by the job's ranks).

Training-state terms (`train.optimizer`, `train.recompute`) are model-only: they come from the method's
memory model (`methods.for_problem(p).memory_cost(p)`), never from a measured optimizer step.

Counted:
  optimizer=adamw_mixed  bf16 (run-dtype) parameters and gradients are already in the step; AdamW adds an
                         fp32 master copy and two fp32 moments: 12 bytes per parameter element the rank
                         holds, sharded under ZeRO-3 exactly as the method shards its parameters (padded
                         FSDP2 shards), replicated otherwise (tp_sp/odysseus: the rank's TP shards).
  recompute=full         full activation checkpointing per layer: the step keeps each layer's input (one
                         residual-stream shard per layer) and, in backward, one layer's recomputed
                         activations (the largest layer kind of the stack); it replaces the step's saved
                         activations.
Not counted: fp32 gradient accumulation buffers (Megatron's main_grad), the optimizer's temporaries
during its update, ZeRO-1/2 sharding of optimizer state without ZeRO-3, data-parallel replicas,
embeddings, the LM head and loss, the backward's transient buffers beyond what the step's peak holds,
the CUDA context and allocator fragmentation, and selective recompute."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace

import methods
from methods.common.config import InvalidConfig, Problem
from methods.common.memory import MemCost

log = logging.getLogger(__name__)

OPTIMIZERS = ("none", "adamw_mixed")
RECOMPUTE = ("none", "full")
ADAMW_MIXED_BYTES = 4 + 4 + 4  # fp32 master, first and second moment per parameter element


def check_train(optimizer: str, recompute: str) -> None:
    if optimizer not in OPTIMIZERS:
        raise InvalidConfig(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if recompute not in RECOMPUTE:
        raise InvalidConfig(f"train.recompute must be one of {', '.join(RECOMPUTE)}, got {recompute!r}")


def param_elements(p: Problem, per_rank_mem: MemCost) -> int:
    """Parameter elements this rank holds: every memory model gives the weights (its shards under
    ZeRO-3 or TP) one gradient each, and the input x one gradient: grad = weights + input / 2."""
    return (per_rank_mem.grad - per_rank_mem.input // 2) // p.elem_bytes


def memory_model(p: Problem) -> MemCost:
    """The per-rank memory model of p's method (one step, by category)."""
    return methods.for_problem(p).memory_cost(p)


def one_layer_act(p: Problem) -> int:
    """Saved activations of one layer of p's stack run alone, its output included: the largest layer
    kind. A hybrid stack's softmax layer (every `hybrid_period`-th) is what the stack up to it saves
    beyond the stack before it, plus what a one-layer stack keeps beyond one layer of a two-layer one
    (the output stream a low-precision stack keeps once)."""

    def act(layers: int) -> int:
        q = replace(p, model=replace(p.model, layers=layers))
        return memory_model(q).act

    first = act(1)
    period = p.model.extra.get("hybrid_period", 4)
    if p.model.kind != "hybrid" or period < 2 or p.model.layers < period:
        return first
    once = 2 * first - act(2)
    return max(first, act(period) - act(period - 1) + once)


def training_state_bytes(p: Problem, optimizer: str, recompute: str, per_rank_mem: MemCost) -> dict:
    """What training adds to (or saves from) `per_rank_mem`, p's one-step per-rank memory model:
    train_optimizer_bytes (added), train_recompute_saved_bytes (removed from the saved activations),
    train_act_bytes (the activations kept under the recompute choice) and train_model_bytes (the model's
    per-rank total under training)."""
    check_train(optimizer, recompute)
    optimizer_bytes = ADAMW_MIXED_BYTES * param_elements(p, per_rank_mem) if optimizer == "adamw_mixed" else 0
    act = per_rank_mem.act
    if recompute == "full":
        layer_input = per_rank_mem.input // 2  # x, the residual-stream shard every layer starts from
        act = min(act, p.model.layers * layer_input + one_layer_act(p))
    return {
        "train_optimizer": optimizer,
        "train_recompute": recompute,
        "train_optimizer_bytes": optimizer_bytes,
        "train_recompute_saved_bytes": per_rank_mem.act - act,
        "train_act_bytes": act,
        "train_model_bytes": per_rank_mem.total + optimizer_bytes - (per_rank_mem.act - act),
    }


def ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def capacity_bytes(hardware: Mapping, world_size: int) -> int:
    """One rank's memory: the profile's memory_GiB per device, or (null) this machine's RAM over the
    job's ranks, as a CPU job runs them all here."""
    gib = hardware.get("memory_GiB")
    if gib is None:
        return ram_bytes() // world_size
    return int(gib * 2**30)


def fit_fields(p: Problem, hardware: Mapping, peak_bytes: int, train: Mapping | None) -> dict:
    """Row fields: fits, mem_capacity_bytes, mem_required_bytes (the one-step peak `peak_bytes` plus the
    optimizer state, less what recompute saves), mem_headroom_bytes (capacity - required; negative:
    does not fit) and the training-state terms of `training_state_bytes`."""
    train = train or {}
    per_rank_mem = memory_model(p)
    terms = training_state_bytes(
        p, train.get("optimizer", "none"), train.get("recompute", "none"), per_rank_mem
    )
    required = peak_bytes + terms["train_optimizer_bytes"] - terms["train_recompute_saved_bytes"]
    capacity = capacity_bytes(hardware, p.world_size)
    log.debug("%s: %d bytes required of %d on %s", p.method, required, capacity, hardware.get("name"))
    return {
        "fits": required <= capacity,
        "mem_capacity_bytes": capacity,
        "mem_required_bytes": required,
        "mem_headroom_bytes": capacity - required,
        **terms,
    }
