"""One declaration of a configuration option: its default, its type and its range.

Every configurable value in segood is declared with :class:`Opt`, wherever its owner lives: the
schema of the plain config sections and the options of registry members (scores, synthesizers,
readers, outlier losses) use the same class, so one checker gives one kind of message for all of
them (``train.steps: -5 in configs/x.yaml: expected an integer >= 1``). A leaf module: it imports
nothing from segood, every layer may use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["Opt", "OptionError", "check_value", "check_options"]

_KIND_WORDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a mapping"}


class OptionError(ValueError):
    """A configuration value that does not match its declaration (the message names key and file)."""


@dataclass(frozen=True)
class Opt:
    """One option: ``default`` and what a value must be.

    kind: ``bool | int | float | str | list | dict``, or a tuple of them for a value that may take
    several forms (``(str, list)``: a name or a list of names); an int is accepted where a float is
    expected; ``choices``: the allowed values; ``min`` / ``max``: inclusive bounds for numbers;
    ``nullable``: ``None`` (YAML ``null``) is allowed; ``doc``: one line for ``--show`` listings.
    """

    default: Any
    kind: type | tuple[type, ...]
    doc: str = ""
    choices: Sequence[Any] | None = None
    min: float | None = None
    max: float | None = None
    nullable: bool = False

    def expected(self) -> str:
        """The expectation in words, as error messages print it."""
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
            text = " or ".join(_KIND_WORDS.get(k, k.__name__) for k in kinds)
            if self.min is not None and self.max is not None:
                text += f" in [{self.min}, {self.max}]"
            elif self.min is not None:
                text += f" >= {self.min}"
            elif self.max is not None:
                text += f" <= {self.max}"
        return text + (" or null" if self.nullable else "")


def _kind_ok(value: Any, kind: type | tuple[type, ...]) -> bool:
    if isinstance(kind, tuple):
        return any(_kind_ok(value, k) for k in kind)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, kind)


def check_value(key: str, value: Any, opt: Opt, source: str = "") -> Any:
    """Return ``value`` (an int given for a float option becomes a float) or raise
    :class:`OptionError` naming the key, the value, the source file and the expectation."""
    where = f" in {source}" if source else ""
    bad = OptionError(f"{key}: {value!r}{where}: expected {opt.expected()}")
    if value is None:
        if opt.nullable:
            return None
        raise bad
    if opt.choices is not None:
        if value not in opt.choices:
            raise bad
        return value
    if not _kind_ok(value, opt.kind):
        raise bad
    if opt.kind in (int, float):
        if (opt.min is not None and value < opt.min) or (opt.max is not None and value > opt.max):
            raise bad
        return float(value) if opt.kind is float else value
    return value


def check_options(prefix: str, given: dict[str, Any] | None, declared: dict[str, Opt],
                  source: str = "") -> dict[str, Any]:
    """Check a member's options section against its declaration and fill in the defaults.

    ``prefix`` is the dotted path of the section (``synthesis.feature_mixing``), used in messages;
    an unknown key is an error that lists the known ones.
    """
    given = dict(given or {})
    where = f" in {source}" if source else ""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        known = ", ".join(sorted(declared)) or "none"
        raise OptionError(f"{prefix}.{unknown[0]}{where}: unknown option (known: {known})")
    return {name: check_value(f"{prefix}.{name}", given[name], opt, source) if name in given else opt.default
            for name, opt in declared.items()}
