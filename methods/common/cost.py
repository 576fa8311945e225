"""Per-rank communication volume under the nccl-tests bus convention, shared by the counter that
measures it and by the cost models that predict it (so both speak the same units).

    all_gather      (n-1)/n x output bytes      reduce_scatter  (n-1)/n x input bytes
    all_to_all      (n-1)/n x input bytes       all_reduce      2(n-1)/n x bytes
    send            bytes sent (recv counts 0)   broadcast       bytes
"""

from __future__ import annotations

from collections import defaultdict
from fractions import Fraction

PHASES = ("fwd", "bwd")


def bus_bytes(kind: str, full_bytes: int, n: int) -> Fraction:
    """Bytes one rank moves for one collective; `full_bytes` as in the table above."""
    if kind in ("all_gather", "reduce_scatter", "all_to_all"):
        return Fraction(full_bytes * (n - 1), n)
    if kind == "all_reduce":
        return Fraction(2 * full_bytes * (n - 1), n)
    if kind in ("send", "broadcast"):
        return Fraction(full_bytes)
    if kind == "recv":
        return Fraction(0)
    raise ValueError(f"unknown collective kind {kind!r}")


class CommCost:
    """Bytes per phase and kind for one rank and one training step, kept exact (Fractions)."""

    def __init__(self) -> None:
        self.bytes: dict[str, dict[str, Fraction]] = {p: defaultdict(Fraction) for p in PHASES}

    def add(self, phase: str, kind: str, full_bytes: int, n: int, times: int = 1) -> CommCost:
        """Add `times` collectives of `kind` over `n` ranks, each of `full_bytes`. Groups of one rank
        move nothing, so they add nothing (methods skip those collectives too)."""
        if n > 1 and times:
            self.bytes[phase][kind] += times * bus_bytes(kind, full_bytes, n)
        return self

    def __add__(self, other: CommCost) -> CommCost:
        out = CommCost()
        out += self
        out += other
        return out

    def __iadd__(self, other: CommCost) -> CommCost:
        for phase in PHASES:
            for kind, b in other.bytes[phase].items():
                self.bytes[phase][kind] += b
        return self

    def total(self, phase: str) -> Fraction:
        return sum(self.bytes[phase].values(), Fraction(0))

    def as_dict(self) -> dict[str, dict[str, float]]:
        """{"fwd": {kind: bytes}, "bwd": {...}} with zero entries dropped; ints where exact."""
        return {p: {k: _num(b) for k, b in sorted(self.bytes[p].items()) if b} for p in PHASES}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CommCost) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        return f"CommCost({self.as_dict()})"


def _num(b: Fraction) -> float | int:
    return int(b) if b.denominator == 1 else float(b)
