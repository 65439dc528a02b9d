"""The figures a runs table sorts a sweep by, computed from one run's metrics.csv.

They go into summary.json and W&B's run summary (one flat key each), so that W&B's runs table
and its parallel-coordinates panel compare the runs of a sweep without any export. Every figure
is ``None`` where the run has nothing to compute it from (no evaluated update, no held-out
batch, no trust region), never a made-up zero.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

# an update's dJ is "resolved" when |dJ| > Z95 * SE
from trpo_lab.intervals import Z_95 as Z95

#: The keys comparison_figures adds to a run's summary, with their meaning (README, W&B panels);
#: the prediction-against-truth statistics beside them are trpo_lab.intervals'
#: ``prediction/*`` keys (run_prediction_summary).
COMPARISON_KEYS = {
    "resolved_fraction": "fraction of evaluated updates whose dJ is resolved: |true/improvement|"
                         " > 1.96 true/improvement_se (an exact dJ, SE 0, counts when it is not 0)",
    "kl_mean": "mean over updates of kl/mean",
    "kl_mean_over_delta": "kl_mean / algo.delta: how much of the trust region the steps use "
                          "(TRPO and NPG only)",
    "steps_per_s": "env_steps / wall_s over the whole run",
}


def read_metrics(text: str) -> list[dict[str, float]]:
    """metrics.csv's rows as dicts of floats (NaN for an empty cell)."""
    return [{k: float(v) if v else math.nan for k, v in row.items()}
            for row in csv.DictReader(io.StringIO(text))]


def column(rows: Sequence[Mapping[str, float]], key: str) -> np.ndarray:
    """One metric over the rows (NaN where a row has no value)."""
    return np.array([row.get(key, math.nan) for row in rows], dtype=float)


def comparison_figures(rows: Sequence[Mapping[str, float]], delta: float | None,
                       env_steps: int, wall_s: float) -> dict[str, float | None]:
    """The :data:`COMPARISON_KEYS` of a run from its metrics rows. ``delta``: the trust
    region's size (None for algorithms without one)."""
    dj, dj_se = column(rows, "true/improvement"), column(rows, "true/improvement_se")
    evaluated = np.isfinite(dj) & np.isfinite(dj_se)
    resolved = np.where(dj_se[evaluated] > 0,
                        np.abs(dj[evaluated]) > Z95 * dj_se[evaluated], dj[evaluated] != 0)
    kl = column(rows, "kl/mean")
    kl = kl[np.isfinite(kl)]
    kl_mean = float(kl.mean()) if kl.size else None
    return {
        "resolved_fraction": float(resolved.mean()) if resolved.size else None,
        "kl_mean": kl_mean,
        "kl_mean_over_delta": kl_mean / delta if kl_mean is not None and delta else None,
        "steps_per_s": env_steps / wall_s if wall_s > 0 else None,
    }
