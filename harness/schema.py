"""The typed schema of a job's config (top level, bench, fault, workload, model) and its range checks.

Validated inside the job (`execute`), not while Hydra composes: a wrong type there would end the whole
multirun without rows, here it is one `invalid` row whose message names the key. `method.*` is
typed while Hydra composes, by the schema each method's options class gives its conf/method/ files
(methods/common/options.py); `hardware.*` is not typed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from methods.common.config import InvalidConfig
from methods.common.linear_attention import DECAY_RULES

from .capacity import check_train

# Every field defaults to MISSING: the schema types what a config gives and adds nothing it lacks
# (a model file that leaves out norm_eps keeps ModelConfig's default).


@dataclass
class FaultSchema:
    kind: str = MISSING  # YAML reads a bare `nan` as a float: the string node makes it "nan"
    rank: int = MISSING
    step: int = MISSING


@dataclass
class BenchSchema:
    warmup: int = MISSING
    iters: int = MISSING
    timeout_s: float = MISSING
    attn_backend: str = MISSING
    profile: bool = MISSING
    allow_oversubscribe: bool = MISSING


@dataclass
class TrainSchema:
    optimizer: str = MISSING
    recompute: str = MISSING


@dataclass
class WorkloadSchema:
    name: str = MISSING
    batch_size: int = MISSING
    seq_len: int = MISSING
    causal: bool = MISSING
    frames: int = MISSING
    spatial: int = MISSING


@dataclass
class ModelSchema:
    name: str = MISSING
    kind: str = MISSING
    hidden: int = MISSING
    heads: int = MISSING
    kv_heads: int = MISSING
    head_dim: int = MISSING
    ffn_hidden: int = MISSING
    layers: int = MISSING
    rope_theta: float = MISSING
    norm_eps: float = MISSING
    # kind-specific options (linear / hybrid / video models)
    decay: bool = MISSING
    decay_rule: str = MISSING  # one of linear_attention.DECAY_RULES
    hybrid_period: int = MISSING
    temporal_rope: bool = MISSING
    norm_affine: bool = MISSING
    adaln: bool = MISSING
    qk_norm: bool = MISSING


@dataclass
class ConfigSchema:
    world_size: int = MISSING
    backend: str = MISSING
    mode: str = MISSING
    play_rank: int = MISSING
    device: str = MISSING
    dtype: str = MISSING
    verify: bool = MISSING
    seed: int = MISSING
    resume: bool = MISSING
    fault: FaultSchema = field(default_factory=FaultSchema)
    bench: BenchSchema = field(default_factory=BenchSchema)
    train: TrainSchema = field(default_factory=TrainSchema)
    workload: WorkloadSchema = field(default_factory=WorkloadSchema)
    model: ModelSchema = field(default_factory=ModelSchema)
    method: Any = None  # typed by the method's own schema
    hardware: Any = None


def _keep_given(typed: Any, given: Any) -> Any:
    """The typed values of exactly the keys the config gave (nothing MISSING, no absent section)."""
    if isinstance(given, dict) and isinstance(typed, dict):
        return {k: _keep_given(typed.get(k), v) for k, v in given.items()}
    return typed


def _check(ok: bool, key: str, value: Any, need: str) -> None:
    if not ok:
        raise InvalidConfig(f"{key} must be {need}, got {value!r}")


def _section(cfg: DictConfig, key: str) -> DictConfig:
    """cfg's group `key`, empty where the config has none."""
    return cfg.get(key) or OmegaConf.create()


def _ranges(cfg: DictConfig) -> None:
    world_size = cfg.get("world_size")
    _check(world_size is not None and world_size >= 1, "world_size", world_size, "a positive integer")
    bench, fault = _section(cfg, "bench"), _section(cfg, "fault")
    workload, model = _section(cfg, "workload"), _section(cfg, "model")
    train = _section(cfg, "train")
    check_train(train.get("optimizer", "none"), train.get("recompute", "none"))
    if "iters" in bench:
        _check(bench.iters >= 1, "bench.iters", bench.iters, "at least 1 (the timed steps)")
    if "warmup" in bench:
        _check(bench.warmup >= 0, "bench.warmup", bench.warmup, "at least 0")
    if "timeout_s" in bench:
        _check(bench.timeout_s > 0, "bench.timeout_s", bench.timeout_s, "positive (seconds)")
    if "rank" in fault:
        _check(
            0 <= fault.rank < world_size,
            "fault.rank",
            fault.rank,
            f"a rank of the world (0..{world_size - 1})",
        )
    if "step" in fault:
        _check(fault.step >= 0, "fault.step", fault.step, "at least 0")
    if "batch_size" in workload:
        _check(workload.batch_size >= 1, "workload.batch_size", workload.batch_size, "at least 1")
    if workload.get("frames"):  # video: frames x spatial tokens, seq_len unused
        _check(workload.frames >= 1, "workload.frames", workload.frames, "at least 1")
        _check(workload.get("spatial", 0) >= 1, "workload.spatial", workload.get("spatial"), "at least 1")
    elif "seq_len" in workload:
        _check(workload.seq_len >= 1, "workload.seq_len", workload.seq_len, "at least 1")
    if "decay_rule" in model:
        rules = ", ".join(DECAY_RULES)
        _check(model.decay_rule in DECAY_RULES, "model.decay_rule", model.decay_rule, f"one of {rules}")
    for key in ("adaln", "qk_norm", "norm_affine"):  # the video block's options (methods/common/video.py)
        if model.get(key) and model.get("kind") != "video":
            kind = model.get("kind")
            raise InvalidConfig(f"model.{key}=true applies to video models only, not kind={kind!r}")
    for key in ("hidden", "heads", "kv_heads", "head_dim", "ffn_hidden", "layers", "hybrid_period"):
        if key in model:
            _check(model[key] >= 1, f"model.{key}", model[key], "at least 1")


def validate(cfg: DictConfig) -> DictConfig:
    """`cfg` with every schema field converted to its type (`'3'` -> 3, `nan` -> "nan"), or
    InvalidConfig naming the first key of the wrong type or out of range."""
    schema = OmegaConf.structured(ConfigSchema)
    for node in (schema, schema.fault, schema.bench, schema.workload, schema.model):
        OmegaConf.set_struct(node, False)  # keys the schema does not type (unknown_*, extra options) pass
    try:
        given = OmegaConf.to_container(cfg, resolve=True)
        merged = OmegaConf.merge(schema, given)
        typed = OmegaConf.to_container(merged, resolve=True, throw_on_missing=False)
    except ValidationError as e:
        value = OmegaConf.select(cfg, e.full_key) if e.full_key else None
        wanted = str(e.msg).split("\n")[0]
        raise InvalidConfig(f"{e.full_key}={value!r}: {wanted}") from None
    except OmegaConfBaseException as e:  # e.g. an interpolation that does not resolve
        raise InvalidConfig(f"{getattr(e, 'full_key', None) or 'config'}: {str(e).splitlines()[0]}") from None
    out = OmegaConf.create(_keep_given(typed, given))
    _ranges(out)
    return out


__all__ = ["ConfigSchema", "validate"]
