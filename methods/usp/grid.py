"""USP's rank grid: the Ulysses and ring degrees and where a rank sits under the placement."""

from __future__ import annotations

import math

from methods.common.config import Problem


def degrees(p: Problem) -> tuple[int, int]:
    """(ulysses_degree, ring_degree); unset degrees default to the largest divisor of world_size not
    above its square root for Ulysses (2 x 2 on 4 ranks, 2 x 4 on 8) and the rest for the ring."""
    n, ud, rd = p.world_size, p.options.ulysses_degree, p.options.ring_degree
    if ud is None and rd is None:
        ud = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    if ud is None:
        ud = n // rd if rd and n % rd == 0 else 0
    if rd is None:
        rd = n // ud if ud and n % ud == 0 else 0
    return ud, rd


def grid_position(p: Problem, rank: int) -> tuple[int, int]:
    """(ring index, Ulysses index) of a global rank under the placement."""
    ud, rd = degrees(p)
    if p.options.placement == "ulysses_inner":
        return rank // ud, rank % ud
    return rank % rd, rank // rd
