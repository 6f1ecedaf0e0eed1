"""Declared domains of configuration fields: type, range or choices, list lengths.

Every field of :class:`refdtp.config.Config` has one :class:`Domain` in
``refdtp.config.DOMAINS``; :meth:`Config.validate` checks each value against
it and raises a one-line ``ValueError`` naming the key, the value and what is
allowed. The ``--set`` parser reads the same table for the type of a value.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

#: Lists whose length is one entry per trained feedback block (blocks 2..N).
PER_BLOCK = "per_block"
#: Lists that need at least one entry.
NONEMPTY = "nonempty"

_KIND_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
_PLURAL = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


@dataclass(frozen=True)
class Domain:
    """The values a field may take.

    Attributes:
        kind: bool, int, float, str or list.
        lo, hi: inclusive bounds of a number (or of each list element); None: unbounded.
        lo_open, hi_open: exclude the bound itself.
        choices: the allowed strings, or a function returning them (resolved lazily,
            so the algorithm core does not import the data package).
        element: element type of a list (int or float).
        length: list length rule: None (any), NONEMPTY, or PER_BLOCK (one entry per
            trained feedback block; checked once the network is built).
        path: a string that names a file or folder ("" = the default): no control characters.
    """
    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple | Callable | None = None
    element: type | None = None
    length: str | None = None
    path: bool = False

    def options(self) -> tuple | None:
        """The allowed strings (None: any string)."""
        return tuple(self.choices()) if callable(self.choices) else self.choices

    def value_type(self) -> type:
        """The type of a scalar value, or of a list's elements."""
        return self.element if self.kind is list else self.kind

    def describe(self) -> str:
        """What is allowed, in words, e.g. ``an integer >= 1`` or ``a number in [0, 1)``."""
        if self.options() is not None:
            return "one of " + ", ".join(repr(c) for c in self.options())
        if self.path:
            return "a path without control characters (\"\": the default)"
        if self.kind is list:
            what = f"a list of {_PLURAL[self.element]}{self._range_text(plural=True)}"
            return what + {NONEMPTY: " with at least one entry",
                           PER_BLOCK: ", one per trained feedback block"}.get(self.length, "")
        return _KIND_NAMES[self.kind] + self._range_text(plural=False)

    def _range_text(self, plural: bool) -> str:
        lo, hi = _fmt(self.lo), _fmt(self.hi)
        if self.lo is not None and self.hi is not None:
            return f" in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            if self.lo == 0 and not self.lo_open:
                return " (each non-negative, >= 0)" if plural else " (non-negative, >= 0)"
            return f" {'>' if self.lo_open else '>='} {lo}"
        if self.hi is not None:
            return f" {'<' if self.hi_open else '<='} {hi}"
        return ""

    def check(self, key: str, value) -> None:
        """Raise ValueError ``<key> must be <allowed>, got <value>`` unless ``value`` fits."""
        if not self._fits(value):
            raise ValueError(f"{key} must be {self.describe()}, got {value!r}")

    def _fits(self, value) -> bool:
        if self.kind is list:
            if not isinstance(value, (list, tuple)):
                return False
            if self.length == NONEMPTY and not value:
                return False
            return all(self._scalar_fits(v, self.element) for v in value)
        return self._scalar_fits(value, self.kind)

    def _scalar_fits(self, value, kind: type) -> bool:
        if not _is_kind(value, kind):
            return False
        if kind is str:
            if self.path:
                return not any(ord(c) < 32 or ord(c) == 127 for c in value)
            options = self.options()
            return options is None or value in options
        if kind is bool:
            return True
        return self._in_range(value)

    def _in_range(self, x) -> bool:
        if self.lo is not None and (x < self.lo or (self.lo_open and x == self.lo)):
            return False
        return not (self.hi is not None and (x > self.hi or (self.hi_open and x == self.hi)))


def _is_kind(value, kind: type) -> bool:
    if kind is bool:
        return type(value) is bool
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    return isinstance(value, kind)


def _fmt(x) -> str:
    return "" if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def number(lo=None, hi=None, *, lo_open=False, hi_open=False) -> Domain:
    """A finite float in the given range."""
    return Domain(float, lo, hi, lo_open, hi_open)


def integer(lo=None, hi=None) -> Domain:
    """An int in [lo, hi]."""
    return Domain(int, lo, hi)


def choice(options) -> Domain:
    """A string among ``options`` (a tuple, or a function returning one)."""
    return Domain(str, choices=options)


def text() -> Domain:
    """Any string (free text, or a path where "" means the default)."""
    return Domain(str)


def path() -> Domain:
    """A file or folder name ("": the default), without control characters."""
    return Domain(str, path=True)


def flag() -> Domain:
    """A boolean."""
    return Domain(bool)


def numbers(element: type, lo=None, hi=None, *, lo_open=False, length=None) -> Domain:
    """A list of ``element`` values, each in the range, with the given length rule."""
    return Domain(list, lo, hi, lo_open=lo_open, element=element, length=length)
