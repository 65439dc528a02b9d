"""Human labels for metric, config and summary columns: the one mapping every figure axis,
colour bar and summary.md header takes its text from (``kl/mean`` -> ``mean KL(old‖new)``)."""

from __future__ import annotations

#: Column name -> label. Columns not listed keep their name (:func:`label`).
LABELS: dict[str, str] = {
    # progress
    "iteration": "update",
    "env_steps": "environment steps",
    "time/wall_s": "wall time (s)",
    "time/sps": "env steps per second",
    "time/eval_s": "evaluation time (s)",
    "heldout/env_steps": "held-out env steps",
    "eval/env_steps": "evaluation env steps",
    # returns and J
    "rollout/return_mean": "return",
    "rollout/length_mean": "episode length",
    "true/J": "J",
    "mc/J": "J (Monte Carlo)",
    "true/J_se": "SE of J",
    "true/improvement_se": "SE of dJ",
    # size of the update
    "kl/mean": "mean KL(old‖new)",
    "kl/max": "max KL(old‖new)",
    "kl/reverse_mean": "mean KL(new‖old)",
    "policy/max_ratio": "max ratio π'/π",
    "policy/entropy": "entropy",
    # predicted and true improvement, bounds
    "surrogate/improvement": "predicted dL (in-sample)",
    "surrogate/improvement_heldout": "predicted dL (held-out)",
    "surrogate/linear_heldout": "first-order dL (held-out)",
    "surrogate/linear": "first-order dL (g·Δθ)",
    "exact/surrogate_improvement": "exact dL",
    "true/improvement": "true dJ",
    "bound/trpo": "TRPO bound on dJ",
    "bound/cpo": "CPO bound on dJ",
    "bound/C": "C = 4εγ/(1−γ)²",
    # line search
    "trpo/backtracks": "backtracks per update",
    "trpo/accepted": "acceptance rate",
    "penalty/beta": "KL penalty β used",
    # config
    "algo": "algorithm",
    "delta": "target KL δ",
    "beta": "KL penalty β",
    "gamma": "γ",
    "gae_lambda": "GAE λ",
    # summary table (analysis.tables)
    "n_runs": "runs",
    "n_failed": "failed",
    "n_incomplete": "incomplete",
    "n_updates": "updates",
    "final_J_iqm": "final J, IQM",
    "kl_mean": "mean KL(old‖new), mean",
    "dj_dl_median": "dJ/dL, median",
    "frac_improving": "updates with dJ > 0, fraction",
}


def label(column: str) -> str:
    """The label of ``column`` (its name when it has none)."""
    return LABELS.get(column, column)


def interval_label(column: str, aggregate: str, level: float = 0.95) -> str:
    """The header of an aggregate with its interval, e.g. ``final return, IQM [95% CI], n``:
    the cells then read ``8 [3, 13], n=2``."""
    return f"{label(column)}, {aggregate} [{100 * level:g}% CI], n"
