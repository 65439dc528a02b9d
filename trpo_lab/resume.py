"""A resumed run must be the run that was started: its configuration is checked key by key.

The checkpoint stores the run's whole configuration, flattened to dotted keys
(:func:`flat_config`). On resume, every key that changes results must be equal; the keys in
:data:`MAY_CHANGE_ON_RESUME` may differ (extending ``total_steps``, logging, the progress bar,
threads, checkpoint frequency, the failure threshold, the final evaluation).
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

# dotted keys (or prefixes ending in ".") that do not change what the updates compute (``device``
# changes only their rounding: a GPU run continued on the CPU, or the reverse, goes on from its
# checkpoint with the other device's kernels and, on the CPU, possibly the hand-written backend)
MAY_CHANGE_ON_RESUME = (
    "total_steps", "logger.", "progress", "torch_threads", "resume", "device",
    "checkpoint.every", "max_bad_updates", "eval.final_episodes",
)

_ABSENT = "(absent)"


class ResumeMismatch(ValueError):
    """The command's configuration differs from the run's in keys that change results."""

    def __init__(self, run_dir: Path, differences: list[tuple[str, Any, Any]]):
        shown = "; ".join(f"{key}={old!r} in the run, {new!r} now"
                          for key, old, new in differences[:6])
        more = f" (and {len(differences) - 6} more)" if len(differences) > 6 else ""
        super().__init__(
            f"cannot resume {run_dir} with another configuration: {shown}{more}. Use the run's "
            f"values (only total_steps, logger.*, progress, torch_threads, device, "
            f"checkpoint.every, max_bad_updates and eval.final_episodes may change) or another "
            f"hydra.run.dir")
        self.run_dir, self.differences = run_dir, differences


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            _flatten(getattr(value, f.name), f"{prefix}{f.name}.", out)
    elif isinstance(value, list | tuple):
        out[prefix[:-1]] = list(value)
    else:  # a number, string, bool, None or a dict (env.kwargs: compared as a whole)
        out[prefix[:-1]] = dict(value) if isinstance(value, dict) else value


def flat_config(cfg: Any) -> dict[str, Any]:
    """``{"algo.delta": 0.01, "seed": 0, ...}`` from the typed config."""
    out: dict[str, Any] = {}
    _flatten(cfg, "", out)
    return out


def may_change(key: str) -> bool:
    return any(key == allowed or (allowed.endswith(".") and key.startswith(allowed))
               for allowed in MAY_CHANGE_ON_RESUME)


def config_differences(stored: dict[str, Any], current: dict[str, Any]
                       ) -> list[tuple[str, Any, Any]]:
    """Keys that change results and differ, as ``(key, stored value, current value)``.

    A key known to only one side is compared only when the algorithm or the env differ (then
    their own keys are part of the difference); otherwise it is a key that this version of the
    code added or removed, and there is nothing to compare it with.
    """
    family_changed = any(stored.get(k) != current.get(k) for k in ("algo.name", "env.id"))
    differences = []
    for key in sorted(set(stored) | set(current)):
        if may_change(key):
            continue
        if key not in stored or key not in current:
            if family_changed:
                differences.append((key, stored.get(key, _ABSENT), current.get(key, _ABSENT)))
            continue
        if stored[key] != current[key]:
            differences.append((key, stored[key], current[key]))
    # values on both sides first (algo.name='trpo' ... 'ppo'), then the keys only one side has
    return sorted(differences, key=lambda d: (_ABSENT in (d[1], d[2]), d[0]))
