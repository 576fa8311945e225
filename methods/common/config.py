"""The problem a method solves: model shape, workload, world size, dtype and method options.

One frozen `Problem` is built from the Hydra config in the parent process (validated before any rank
starts) and handed to every rank, to the cost models and to the reference block alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .options import MethodOptions, parse

DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class InvalidConfig(ValueError):
    """A configuration no rank should start with; the message says what to change."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn_hidden: int
    layers: int = 1
    kind: str = "llama"  # llama | video | linear | hybrid
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5  # Llama-2/3 (the model files state theirs: conf/model/*.yaml)
    extra: dict = field(default_factory=dict)  # kind-specific options (decay, hybrid period, ...)


@dataclass(frozen=True)
class Workload:
    name: str = "llm"
    batch_size: int = 1
    seq_len: int = 64
    causal: bool = True
    frames: int = 0
    spatial: int = 0

    @property
    def tokens(self) -> int:
        """Tokens in one step's global input (B*L, or B*T*S for video)."""
        if self.frames:
            return self.batch_size * self.frames * self.spatial
        return self.batch_size * self.seq_len


@dataclass(frozen=True)
class Problem:
    method: str
    model: ModelConfig
    workload: Workload
    world_size: int
    dtype: str = "float32"
    # the method's typed options (methods.<m>.<M>Options); a mapping of `method.*` keys other than
    # `name` is parsed into them, unknown keys refused
    options: Any = field(default_factory=dict)
    # the device type the ranks compute on (cpu, cuda, or meta standing in for cuda): kernels differ
    # in what they allocate (e.g. LayerNorm's statistics), and memory models follow them
    device: str = "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.options, Mapping):
            import methods  # the registry imports this module: resolved when a Problem is made

            object.__setattr__(
                self, "options", parse(methods.options_class(self.method), self.method, self.options)
            )
        elif not isinstance(self.options, MethodOptions):
            raise TypeError(
                f"Problem.options must be a mapping or MethodOptions, got {type(self.options).__name__}"
            )

    @property
    def on_gpu(self) -> bool:
        return self.device in ("cuda", "meta")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def elem_bytes(self) -> int:
        return self.torch_dtype.itemsize
