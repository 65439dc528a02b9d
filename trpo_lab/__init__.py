"""trpo-lab: TRPO and its baselines, exact tabular ground truth, sweeps and figures."""

import os

# One OpenBLAS thread per process, set before numpy loads it. The hand-written MLP derivatives
# multiply small matrices, where a second BLAS thread gains nothing alone and, with two runs on
# two cores (every sweep), makes them 3-7x slower by contention. Export the variable to override.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
