"""One unit per set of values: bytes in B..TiB (powers of 1024), seconds in us..s, counts in plain..T
(powers of 1000), picked so the largest value reads between 1 and 1000 (1024 for bytes). Used by the
report's table, its axis labels and the notebooks, so a column and its plot say the same unit."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Literal

Kind = Literal["bytes", "seconds", "count"]

_UNITS: dict[str, list[tuple[float, str]]] = {
    "bytes": [(1.0, "B"), (2.0**10, "KiB"), (2.0**20, "MiB"), (2.0**30, "GiB"), (2.0**40, "TiB")],
    "seconds": [(1e-6, "us"), (1e-3, "ms"), (1.0, "s")],
    "count": [(1.0, ""), (1e3, "K"), (1e6, "M"), (1e9, "G"), (1e12, "T")],
}


def unit_for(values: Iterable[float] | float, kind: Kind) -> tuple[float, str]:
    """(divisor, unit name) for `values` of `kind` (bytes, seconds, or a count): the largest unit that
    keeps the largest finite |value| at or above 1. Missing values are ignored; with none, the base unit."""
    if isinstance(values, (int, float, numbers.Real)):  # numpy scalars included
        values = [float(values)]
    finite = [abs(float(v)) for v in values if v is not None and math.isfinite(float(v))]
    biggest = max(finite, default=0.0)
    units = _UNITS[kind]
    if kind == "seconds" and biggest == 0:
        return units[-1]
    chosen = units[0]
    for divisor, name in units:
        if biggest >= divisor:
            chosen = (divisor, name)
    return chosen


def fmt(value: float | None, kind: Kind) -> str:
    """One value with its own unit, e.g. `1.5 GiB`, `230 ms`, `12.3 K` ('-' when missing)."""
    if value is None or not math.isfinite(float(value)):
        return "-"
    divisor, name = unit_for(value, kind)
    return f"{value / divisor:.4g} {name}".rstrip()


def fmt_tokens(n: float) -> str:
    """A token count as papers write it: powers of 1024 as `32K`, `1M`; other counts with K/M of 1000."""
    n = float(n)
    for divisor, name in ((2.0**30, "G"), (2.0**20, "M"), (2.0**10, "K")):
        if n >= divisor and n % divisor == 0:
            return f"{n / divisor:g}{name}"
    divisor, name = unit_for(n, "count")
    return f"{n / divisor:.3g}{name}"
