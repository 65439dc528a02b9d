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
from scipy import stats as sps

#: z of a two-sided 95 % normal interval: an update's dJ is "resolved" when |dJ| > Z95 * SE
Z95 = 1.959963984540054

#: The keys comparison_figures adds to a run's summary, with their meaning (README, W&B panels).
COMPARISON_KEYS = {
    "resolved_fraction": "fraction of evaluated updates whose dJ is resolved: |true/improvement|"
                         " > 1.96 true/improvement_se (an exact dJ, SE 0, counts when it is not 0)",
    "spearman_dL_dJ": "Spearman rank correlation of the held-out dL "
                      "(surrogate/improvement_heldout) with dJ (true/improvement) over updates",
    "calibration_coverage": "fraction of updates where |held-out dL - dJ| <= 1.96 sqrt(SE_dL^2 +"
                            " SE_dJ^2): the prediction agrees with the truth within its noise",
    "calibration_slope": "OLS slope of dJ on the held-out dL over updates (1 = calibrated)",
    "bound_vacuity_rate": "fraction of updates whose TRPO lower bound (bound/trpo) is below 0, "
                          "so it certifies no improvement (tabular envs only)",
    "kl_mean": "mean over updates of kl/mean",
    "kl_mean_over_delta": "kl_mean / algo.delta: how much of the trust region the steps use "
                          "(TRPO and NPG only)",
    "steps_per_s": "env_steps / wall_s over the whole run",
}


def read_metrics(text: str) -> list[dict[str, float]]:
    """metrics.csv's rows as dicts of floats (NaN for an empty cell)."""
    return [{k: float(v) if v else math.nan for k, v in row.items()}
            for row in csv.DictReader(io.StringIO(text))]


def _column(rows: Sequence[Mapping[str, float]], key: str) -> np.ndarray:
    return np.array([row.get(key, math.nan) for row in rows], dtype=float)


def _fraction(flags: np.ndarray) -> float | None:
    return float(flags.mean()) if flags.size else None


def comparison_figures(rows: Sequence[Mapping[str, float]], delta: float | None,
                       env_steps: int, wall_s: float) -> dict[str, float | None]:
    """The :data:`COMPARISON_KEYS` of a run from its metrics rows. ``delta``: the trust
    region's size (None for algorithms without one)."""
    dj, dj_se = _column(rows, "true/improvement"), _column(rows, "true/improvement_se")
    dl, dl_se = (_column(rows, "surrogate/improvement_heldout"),
                 _column(rows, "surrogate/improvement_heldout_se"))
    evaluated = np.isfinite(dj) & np.isfinite(dj_se)
    resolved = np.where(dj_se[evaluated] > 0,
                        np.abs(dj[evaluated]) > Z95 * dj_se[evaluated], dj[evaluated] != 0)
    paired = evaluated & np.isfinite(dl) & np.isfinite(dl_se)
    spearman = slope = None
    if paired.sum() >= 3 and np.ptp(dl[paired]) > 0 and np.ptp(dj[paired]) > 0:
        spearman = float(sps.spearmanr(dl[paired], dj[paired]).statistic)
        slope = float(np.polyfit(dl[paired], dj[paired], 1)[0])
    combined = np.sqrt(dl_se[paired] ** 2 + dj_se[paired] ** 2)
    agree = np.abs(dl[paired] - dj[paired]) <= Z95 * combined
    bound = _column(rows, "bound/trpo")
    kl = _column(rows, "kl/mean")
    kl = kl[np.isfinite(kl)]
    kl_mean = float(kl.mean()) if kl.size else None
    return {
        "resolved_fraction": _fraction(resolved),
        "spearman_dL_dJ": spearman,
        "calibration_coverage": _fraction(agree),
        "calibration_slope": slope,
        "bound_vacuity_rate": _fraction(bound[np.isfinite(bound)] < 0),
        "kl_mean": kl_mean,
        "kl_mean_over_delta": kl_mean / delta if kl_mean is not None and delta else None,
        "steps_per_s": env_steps / wall_s if wall_s > 0 else None,
    }
