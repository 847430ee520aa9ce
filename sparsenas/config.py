"""Configuration dataclasses: shared pieces (data, parent model, training, runtime) that every
strategy's config composes, and the one place that turns them into flat options and back.

A piece is a frozen dataclass whose fields are declared with :func:`option` (default, help text,
choices, whether it is a *runtime* option). A strategy config is a frozen dataclass whose fields are
pieces or its own options. Flattened, every option has one name (unique across pieces), which is
its CLI flag (``--name-with-dashes``), its key in presets and in the stored configuration. Runtime
options (device, threads, executor, data location) change where or how fast a study runs, not its
results, so they are not part of a study's identity.

Numbers are checked for every config: floats must be finite and ints must fit SQLite's signed
64-bit integers, so a bad value fails before any work, never half-way through a study.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

INT64_MAX = 2**63 - 1


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
           runtime: bool = False) -> Any:
    """A config field with its help text (shown by the CLI), optional allowed values, and
    whether it is a runtime option (excluded from the study's identity)."""
    return field(default=default, metadata={"help": help, "choices": choices, "runtime": runtime})


def _check_number(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value}")
    if isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise ValueError(f"{owner}: {name} must fit in a signed 64-bit integer, got {value}")
    if isinstance(value, (tuple, list)):
        for item in value:
            _check_number(owner, name, item)


class ConfigPiece:
    """Base of config dataclasses: checks every number, then calls :meth:`validate`."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_number(type(self).__name__, f.name, getattr(self, f.name))
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"{type(self).__name__}: {f.name} must be one of "
                                 f"{', '.join(choices)}, got {value!r}")
        self.validate()

    def validate(self) -> None:
        """Cross-field checks of a piece or a strategy config (ValueError)."""


def _is_piece(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@dataclass(frozen=True)
class FlatOption:
    """One option of a flattened config: its name, type, default, help, choices, and the piece
    (field name in the strategy config) it lives in, or None for the strategy's own options."""

    name: str
    type: Any
    default: Any
    help: str
    choices: tuple[str, ...] | None
    runtime: bool
    piece: str | None


def flat_options(cls: type) -> list[FlatOption]:
    """The options of strategy config class ``cls`` in declaration order; a name used twice
    raises (every option must have one spelling)."""
    options: list[FlatOption] = []
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_piece(tp):
            piece_hints = _field_types(tp)
            piece_default = f.default if dataclasses.is_dataclass(f.default) else tp()
            for g in dataclasses.fields(tp):
                options.append(FlatOption(g.name, piece_hints[g.name],
                                          getattr(piece_default, g.name),
                                          g.metadata.get("help", ""), g.metadata.get("choices"),
                                          g.metadata.get("runtime", False), f.name))
        else:
            options.append(FlatOption(f.name, tp, f.default, f.metadata.get("help", ""),
                                      f.metadata.get("choices"), f.metadata.get("runtime", False),
                                      None))
    names = [o.name for o in options]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TypeError(f"{cls.__name__}: options defined twice: {duplicates}")
    return options


def to_flat(config: Any) -> dict[str, Any]:
    """The config's options by name (tuples as lists, so it is JSON-ready)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            values.update(to_flat(value))
        else:
            values[f.name] = list(value) if isinstance(value, tuple) else value
    return values


def identity(config: Any) -> dict[str, Any]:
    """The options that define a study's results (what a resumed run must match)."""
    runtime = {o.name for o in flat_options(type(config)) if o.runtime}
    return {k: v for k, v in to_flat(config).items() if k not in runtime}


def _coerce(option: FlatOption, value: Any) -> Any:
    """JSON / preset values to the declared type (lists to tuples)."""
    origin = typing.get_origin(option.type)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin in (typing.Union, types.UnionType) and isinstance(value, list):
        return tuple(value)
    return value


def from_flat(cls: type, values: dict[str, Any]) -> Any:
    """A ``cls`` config from options by name (the rest at their defaults); an unknown name
    raises ValueError naming it."""
    options = {o.name: o for o in flat_options(cls)}
    unknown = sorted(set(values) - set(options))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}")
    hints = _field_types(cls)
    pieces: dict[str, dict[str, Any]] = {}
    own: dict[str, Any] = {}
    for name, value in values.items():
        option_ = options[name]
        target = own if option_.piece is None else pieces.setdefault(option_.piece, {})
        target[name] = _coerce(option_, value)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    built = {piece: dataclasses.replace(defaults[piece], **kwargs)
             if dataclasses.is_dataclass(defaults[piece]) else hints[piece](**kwargs)
             for piece, kwargs in pieces.items()}
    return cls(**built, **own)


def replace_options(config: Any, **values: Any) -> Any:
    """A copy of ``config`` with some options (by flat name) changed."""
    return from_flat(type(config), {**to_flat(config), **values})
