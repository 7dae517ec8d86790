"""Frozen config dataclasses <-> command-line flags, so every field is a documented option.

Each field carries its help text in ``metadata={"help": ...}``; ``add_arguments`` turns the
fields into ``--kebab-case`` flags whose help shows the default, and ``from_args`` builds the
config back from the parsed namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with CLI help text (``choices=`` may be added)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> int, ``tuple[str, ...]`` -> tuple, plain types unchanged."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    return origin or annotation


def _strip_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _tuple_parser(element: type, flag: str) -> Callable[[str], tuple]:
    """Parse ``"16,36"`` into ``(16, 36)``; ``""`` into ``()``."""
    def parse(text: str) -> tuple:
        try:
            return tuple(element(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag}: expected comma-separated {element.__name__} values, got {text!r}") from None
    return parse


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per field of dataclass ``cls``, defaulting to None (= keep the field's)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        text = f"{f.metadata['help']} (default: {default})"
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind is tuple:
            element = typing.get_args(_strip_none(hints[f.name]))[0]
            group.add_argument(flag, dest=f.name, type=_tuple_parser(element, flag), default=None,
                               metavar="A,B,...", help=text + "; comma-separated")
        else:
            group.add_argument(flag, dest=f.name, type=kind, default=None, metavar=f.name.upper(),
                               choices=f.metadata.get("choices"), help=text)


def from_args(cls: type[T], args: argparse.Namespace, base: T | None = None, **overrides: Any) -> T:
    """Build ``cls`` from ``base`` (or defaults), then flags the user gave, then ``overrides``."""
    values = dataclasses.asdict(base) if base is not None else {}
    for f in dataclasses.fields(cls):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    values.update(overrides)
    return cls(**values)


def from_json(cls: type[T], fields: dict[str, Any]) -> T:
    """Rebuild dataclass ``cls`` from its saved JSON form: lists become tuples, unknown keys are dropped."""
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known})
