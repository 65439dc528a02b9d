"""Guards that keep a broken run from looking like a good one.

- A batch whose advantages or returns overflow (non-finite, or too large to standardise in
  float32: rewards of 1e30) and a non-finite critic loss make the update non-finite, like a
  non-finite actor update: the actor's step is undone, ``guard/nonfinite=1``, and
  ``max_bad_updates`` of them in a row fail the run.
- A policy that has not moved for :data:`STALL_UPDATES` updates in a row (every step rejected,
  or a zero step) warns once, naming the likely cause.
"""

from __future__ import annotations

import math
from typing import Any

import torch

STALL_UPDATES = 10  # updates in a row without any change of the actor's parameters
HUGE_RETURN = 1e15  # |returns| beyond this: their squares overflow float32 statistics


def _finite(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and math.isfinite(value))


def batch_overflow(advantages: torch.Tensor, returns: torch.Tensor | None) -> bool:
    """Advantages or critic targets (None: an exact batch has none) that are non-finite, or
    whose sum of squares (their standardisation, the critic's loss) overflows float32."""
    squares = (advantages.float() ** 2).sum()
    if returns is not None:
        squares = squares + (returns.float() ** 2).sum()
    return not bool(torch.isfinite(squares))


def critic_nonfinite(row: dict[str, Any]) -> bool:
    """A non-finite critic loss (targets or values overflowed) is a non-finite update."""
    return not _finite(row.get("value/loss"))


def _huge_returns(row: dict[str, Any]) -> bool:
    return any(isinstance(row.get(k), int | float) and abs(row[k]) > HUGE_RETURN
               for k in ("rollout/return_mean", "true/J", "mc/J"))


def nonfinite_hint(row: dict[str, Any]) -> str:
    """What a non-finite update's row says about its cause, for the failure message."""
    if critic_nonfinite(row) or _huge_returns(row):
        return (f"; value/loss={row.get('value/loss')}, rollout/return_mean="
                f"{row.get('rollout/return_mean')}: the returns overflow (rewards too large, "
                f"e.g. 1e30 per step?); rescale the env's rewards")
    return ""


def stall_cause(cfg: Any, rows: list[dict[str, Any]]) -> str:
    """The likeliest reason why the policy did not move in these updates."""
    if any(critic_nonfinite(r) or _huge_returns(r) or not _finite(r.get("surrogate/improvement"))
           for r in rows):
        return ("non-finite returns or advantages: the rewards overflow (e.g. 1e30 per step); "
                "rescale the env's rewards")
    if cfg.normalize_advantages and cfg.batch_steps < 2 * cfg.num_envs:
        return (f"batch_steps={cfg.batch_steps}: standardised advantages of so few samples are "
                f"zero; use a larger batch_steps (or normalize_advantages=false)")
    if all(r.get("guard/nonfinite") for r in rows):
        return "every update had non-finite numbers"
    rejected = all(r.get("trpo/accepted") == 0 for r in rows)
    if rejected and cfg.env.tabular and cfg.algo.estimator == "exact":
        return (f"TRPO's line search rejected every step of the exact surrogate: the policy has "
                f"converged (true/J = {rows[-1].get('true/J', float('nan')):.6g}; its exact "
                f"gradient is rounding noise), nothing to fix; fewer total_steps end the run "
                f"there")
    if rejected:
        return ("TRPO's line search rejected every step (the surrogate never improved within "
                "algo.delta); check the rewards' scale, algo.delta and algo.backtrack_iters")
    return ("every update was a zero step (a zero policy gradient: advantages all zero or "
            "huge); check the rewards and batch_steps")


class ProgressWatch:
    """Counts updates in a row that left the actor unchanged; warns once."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.still: list[dict[str, Any]] = []
        self.warned = False

    def observe(self, row: dict[str, Any], moved: bool) -> str | None:
        """Record one update; returns the warning the first time the policy is stuck."""
        if moved:
            self.still = []
            return None
        self.still = [*self.still[-(STALL_UPDATES - 1):], row]
        if self.warned or len(self.still) < STALL_UPDATES:
            return None
        self.warned = True
        return (f"the policy has not changed for {STALL_UPDATES} updates in a row (up to "
                f"iteration {row['iteration']}): likely cause: {stall_cause(self.cfg, self.still)}")

    def state_dict(self) -> dict[str, Any]:
        return {"still": len(self.still), "warned": self.warned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warned = state["warned"]
        self.still = [{}] * min(state["still"], STALL_UPDATES - 1)
