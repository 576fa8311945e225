"""Hydra config -> validated `Problem`. Everything that can be refused is refused here, in the parent,
before any rank starts; the message says what to change."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

import methods
from methods.common.config import DTYPES, InvalidConfig, ModelConfig, Problem, Workload

from .groups import CHECKED_GROUPS, method_name, option_error, option_keys, options

MODEL_KEYS = (
    "name",
    "hidden",
    "heads",
    "kv_heads",
    "head_dim",
    "ffn_hidden",
    "layers",
    "kind",
    "rope_theta",
    "norm_eps",
)
WORKLOAD_KEYS = ("name", "batch_size", "seq_len", "causal", "frames", "spatial")


def _unknown_choice(cfg: DictConfig) -> None:
    for group in CHECKED_GROUPS:
        bad = cfg.get(f"unknown_{group}")
        if bad is not None and group == "method" and bad in options("method"):
            methods.variants(method_name(bad))  # a method that failed to import: says why
        if bad is not None:
            raise InvalidConfig(f"unknown {group} {bad!r}; available: {', '.join(options(group))}")
    refused = (cfg.get("refused") or {}).get("method") or {}
    if refused:  # a method option its schema refuses, set aside by rewrite_unknown_choices
        key, value = next(iter(refused.items()))
        raise InvalidConfig(option_error(cfg.method.name, key, value))
    unknown = list(cfg.get("unknown_options") or [])
    for group in CHECKED_GROUPS[
        1:
    ]:  # `+group.key=...` the group's file lacks (a method's options refuse theirs)
        choice = cfg[group].get("name")
        if choice in options(group):
            unknown += [f"{group}.{k}" for k in cfg[group] if k not in option_keys(group, choice)]
    if unknown:
        groups = sorted({k.split(".")[0] for k in unknown})
        raise InvalidConfig(
            f"unknown option(s) {', '.join(unknown)}; "
            + "; ".join(
                f"{g} {cfg[g].get('name')!r} accepts {', '.join(sorted(option_keys(g, cfg[g].get('name'))))}"
                for g in groups
            )
        )


def problem_from_cfg(cfg: DictConfig) -> Problem:
    _unknown_choice(cfg)
    world_size = cfg.world_size
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise InvalidConfig(f"world_size must be a positive integer, got {world_size!r}")
    if cfg.dtype not in DTYPES:
        raise InvalidConfig(f"dtype {cfg.dtype!r} is not one of {sorted(DTYPES)}")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model = ModelConfig(
        **{k: model_cfg[k] for k in MODEL_KEYS if k in model_cfg},
        extra={k: v for k, v in model_cfg.items() if k not in MODEL_KEYS},
    )
    workload_cfg = OmegaConf.to_container(cfg.workload, resolve=True)
    workload = Workload(**{k: workload_cfg[k] for k in WORKLOAD_KEYS if k in workload_cfg})
    for key in ("batch_size", "layers"):
        value = workload.batch_size if key == "batch_size" else model.layers
        if value < 1:
            raise InvalidConfig(f"{key} must be at least 1, got {value}")
    options = {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items() if k != "name"}
    problem = Problem(cfg.method.name, model, workload, world_size, cfg.dtype, options)
    methods.for_problem(problem).validate(problem)
    return problem


def resolve_backend(cfg: DictConfig) -> str:
    """auto: NCCL when CUDA has a GPU per rank, else gloo. An explicit NCCL without enough GPUs is refused."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.backend == "nccl" and not torch.cuda.is_available():
        raise InvalidConfig("backend=nccl needs CUDA, and this machine has none; use backend=gloo (or auto)")
    if cfg.backend == "auto":
        return "nccl" if gpus >= cfg.world_size else "gloo"
    if cfg.backend == "nccl" and gpus < cfg.world_size:
        raise InvalidConfig(
            f"backend=nccl needs one GPU per rank: world_size={cfg.world_size}, GPUs here: {gpus}"
        )
    if cfg.backend not in ("nccl", "gloo"):
        raise InvalidConfig(f"backend must be auto, nccl or gloo, got {cfg.backend!r}")
    return cfg.backend
