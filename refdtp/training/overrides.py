"""``--set key=value`` overrides of :class:`refdtp.config.Config` fields, type-checked.

The type of a field is its declared domain's (:data:`refdtp.config.DOMAINS`):
bool, int, float, str, or a list of ints or floats. Lists are written
``[0.4,0.4,0.2]`` or ``0.4,0.4,0.2``. String fields with a fixed set of values
(algorithm, network, dataset, ...) are checked against it here; ranges are
checked by :meth:`Config.validate` (before anything is written), and whether a
per-block list has the right length once the network is built.
"""
from __future__ import annotations

import dataclasses
import math

from ..config import DOMAINS, Config

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class ConfigError(ValueError):
    """The command line or config does not define a runnable configuration."""


class OverrideError(ConfigError):
    """A ``--set`` item is malformed, names no field, or has the wrong type."""


def field_types() -> dict:
    """{field: (type, element type or None)} from the declared domains of :class:`Config`."""
    out = {}
    for f in dataclasses.fields(Config):
        domain = DOMAINS.get(f.name)
        if domain is None:
            raise ConfigError(f"config field {f.name!r} has no declared domain in refdtp.config.DOMAINS")
        out[f.name] = (domain.kind, domain.element)
    return out


def string_choices() -> dict:
    """{field: allowed values} for the string fields that have a fixed set."""
    return {key: d.options() for key, d in DOMAINS.items() if d.kind is str and d.options() is not None}


def parse_scalar(key: str, text: str, kind: type):
    """``text`` as a bool, int, float or str; OverrideError naming ``key`` otherwise."""
    text = text.strip()
    if kind is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise OverrideError(f"--set {key}: expected a boolean (true/false), got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise OverrideError(f"--set {key}: expected an integer, got {text!r}") from None
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            raise OverrideError(f"--set {key}: expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise OverrideError(f"--set {key}: expected a finite number, got {text!r}")
        return value
    return text


def parse_value(key: str, text: str):
    """The typed value of field ``key`` written as ``text``."""
    types = field_types()
    if key not in types:
        raise OverrideError(f"--set: unknown config key {key!r}; valid keys: {', '.join(sorted(types))}")
    kind, element = types[key]
    if kind is list:
        body = text.strip()
        if body.startswith("[") != body.endswith("]"):
            raise OverrideError(f"--set {key}: unbalanced brackets in {text!r}")
        body = body.strip("[]").strip()
        items = [item for item in body.split(",")] if body else []
        if any(not item.strip() for item in items):
            raise OverrideError(f"--set {key}: empty list element in {text!r}")
        return [parse_scalar(key, item, element) for item in items]
    value = parse_scalar(key, text, kind)
    choices = string_choices().get(key)
    if choices is not None and value not in choices:
        raise OverrideError(f"--set {key}: {value!r} is not one of {', '.join(choices)}")
    return value


def apply_overrides(cfg: Config, items) -> Config:
    """A copy of ``cfg`` with every ``key=value`` of ``items`` applied, in order."""
    changes = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise OverrideError(f"--set expects key=value, got {item!r}")
        changes[key.strip()] = parse_value(key.strip(), text)
    return dataclasses.replace(cfg, **changes)
