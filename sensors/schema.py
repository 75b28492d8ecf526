"""The schema language of the configuration, in the manner of ESPHome's ``CONFIG_SCHEMA``: a
table is a mapping of `Key`s; a key is a check (which validates one TOML value and converts it)
and a default. A default is written as it would be in the file and goes through the same check.
A failed check raises `Invalid`, whose path each enclosing table extends; `edge_node.config` turns
it into the one-line `ConfigError`. Sensor components (`sensors/<driver>/`) declare their
options in it, and the config's own sections too.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class Invalid(Exception):
    """One value failed its check. Each table it passes through on the way up prepends its key."""

    def __init__(self, problem: str, *path: str, did_you_mean: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = list(path)
        self.did_you_mean = did_you_mean  # a sibling key, for "unknown key"


Check = Callable[[Any], Any]
REQUIRED: Any = object()


@dataclass(frozen=True)
class Key:
    """One key of a table: `check` validates and converts the value. `default` is REQUIRED,
    None (optional, no value) or a value written as in the file, which `check` also converts."""

    check: Check
    default: Any = REQUIRED


def show(value: Any) -> str:
    """A value as the user would recognise it from the file, JSON-like, on one line."""
    if isinstance(value, float) and not math.isfinite(value):
        shown = repr(value)  # nan, inf, -inf: as TOML writes them
    elif isinstance(value, datetime.date | datetime.time):
        shown = value.isoformat()  # unquoted, as TOML writes it
    else:
        shown = json.dumps(value, ensure_ascii=False, default=str)  # default: dates inside arrays or tables
    return shown if len(shown) <= 60 else shown[:57] + "..."


def either(options: list[str]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


def check_at(name: str, check: Check, value: Any) -> Any:
    try:
        return check(value)
    except Invalid as err:
        err.path.insert(0, name)
        raise


def validate_table(value: Any, schema: Mapping[str, Key]) -> dict[str, Any]:
    """Check a table's keys in file order, then fill defaults; the result is in schema order."""
    if not isinstance(value, dict):
        raise Invalid(f"must be a table (got {show(value)})")
    checked = {}
    for name, item in value.items():
        if name not in schema:
            import difflib  # only for a message; not worth its memory in a running daemon

            close = difflib.get_close_matches(name, list(schema), n=1)
            raise Invalid("unknown key", name, did_you_mean=close[0] if close else None)
        checked[name] = check_at(name, schema[name].check, item)
    for name, key in schema.items():
        if name in checked:
            continue
        if key.default is REQUIRED:
            raise Invalid("required", name)
        checked[name] = None if key.default is None else check_at(name, key.check, key.default)
    return {name: checked[name] for name in schema}


def table(schema: Mapping[str, Key], *, then: Callable[[dict[str, Any]], None] | None = None) -> Check:
    """A check for a table with these keys; `then` checks rules across its keys."""

    def check(value: Any) -> dict[str, Any]:
        result = validate_table(value, schema)
        if then is not None:
            then(result)
        return result

    return check


def integer(*, min: int | None = None, max: int | None = None) -> Check:
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(f"must be an integer (got {show(value)})")
        _check_bounds(value, min=min, max=max)
        return value

    return check


def number(*, min: float | None = None, above: float | None = None, max: float | None = None) -> Check:
    """A float; TOML integers are accepted, booleans never. `above` is an exclusive minimum."""

    def check(value: Any) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise Invalid(f"must be a number (got {show(value)})")
        if not math.isfinite(value):
            raise Invalid(f"must be a finite number (got {show(value)})")
        if above is not None and not value > above:
            raise Invalid(f"must be > {above} (got {show(value)})")
        _check_bounds(value, min=min, max=max)
        return float(value)

    return check


def _check_bounds(value: float, *, min: float | None, max: float | None) -> None:
    if min is not None and value < min:
        raise Invalid(f"must be >= {min} (got {show(value)})")
    if max is not None and value > max:
        raise Invalid(f"must be <= {max} (got {show(value)})")


def string(*, pattern: str | None = None, allow_empty: bool = False) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(f"must be a string (got {show(value)})")
        if not value and not allow_empty:
            raise Invalid("must not be empty")
        if pattern is not None and not re.fullmatch(pattern, value):
            raise Invalid(f"must match {pattern} (got {show(value)})")
        return value

    return check


def boolean() -> Check:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise Invalid(f"must be true or false (got {show(value)})")
        return value

    return check


def choice(
    *options: Any, aliases: Mapping[Any, Any] | None = None, show: Callable[[Any], str] = show
) -> Check:
    """One of `options` (all strings or all integers); an alias is accepted and replaced."""
    aliases = aliases or {}
    type_check = integer() if isinstance(options[0], int) else string()

    def check(value: Any) -> Any:
        value = aliases.get(type_check(value), value)
        if value not in options:
            raise Invalid(f"must be {either([show(option) for option in options])} (got {show(value)})")
        return value

    return check
