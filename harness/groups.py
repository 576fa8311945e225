"""The Hydra config groups on disk, and the check that turns an unknown choice (method=foo) into an
`invalid` row instead of a Hydra composition error that leaves no row behind."""
from __future__ import annotations

import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CHECKED_GROUPS = ("method", "model", "workload", "hardware")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def rewrite_unknown_choices(argv: list[str]) -> list[str]:
    """Single runs: `method=foo` becomes `~method +unknown_method=foo`, so the job composes and writes
    an `invalid` row naming the choice. Multirun: an unknown choice stops the whole command up front."""
    multirun = "-m" in argv or "--multirun" in argv
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in CHECKED_GROUPS:
            bad = [v for v in value.split(",") if v and v not in options(key) and not v.startswith(("glob(", "choice("))]
            if bad and multirun:
                sys.exit(f"error: unknown {key} {', '.join(map(repr, bad))}; available: {', '.join(options(key))}")
            if bad:
                out += [f"~{key}", f"+unknown_{key}={value}"]
                continue
        out.append(arg)
    return out
