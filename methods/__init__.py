"""Method registry. Each method package registers a `Method` under its config name; importing
`methods` imports every package below it, each on its own, so a new method needs no edit here and a
package that fails to import is reported by name (`BROKEN`) while the others still register."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from hydra.core.config_store import ConfigStore
from torch import nn

from .common import options as opts
from .common.config import InvalidConfig, Problem
from .common.cost import CommCost
from .common.memory import MemCost

log = logging.getLogger(__name__)


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
    build: Callable[
        [Problem, nn.Module, torch.device], nn.Module
    ]  # (problem, reference, device) -> ParallelModel
    comm_cost: Callable[[Problem], CommCost]  # exact per-rank bytes of one step
    memory_cost: Callable[[Problem], MemCost]  # per-rank memory of one step, by category
    workloads: tuple[str, ...] = ("llm",)
    model_kinds: tuple[str, ...] = ("llama",)
    options: type[opts.MethodOptions] = opts.MethodOptions  # the typed `method.*` options (one per name)
    # options of the name that this variant has no use for (ring's layout on the video block): they
    # must stay at their default, and rows record None for them
    unused_options: tuple[str, ...] = ()


# name -> variants; a method may run on several workloads / model kinds with one variant each (e.g.
# `ulysses` on the LLM block, registered by methods/ulysses, and on the video block, registered by
# methods/dsp from the same building blocks). Every variant of a name takes the same options.
REGISTRY: dict[str, list[Method]] = {}
# package name -> why it failed to import (the last line of its traceback)
BROKEN: dict[str, str] = {}
# the ConfigStore group of the method schemas: conf/method/<m>.yaml starts from /method_schema/<m>
SCHEMA_GROUP = "method_schema"


def register(method: Method) -> Method:
    variants = REGISTRY.get(method.name, [])
    for other in variants:
        if set(other.workloads) & set(method.workloads) and set(other.model_kinds) & set(method.model_kinds):
            raise ValueError(f"method {method.name!r} registered twice for the same workload and model kind")
        if other.options is not method.options:
            raise ValueError(f"method {method.name!r}: every variant must take the same options class")
    if not variants:  # the schema of conf/method/<name>.yaml (its defaults list names it)
        # a group of its own, so that `method=glob(...)` in a sweep never picks a schema
        ConfigStore.instance().store(
            group=SCHEMA_GROUP, name=method.name, node=opts.schema(method.options, method.name)
        )
    REGISTRY.setdefault(method.name, []).append(method)
    return method


def names() -> list[str]:
    return sorted(REGISTRY)


def variants(name: str) -> list[Method]:
    """The registered variants of a method; InvalidConfig for an unknown or a broken one."""
    if name in BROKEN:
        raise InvalidConfig(f"method {name!r} failed to import: {BROKEN[name]}")
    if name not in REGISTRY:
        raise InvalidConfig(f"unknown method {name!r}; registered: {', '.join(names())}")
    return REGISTRY[name]


def options_class(name: str) -> type[opts.MethodOptions]:
    return variants(name)[0].options


def for_problem(p: Problem) -> Method:
    """The variant of `p.method` that runs p's workload and model kind; InvalidConfig otherwise."""
    for m in variants(p.method):
        if p.workload.name in m.workloads and p.model.kind in m.model_kinds:
            _refuse_unused_options(m, p)
            return m
    runs = "; ".join(
        f"workloads {', '.join(m.workloads)} with model kinds {', '.join(m.model_kinds)}"
        for m in REGISTRY[p.method]
    )
    raise InvalidConfig(
        f"method {p.method!r} does not run workload {p.workload.name!r} with model "
        f"{p.model.name!r} (kind {p.model.kind!r}); it runs {runs}"
    )


def _refuse_unused_options(m: Method, p: Problem) -> None:
    default = m.options()
    changed = [k for k in m.unused_options if getattr(p.options, k) != getattr(default, k)]
    if changed:
        raise InvalidConfig(
            f"method {m.name!r} on the {p.workload.name} workload does not use "
            f"{', '.join('method.' + k for k in changed)}; leave it at its default"
        )


def resolve_options(p: Problem) -> dict[str, Any]:
    """Every option of p's method with the value in effect (options left unset resolved, e.g. usp's
    degrees from the world size; None for one the variant does not use): what a result row records."""
    unused = for_problem(p).unused_options
    return {k: None if k in unused else v for k, v in opts.as_dict(p.options.resolved(p)).items()}


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg and info.name != "common":
            try:
                importlib.import_module(f"{__name__}.{info.name}")
            except Exception as e:  # noqa: BLE001 -- one broken method must not take the others down
                BROKEN[info.name] = traceback.format_exception_only(e)[-1].strip()
                log.warning("method package %r failed to import: %s", info.name, BROKEN[info.name])


_import_all()
