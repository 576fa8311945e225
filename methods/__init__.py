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
    workloads: tuple[str, ...] = ("llm",)
    model_kinds: tuple[str, ...] = ("llama",)


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} registered twice")
    REGISTRY[method.name] = method
    return method


def get(name: str) -> Method:
    if name not in REGISTRY:
        raise InvalidConfig(f"unknown method {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg and info.name != "common":
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()
