"""trpo-lab: TRPO and its baselines, exact tabular ground truth, sweeps and figures."""

import time

# the process's start for start-up timings (summary.json's startup): this package is the first
# thing the console script (trpo_lab.app) imports
PROCESS_STARTED = time.time()

import os  # noqa: E402

# One OpenBLAS thread per process, set before numpy loads it. The hand-written MLP derivatives
# multiply small matrices, where a second BLAS thread gains nothing alone and, with two runs on
# two cores (every sweep), makes them 3-7x slower by contention. Export the variable to override.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _reuse_freed_memory() -> None:
    """Keep glibc's malloc from returning freed blocks of a few MB to the kernel.

    An update allocates thousands of short-lived arrays of 0.1-2 MB (activations, their
    derivatives). By default glibc serves those from fresh mmap'd or trimmed pages, so each one
    costs its page faults again: half the time of a group's Fisher-vector products and critic
    steps went to faults. With a fixed mmap threshold (32 MiB, glibc's largest) and a high trim
    threshold, freed blocks are reused; the peak memory is unchanged, but a process keeps its
    high-water mark until it exits. A no-op off glibc, and when glibc's
    ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` is set in the environment (your
    own thresholds: trpo-lab then leaves malloc as glibc sets it up).
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    mallopt(m_trim_threshold, 512 * 1024 * 1024)


_reuse_freed_memory()

__version__ = "0.1.0"
