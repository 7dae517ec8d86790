"""Frozen config dataclasses <-> command-line flags, so every field is a documented, checked option.

Each field carries its help text (and optionally ``choices`` and a ``check``) in its metadata;
``add_arguments`` turns the fields into ``--kebab-case`` flags whose help shows the default,
``given`` collects the flags the user actually typed, and ``validate`` checks every value before
any work is done, with one line naming the flag and what was expected.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any, Callable, Iterable, TypeVar

from mnistlab.errors import MnistlabError

T = TypeVar("T")
Check = tuple[Callable[[Any], bool], str]  # (is the value fine?, what was expected)


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with CLI help text (``choices=`` and ``check=(predicate, expected)`` may be added)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def required(help: str, **metadata: Any) -> Any:
    """A dataclass field without a default, with CLI help text (as ``option``)."""
    return dataclasses.field(metadata={"help": help, **metadata})


# ---------------------------------------------------------------------------- checks
def positive(value: Any) -> bool:
    return value is not None and value > 0


def non_negative(value: Any) -> bool:
    return value is not None and value >= 0


def fraction(value: Any) -> bool:
    """0 <= value < 1: a dropout rate, a smoothing factor."""
    return value is not None and 0 <= value < 1


def finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def all_positive(values: Iterable[int]) -> bool:
    return all(v > 0 for v in values)


POSITIVE: Check = (positive, "a positive number")
NON_NEGATIVE: Check = (non_negative, "0 or more")
FRACTION: Check = (fraction, "a number with 0 <= value < 1")
SEED: Check = (lambda v: 0 <= v < 2**31, "an integer 0 .. 2147483647")


def flag(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def show(value: Any) -> str:
    """A value as the user would type it: ``(16, 36)`` -> ``16,36``."""
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def check_value(name: str, value: Any, check: Check | None = None, choices: Iterable[Any] | None = None) -> None:
    """A MnistlabError naming ``--name`` unless ``value`` passes ``check`` and is one of ``choices``."""
    if choices is not None and value not in tuple(choices):
        raise MnistlabError(f"{flag(name)} {show(value)}: expected one of {', '.join(map(str, choices))}")
    if check is not None:
        predicate, expected = check
        try:
            ok = bool(predicate(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise MnistlabError(f"{flag(name)} {show(value)}: expected {expected}")


def validate(instance: Any) -> Any:
    """Check every field of a config dataclass against its ``choices`` and ``check``; return it."""
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if value is None and f.default is None:
            continue
        check_value(f.name, value, f.metadata.get("check"), f.metadata.get("choices"))
    return instance


# ---------------------------------------------------------------------------- flags
def _strip_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _tuple_parser(element: type) -> Callable[[str], tuple]:
    """Parse ``"16,36"`` into ``(16, 36)``; ``""`` into ``()``."""
    def parse(text: str) -> tuple:
        try:
            return tuple(element(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {element.__name__} values, got {text!r}") from None
    return parse


def add_argument(group: Any, name: str, annotation: Any, help: str, default_text: str,
                 choices: Iterable[Any] | None = None) -> None:
    """One ``--flag`` for a value of type ``annotation``, defaulting to None (= not given)."""
    kind = _strip_none(annotation)
    origin = typing.get_origin(kind) or kind
    text = f"{help} (default: {default_text})"
    if origin is bool:
        group.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
    elif origin is tuple:
        element = typing.get_args(kind)[0]
        group.add_argument(flag(name), dest=name, type=_tuple_parser(element), default=None,
                           metavar="A,B,...", help=text + "; comma-separated")
    elif choices is not None:
        group.add_argument(flag(name), dest=name, type=origin, default=None, choices=tuple(choices), help=text)
    else:
        group.add_argument(flag(name), dest=name, type=origin, default=None, metavar=name.upper(), help=text)


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                  default_text: Callable[[dataclasses.Field], str] | None = None,
                  title: str | None = None) -> None:
    """Add one ``--flag`` per field of dataclass ``cls`` (flags default to None = not given).

    ``default_text(field)`` says what the default is, for fields whose default is not fixed
    (the model's recipe); otherwise the field's own default is shown."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title or cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        shown = default_text(f) if default_text else show(f.default if f.default is not dataclasses.MISSING else None)
        add_argument(group, f.name, hints[f.name], f.metadata["help"], shown, f.metadata.get("choices"))


def given(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` the user gave on the command line (flags left out are None)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def from_args(cls: type[T], args: argparse.Namespace, base: T | None = None, **overrides: Any) -> T:
    """Build ``cls`` from ``base`` (or defaults), then flags the user gave, then ``overrides``; validated."""
    values = dataclasses.asdict(base) if base is not None else {}
    values.update(given(cls, args))
    values.update(overrides)
    return validate(cls(**values))


def from_json(cls: type[T], fields: dict[str, Any]) -> T:
    """Rebuild dataclass ``cls`` from its saved JSON form: lists become tuples, unknown keys are dropped."""
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known})
