"""Typed method options: one frozen dataclass per method holds every option with its default (the
only place the default is written), and the Hydra schema of its `conf/method/` files is made from it.

Literal-typed fields become Enums in the schema, so Hydra refuses a value outside the choices while
it composes, naming the key, as it does for a wrong type or an unknown key."""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

if TYPE_CHECKING:
    from .config import Problem

OptionsT = TypeVar("OptionsT", bound="MethodOptions")


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    """A method without options; methods with options subclass it."""

    def resolved(self, p: Problem) -> Self:
        """The options in effect for p (a method that derives an option left unset overrides this)."""
        return self


@dataclasses.dataclass(frozen=True)
class ShardedOptions(MethodOptions):
    zero3: bool = False  # shard the block's parameters with FSDP2 (ZeRO-3)


def zero3(p: Problem) -> bool:
    """Whether p's method shards its replicated parameters with FSDP2."""
    return isinstance(p.options, ShardedOptions) and p.options.zero3


def choices(tp: Any) -> tuple[str, ...] | None:
    """The allowed values of a Literal type (None for any other type)."""
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def parse(cls: type[OptionsT], method: str, values: Mapping[str, Any]) -> OptionsT:
    """`cls` from a mapping of option values (a config's `method` node without `name`); InvalidConfig
    naming every unknown key or a value outside a Literal's choices."""
    from .config import InvalidConfig  # config imports this module for Problem's options

    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidConfig(
            f"unknown option(s) {', '.join('method.' + k for k in unknown)}: method {method!r} "
            f"accepts {', '.join(sorted(known)) or 'no options'}"
        )
    out = {}
    for key, value in values.items():
        allowed = choices(hints[key])
        value = value.name if isinstance(value, enum.Enum) else value
        if allowed is not None and value not in allowed:
            raise InvalidConfig(f"method.{key}={value!r} is not one of {', '.join(allowed)}")
        out[key] = value
    return cls(**out)


def schema(cls: type[MethodOptions], method: str) -> type:
    """The structured config of a `conf/method/` file: `name` and every option of `cls`, with Literal
    fields as StrEnums (OmegaConf types Enums, not Literals; a StrEnum member equals its string)."""
    fields: list[tuple[str, Any, Any]] = [("name", str, dataclasses.field(default=method))]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, default = hints[f.name], f.default
        allowed = choices(tp)
        if allowed is not None:
            # equal to its str value; the functional API, as the enum's name is built per field
            members = enum.StrEnum(f"{cls.__name__}_{f.name}", list(allowed))  # type: ignore[misc]
            assert isinstance(default, str), f"{cls.__name__}.{f.name}: a choice needs a default choice"
            tp, default = members, members[default]
        fields.append((f.name, tp, dataclasses.field(default=default)))
    return dataclasses.make_dataclass(f"{cls.__name__}Schema", fields)


def as_dict(options: MethodOptions) -> dict[str, Any]:
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


__all__ = ["MethodOptions", "ShardedOptions", "as_dict", "choices", "parse", "schema", "zero3"]
