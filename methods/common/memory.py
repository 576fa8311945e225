"""Per-rank memory of one training step, in the categories the harness's tensor-level tracker
(harness/memory.py) measures, so a method's memory model and a dryrun compare number for number:

    param  the rank's parameter and buffer storage (a ZeRO-3 rank: its shards)
    input  the rank's input shard x and upstream gradient dy
    act    what the forward leaves alive for the backward: saved activations and the output
    grad   the rank's parameter gradients and the input gradient, after the step
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class MemCost:
    param: int
    input: int
    act: int
    grad: int

    @property
    def total(self) -> int:
        """Everything above alive at once: a lower bound of the step's peak (which adds the
        backward's transient buffers)."""
        return self.param + self.input + self.act + self.grad

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
