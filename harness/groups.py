"""The Hydra config groups on disk, and the check that turns an unknown choice (method=foo), an
unknown option or a method that failed to import into an `invalid` row instead of a Hydra
composition error that leaves no row behind. Importing this module registers every method's option
schema (`/method_schema/<method>`, named in the defaults list of its conf/method/ files) in Hydra's
ConfigStore."""

from __future__ import annotations

import dataclasses
import sys
from functools import cache
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

import methods
from methods.common import options as method_options

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CHECKED_GROUPS = ("method", "model", "workload", "hardware")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def method_name(choice: str) -> str:
    """The method a conf/method/ file configures: the `name` it sets, or the schema
    (`/method_schema/<method>@_here_`) its defaults list leads to."""
    cfg = OmegaConf.load(CONF_DIR / "method" / f"{choice}.yaml")
    if "name" in cfg:
        return cfg.name
    for entry in cfg.get("defaults", []):
        if entry != "_self_":
            schema = f"/{methods.SCHEMA_GROUP}/"
            if entry.startswith(schema):
                return entry.removeprefix(schema).partition("@")[0]
            return method_name(entry)
    raise ValueError(f"conf/method/{choice}.yaml sets no name and names no schema in its defaults list")


@cache
def option_keys(group: str, choice: str) -> frozenset[str]:
    """The keys a group's config accepts: for a method its options class's fields and `name`, for
    the other groups the keys its file defines."""
    if group == "method":
        return frozenset(
            ["name", *(f.name for f in dataclasses.fields(methods.options_class(method_name(choice))))]
        )
    return frozenset(OmegaConf.load(CONF_DIR / group / f"{choice}.yaml").keys())


def option_error(choice: str, key: str, value: object) -> str | None:
    """Why the schema of conf/method/<choice> refuses `method.<key>=<value>` (None if it takes it)."""
    name = method_name(choice)
    schema = OmegaConf.structured(method_options.schema(methods.options_class(name), name))
    try:
        OmegaConf.merge(schema, {key: value})
    except ValidationError as e:
        return f"method.{key}={value!r}: {str(e.msg).splitlines()[0]}"
    return None


def unusable(group: str, choice: str) -> bool:
    """A choice without a config file, or a method whose package failed to import."""
    return choice not in options(group) or (group == "method" and method_name(choice) in methods.BROKEN)


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
            for entry in OmegaConf.to_container(
                OmegaConf.load(CONF_DIR / "sweep" / f"{value}.yaml").get("defaults", [])
            ):
                for group_key, choice in entry.items() if isinstance(entry, dict) else []:
                    group = group_key.removeprefix("override").strip().lstrip("/")
                    if group in CHECKED_GROUPS:
                        out[group] = choice
    return out


def rewrite_unknown_choices(argv: list[str]) -> list[str]:
    """Turn what Hydra would reject while composing (no job, no row) into something the job refuses
    with a row. Single runs: `method=foo` (unknown, or a method that failed to import) becomes
    `~method +unknown_method=foo`, and an override of an option the chosen config does not accept
    (`method.bogus=1`) becomes `+unknown_options=[...]`, and a method option the schema refuses
    (`method.zero3=maybe`) becomes `+refused.method.zero3=maybe`, so the job writes an `invalid` row
    naming it. Multirun: the first two stop the whole command up front, and Hydra refuses the third
    while it composes, naming the key."""
    multirun = "-m" in argv or "--multirun" in argv
    chosen = {g: default_choice(g) for g in CHECKED_GROUPS} | experiment_choices(argv)
    out, unknown_options = [], []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in CHECKED_GROUPS:
            bad = [
                v
                for v in value.split(",")
                if v and not v.startswith(("glob(", "choice(")) and unusable(key, v)
            ]
            if bad and multirun:
                broken = "".join(
                    f"; {key} {v!r} failed to import: {methods.BROKEN[method_name(v)]}"
                    for v in bad
                    if key == "method" and v in options(key)
                )
                sys.exit(
                    f"error: unknown {key} {', '.join(map(repr, bad))}; "
                    f"available: {', '.join(options(key))}{broken}"
                )

            if bad:
                out += [f"~{key}", f"+unknown_{key}={value}"]
                continue
            chosen[key] = value
        out.append(arg)
    for arg in list(out):
        key, sep, _ = arg.partition("=")
        group, dot, option = key.partition(".")
        if (
            sep
            and dot
            and group in CHECKED_GROUPS
            and "," not in chosen[group]
            and not unusable(group, chosen[group])
        ):
            if option.split(".")[0] not in option_keys(group, chosen[group]):
                if multirun:
                    sys.exit(
                        f"error: unknown option {key!r}; {group} {chosen[group]!r} accepts: "
                        f"{', '.join(sorted(option_keys(group, chosen[group])))}"
                    )
                out.remove(arg)
                unknown_options.append(key)
            elif group == "method" and not multirun:
                parsed = OverridesParser.create().parse_override(arg).value()
                if option_error(chosen[group], option, parsed) is not None:
                    out[out.index(arg)] = f"+refused.{arg}"
    if unknown_options:
        out.append(f"+unknown_options=[{','.join(unknown_options)}]")
    return out
