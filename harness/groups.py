"""The Hydra config groups on disk, and the check that turns an unknown choice (method=foo) into an
`invalid` row instead of a Hydra composition error that leaves no row behind."""
from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CHECKED_GROUPS = ("method", "model", "workload", "hardware")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@cache
def option_keys(group: str, choice: str) -> frozenset[str]:
    """The keys a group's config file defines (the options it accepts)."""
    return frozenset(OmegaConf.load(CONF_DIR / group / f"{choice}.yaml").keys())


def default_choice(group: str) -> str:
    for entry in OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml").defaults):
        if isinstance(entry, dict) and group in entry:
            return entry[group]
    raise KeyError(group)


def experiment_choices(argv: list[str]) -> dict[str, str]:
    """The group choices that a `+sweep=<experiment>` on the command line overrides."""
    out: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") == "sweep" and value in options("sweep"):
            for entry in OmegaConf.to_container(OmegaConf.load(CONF_DIR / "sweep" / f"{value}.yaml").get("defaults", [])):
                for group_key, choice in (entry.items() if isinstance(entry, dict) else []):
                    group = group_key.removeprefix("override").strip().lstrip("/")
                    if group in CHECKED_GROUPS:
                        out[group] = choice
    return out


def rewrite_unknown_choices(argv: list[str]) -> list[str]:
    """Turn what Hydra would reject while composing (no job, no row) into something the job refuses
    with a row. Single runs: `method=foo` becomes `~method +unknown_method=foo`, and an override of an
    option the chosen config does not define (`method.bogus=1`) becomes `+unknown_options=[...]`, so
    the job writes an `invalid` row naming it. Multirun: either stops the whole command up front."""
    multirun = "-m" in argv or "--multirun" in argv
    chosen = {g: default_choice(g) for g in CHECKED_GROUPS} | experiment_choices(argv)
    out, unknown_options = [], []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in CHECKED_GROUPS:
            bad = [v for v in value.split(",") if v and v not in options(key) and not v.startswith(("glob(", "choice("))]
            if bad and multirun:
                sys.exit(f"error: unknown {key} {', '.join(map(repr, bad))}; available: {', '.join(options(key))}")
            if bad:
                out += [f"~{key}", f"+unknown_{key}={value}"]
                continue
            chosen[key] = value
        out.append(arg)
    for arg in list(out):
        key, sep, _ = arg.partition("=")
        group, dot, option = key.partition(".")
        if sep and dot and group in CHECKED_GROUPS and "," not in chosen[group] and chosen[group] in options(group):
            if option.split(".")[0] not in option_keys(group, chosen[group]):
                if multirun:
                    sys.exit(f"error: unknown option {key!r}; {group} {chosen[group]!r} accepts: "
                             f"{', '.join(sorted(option_keys(group, chosen[group])))}")
                out.remove(arg)
                unknown_options.append(key)
    if unknown_options:
        out.append(f"+unknown_options=[{','.join(unknown_options)}]")
    return out
