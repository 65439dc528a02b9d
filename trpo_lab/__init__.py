"""trpo-lab: TRPO and its baselines, exact tabular ground truth, sweeps and figures."""

__version__ = "0.1.0"
