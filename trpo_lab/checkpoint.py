"""Atomic checkpoints: write to a temporary file in the same directory, then rename.

Whatever stops the write (a full disk, a second Ctrl-C, an error), the previous checkpoint stays
untouched and the temporary file is removed. Loading checks the file before it is trusted.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from trpo_lab.rundir import RunFileError

# what every checkpoint of this project holds (older ones may lack later additions)
REQUIRED_KEYS = ("iteration", "env_steps", "policy", "algo", "critic", "collector")


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):  # best effort: the caller reports what led here
        path.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file)`` on ``path``'s temporary sibling, fsync it and rename it over ``path``;
    on any failure (BaseException: Ctrl-C included) remove the temporary file and re-raise."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def _restart_advice(path: Path) -> str:
    return (f"Put back a good copy of {path.name} if you keep one, or start a new run directory "
            f"(another hydra.run.dir)")


def misfit(path: Path, part: str, error: Exception) -> RunFileError:
    """A checkpoint that reads but whose ``part`` does not fit the model built for this run
    (tensors of another shape, missing entries): refused like a configuration (exit 2)."""
    lines = str(error).strip().splitlines()
    reason = " ".join(line.strip() for line in lines[:3])[:300] or type(error).__name__
    return RunFileError(path, f"it does not fit this run's {part} ({reason})",
                        _restart_advice(path), exit_code=2)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's state, or :class:`RunFileError` if it is cut, empty or not ours."""
    try:
        if path.stat().st_size == 0:
            raise RunFileError(path, "the checkpoint is empty", _restart_advice(path))
        state = torch.load(path, weights_only=False, map_location="cpu")
    except RunFileError:
        raise
    except (OSError, EOFError, RuntimeError, ValueError, TypeError, AttributeError, KeyError,
            IndexError, ImportError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RunFileError(path, f"the checkpoint cannot be read ({reason[:200]})",
                           _restart_advice(path)) from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise RunFileError(path, f"not a trpo-lab checkpoint (missing {', '.join(missing)})",
                           _restart_advice(path))
    return state
