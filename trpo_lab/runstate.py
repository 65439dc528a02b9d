"""A run's state between updates: ONE record of its counters and random streams, which the
checkpoint writes, a resume loads and a dropped update rewinds to.

:class:`Counters` are the numbers that advance with the updates (iteration, env steps, the
evaluation's and probes' env steps, the last true J, the training seconds, the W&B id);
:class:`RunState` is the counters with the random streams (the run's torch generator, torch's,
numpy's and Python's global ones) and where metrics.csv and probes.csv end. The checkpoint
holds them under the same flat keys as always (``iteration``, ``env_steps``, ``wall_s``,
``generator``, ``torch_rng``, ``metrics``, ...), so checkpoints of earlier versions resume;
keys added later read as their start values.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from trpo_lab.logging import MetricsPosition

#: Counters that checkpoints of earlier versions lack, read as these values.
LATER_COUNTERS: dict[str, Any] = {"last_true_J_se": math.nan, "heldout_env_steps": 0,
                                  "eval_env_steps": 0, "probe_env_steps": 0}


@dataclass
class Counters:
    """The counters of a run (checkpoint keys of the same names)."""

    iteration: int = 0  # updates done
    env_steps: int = 0
    bad_updates: int = 0  # consecutive updates with non-finite numbers
    wall_s: float = 0.0  # training seconds before this process's session
    heldout_env_steps: int = 0
    eval_env_steps: int = 0
    probe_env_steps: int = 0
    last_true_J: float = math.nan  # true/J (and its SE) of the last row that has one
    last_true_J_se: float = math.nan
    last_returns: list[float] = field(default_factory=list)
    run_id: str = ""  # the W&B run id, kept across resumes

    def to_state(self, session_s: float) -> dict[str, Any]:
        """The checkpoint's keys; ``wall_s`` with this session's ``session_s`` added."""
        return asdict(self) | {"wall_s": self.wall_s + session_s}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Counters:
        return cls(**{f.name: state[f.name] if f.name in state else LATER_COUNTERS[f.name]
                      for f in fields(cls)})


@dataclass
class RandomStreams:
    """The run's torch generator and the global torch, numpy and Python generators."""

    generator: torch.Tensor
    torch_rng: torch.Tensor
    numpy_rng: Any
    python_rng: Any

    @classmethod
    def capture(cls, generator: torch.Generator) -> RandomStreams:
        return cls(generator.get_state(), torch.get_rng_state(), np.random.get_state(),
                   random.getstate())

    def restore(self, generator: torch.Generator) -> None:
        generator.set_state(self.generator)
        torch.set_rng_state(self.torch_rng)
        np.random.set_state(self.numpy_rng)
        random.setstate(self.python_rng)


@dataclass
class RunState:
    """Counters, random streams and the files' ends: what one checkpoint holds of the run's
    progress (its models are the Trainer's)."""

    counters: Counters
    streams: RandomStreams | None
    metrics: MetricsPosition | None
    probes: MetricsPosition | None

    def to_state(self, session_s: float) -> dict[str, Any]:
        """The checkpoint's keys for this record."""
        out = self.counters.to_state(session_s)
        if self.streams is not None:
            out |= vars(self.streams)
        if self.metrics is not None:
            out["metrics"] = vars(self.metrics)
        if self.probes is not None:
            out["probes"] = vars(self.probes)
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunState:
        streams = RandomStreams(*(state[f.name] for f in fields(RandomStreams))) \
            if all(f.name in state for f in fields(RandomStreams)) else None
        return cls(Counters.from_state(state), streams,
                   MetricsPosition(**state["metrics"]) if "metrics" in state else None,
                   MetricsPosition(**state["probes"]) if "probes" in state else None)

    def copy(self) -> RunState:
        return copy.deepcopy(self)
