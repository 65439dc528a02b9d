"""One-line refusals for the errors Hydra and OmegaConf raise while composing the configuration.

Hydra reports an unknown option, a value of the wrong type or an unknown key in several lines
(its own message, OmegaConf's, the config search path) and without a fix. :func:`explain`
turns each into the one line the app prints after ``trpo-lab: error:`` (exit code 2): the key,
what is allowed and, where one can be guessed, the fix. Pure functions of the exception.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Sequence
from typing import Any

from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from trpo_lab.config import ALGO_SCHEMAS, Config

SWEEP_COMMAND = "trpo-lab-sweep NAME"


def first_line(text: object) -> str:
    lines = str(text).strip().splitlines()
    return lines[0].strip() if lines else ""


def closest(word: str, options: Sequence[str]) -> str | None:
    """The option ``word`` was most likely meant to be: the same but for case, else the closest
    by :mod:`difflib` (ratio >= 0.6), else None."""
    by_lower = {option.lower(): option for option in options}
    if word.lower() in by_lower:
        return by_lower[word.lower()]
    match = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[match[0]] if match else None


def unknown_option(missing: str, options: Sequence[str] | None,
                   sweeps: Sequence[str] = ()) -> str:
    """``algo/trop`` (Hydra's missing config file) -> ``unknown option algo=trop: did you mean
    algo=trpo? options: kl_penalty, npg, ppo, trpo, vpg``. A missing primary config (no group:
    ``--config-name NAME``) points at the named sweeps."""
    group, _, name = missing.rpartition("/")
    if not group:
        guess = closest(name, sweeps)
        if guess == name:
            return (f"no config named {name!r} here; {name} is a named sweep: run "
                    f"`trpo-lab-sweep {name}` (from any directory)")
        hint = f"did you mean {guess}? " if guess else ""
        listed = ", ".join(sorted(sweeps))
        return (f"no config named {name!r}: {hint}named sweeps run from any directory with "
                f"`{SWEEP_COMMAND}` (NAME one of {listed})" if sweeps else
                f"no config named {name!r} in the config search path")
    options = sorted(options or [])
    guess = closest(name, options)
    hint = f"did you mean {group}={guess}? " if guess else ""
    return f"unknown option {group}={name}: {hint}options: {', '.join(options)}"


def _schema_of(path: str) -> type | None:
    """The dataclass holding the key ``path`` (``policy.hidden_sizes`` -> PolicyConfig), for the
    keys of :class:`Config` and its typed sub-configs (not ``algo.*``: its schema depends on
    the option chosen, see :func:`explain`)."""
    owner: Any = Config
    for part in path.split(".")[:-1]:
        hints = typing.get_type_hints(owner)
        owner = hints.get(part)
        if not (isinstance(owner, type) and dataclasses.is_dataclass(owner)):
            return None
    return owner


def _field(owner: type, name: str) -> tuple[Any, Any] | None:
    """``(type, default)`` of the schema field ``owner.name``, or None."""
    for f in dataclasses.fields(owner):
        if f.name == name:
            default = f.default
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            return typing.get_type_hints(owner)[name], default
    return None


def _as_override(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_as_override(v) for v in value) + "]"
    return str(value)


def allowed_for(kind: Any, key: str, value: Any, default: Any) -> str | None:
    """What a value of the schema type ``kind`` looks like, with the fix for ``value``."""
    origin = typing.get_origin(kind)
    if origin is list:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return f"must be a list: write '{key}=[{_as_override(value)}]' (quoted for the shell)"
        example = _as_override(default) if default else "[64,64]"
        return f"must be a list of integers, e.g. '{key}={example}' (quoted for the shell)"
    if kind is bool:
        return f"must be true or false, e.g. {key}={_as_override(bool(default))}"
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return f"must be an integer: write {key}={int(value)}"
        return f"must be an integer, e.g. {key}={default}"
    if kind is float:
        return f"must be a number, e.g. {key}={_as_override(default)}"
    return None


def wrong_type(error: OmegaConfBaseException, override: str | None) -> str:
    """A value of the wrong type: ``invalid value total_steps=1e5: must be an integer: write
    total_steps=100000``."""
    full_key = str(getattr(error, "full_key", "") or "")
    key = re.sub(r"\[\d+\]$", "", full_key)  # an element of a list: the list's key
    value = getattr(error, "value", None)
    shown = override if override else f"{key}={_as_override(value)}"
    owner = getattr(error, "object_type", None)
    if key != full_key or not (isinstance(owner, type) and dataclasses.is_dataclass(owner)):
        owner = _schema_of(key)
    spec = _field(owner, key.rsplit(".", 1)[-1]) if owner is not None else None
    if spec is not None and key != full_key and override:
        value = None  # the list itself was a list: say what its elements must be
    allowed = allowed_for(spec[0], key, value, spec[1]) if spec is not None else None
    return f"invalid value {shown}: {allowed or first_line(error)}"


def unknown_key(error: OmegaConfBaseException) -> str:
    """A key the schema does not have: ``unknown key algo.deltaa: did you mean algo.delta?``,
    or, for a key of another algorithm, which one has it."""
    full_key = str(getattr(error, "full_key", "") or "")
    prefix, _, name = full_key.rpartition(".")
    owner = getattr(error, "object_type", None)
    if not (isinstance(owner, type) and dataclasses.is_dataclass(owner)):
        return f"unknown key {full_key}: {first_line(error)}"
    keys = [f.name for f in dataclasses.fields(owner)]
    if prefix == "algo":
        chosen = [a for a, schema in ALGO_SCHEMAS.items() if schema is owner]
        having = [a for a, schema in ALGO_SCHEMAS.items()
                  if name in {f.name for f in dataclasses.fields(schema)}]
        if having:
            return (f"unknown key {full_key} for algo={'/'.join(chosen) or '?'}: it is a key of "
                    f"{', '.join('algo=' + a for a in having)}")
    guess = closest(name, keys)
    if guess:
        return f"unknown key {full_key}: did you mean {prefix + '.' if prefix else ''}{guess}?"
    where = prefix or "the top level"
    return f"unknown key {full_key}: the keys of {where} are {', '.join(sorted(keys))}"


def _override_of(error: BaseException) -> str | None:
    match = re.match(r"Error merging override (\S.*)$", first_line(error))
    return match.group(1) if match else None


def explain(error: BaseException, sweeps: Sequence[str] = ()) -> str:
    """The one-line refusal for a composition error of Hydra (``sweeps``: the named sweeps,
    offered when the primary config is not found)."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        return unknown_option(error.missing_cfg_file, error.options, sweeps)
    if isinstance(error, OverrideParseException):
        return f"cannot parse the overrides ({first_line(error)}): write key=value, lists as " \
               f"'key=[a,b]'"
    cause = error.__cause__ if error.__cause__ is not None else error
    if isinstance(cause, ConfigAttributeError | ConfigKeyError):
        return unknown_key(cause)
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return wrong_type(cause, _override_of(error))
    detail = first_line(cause) if cause is not error else ""
    return first_line(error) + (f": {detail}" if detail and detail not in first_line(error) else "")
