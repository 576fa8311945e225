"""One attention call as the cost models see it, the single argument of every method's
`attention_cost(call) -> CommCost` and `attention_act(call) -> int` (methods/<m>/cost.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from .config import InvalidConfig, Problem
from .layers import is_softmax_layer


@dataclass(frozen=True)
class AttentionCall:
    """`batch` sequences of `length` tokens spread over the `n` ranks of the method's group (each
    holds length/n), `heads` query and `kv_heads` key/value heads of `head_dim`, in `dtype`; a
    softmax or a linear (optionally decayed) kernel; `hidden` is the block's width (TP methods move
    hidden states)."""

    batch: int
    length: int
    heads: int
    kv_heads: int
    head_dim: int
    n: int
    dtype: torch.dtype
    hidden: int = 0
    causal: bool = True
    softmax: bool = True
    decay: bool = False

    @classmethod
    def of(cls, p: Problem, layer: int = 0, **changes: Any) -> AttentionCall:
        """Layer `layer` of p's LLM block over the whole world (fields in `changes` replaced)."""
        m, w = p.model, p.workload
        call = cls(
            w.batch_size,
            w.seq_len,
            m.heads,
            m.kv_heads,
            m.head_dim,
            p.world_size,
            p.torch_dtype,
            m.hidden,
            w.causal,
            is_softmax_layer(m, layer),
            bool(m.extra.get("decay")),
        )
        return replace(call, **changes)

    @property
    def tokens_local(self) -> int:
        return self.length // self.n

    @property
    def elem(self) -> int:
        return self.dtype.itemsize


def check_heads(heads: int, kv_heads: int, n: int, what: str, kv_repeat: bool = True) -> None:
    """Each of `n` ranks takes whole query heads; kv heads are split over the ranks too, or (with
    `kv_repeat`, as Ulysses does) each repeated n/kv_heads times. `what` names n in the message."""
    if heads % n:
        raise InvalidConfig(
            f"heads={heads} is not divisible by the {what} {n}: each rank takes whole query heads"
        )
    if kv_repeat and kv_heads % n and n % kv_heads:
        raise InvalidConfig(
            f"kv_heads={kv_heads} and the {what} {n} must divide one another "
            f"(kv heads are split over ranks, or each repeated {what}/kv_heads times)"
        )
    if not kv_repeat and kv_heads % n:
        raise InvalidConfig(
            f"kv_heads={kv_heads} is not divisible by the {what} {n}: each rank takes whole kv heads"
        )
