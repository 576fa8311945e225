"""Method registry. Each method package registers a `Method` under its config name; importing
`methods` imports every package below it, so a new method needs no edit here."""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

from .common.config import InvalidConfig, Problem
from .common.cost import CommCost
from .common.memory import MemCost


class ParallelModel(Protocol):
    """What a method builds on each rank (an nn.Module)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...  # local input shard -> local output shard

    def finish_grads(self) -> None: ...  # gradient sync that belongs to the step (counted, backward phase)

    def full_grads(self) -> dict[str, torch.Tensor]: ...  # reference parameter name -> full gradient (verify)


@dataclass(frozen=True)
class Method:
    name: str
    validate: Callable[[Problem], None]  # raise InvalidConfig with a message that says what to change
    layout: Callable[[Problem], list[torch.Tensor]]  # global token indices held by each rank
    build: Callable[[Problem, nn.Module, torch.device], nn.Module]  # (problem, reference, device) -> ParallelModel
    comm_cost: Callable[[Problem], CommCost]  # exact per-rank bytes of one step
    memory_cost: Callable[[Problem], MemCost] | None = None  # per-rank memory of one step, by category
    workloads: tuple[str, ...] = ("llm",)
    model_kinds: tuple[str, ...] = ("llama",)


# name -> variants; a method may run on several workloads / model kinds with one variant each (e.g.
# `ulysses` on the LLM block, registered by methods/ulysses, and on the video block, registered by
# methods/dsp from the same building blocks).
REGISTRY: dict[str, list[Method]] = {}


def register(method: Method) -> Method:
    for other in REGISTRY.get(method.name, []):
        if set(other.workloads) & set(method.workloads) and set(other.model_kinds) & set(method.model_kinds):
            raise ValueError(f"method {method.name!r} registered twice for the same workload and model kind")
    REGISTRY.setdefault(method.name, []).append(method)
    return method


def names() -> list[str]:
    return sorted(REGISTRY)


def for_problem(p: Problem) -> Method:
    """The variant of `p.method` that runs p's workload and model kind; InvalidConfig otherwise."""
    if p.method not in REGISTRY:
        raise InvalidConfig(f"unknown method {p.method!r}; registered: {', '.join(names())}")
    for m in REGISTRY[p.method]:
        if p.workload.name in m.workloads and p.model.kind in m.model_kinds:
            return m
    runs = "; ".join(f"workloads {', '.join(m.workloads)} with model kinds {', '.join(m.model_kinds)}"
                     for m in REGISTRY[p.method])
    raise InvalidConfig(f"method {p.method!r} does not run workload {p.workload.name!r} with model "
                        f"{p.model.name!r} (kind {p.model.kind!r}); it runs {runs}")


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg and info.name != "common":
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()
