"""Errors of env construction that the env modules raise themselves (no imports: the tabular
module raises them without importing the package that builds envs)."""

from __future__ import annotations


class ActionComponentsError(ValueError):
    """A tabular env's action factorisation does not match its number of actions."""
