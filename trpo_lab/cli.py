"""The console scripts ``trpo-lab`` and ``trpo-lab-sweep`` (:func:`trpo_lab.app.main`,
:func:`trpo_lab.app.sweep_main`), with a Ctrl-C during start-up ending them in one line.

Until a run installs its signal handler (when it prints ``trpo-lab: run directory ...``), a
Ctrl-C raises KeyboardInterrupt wherever the process is: importing the app, composing the
configuration, building the run. Nothing of the run is checkpointed yet, so there is nothing to
save: the command says so in one line, without a traceback, and exits 130 like any interrupted
run. This module imports nothing heavy itself, so that the import of the app is covered too.
"""

from __future__ import annotations

import sys

STARTUP_INTERRUPTED = ("trpo-lab: interrupted by Ctrl-C while starting, before training; "
                       "rerun the same command to run it")


def _run(entry: str) -> None:
    try:
        from trpo_lab import app

        getattr(app, entry)()
    except KeyboardInterrupt:
        print(STARTUP_INTERRUPTED, file=sys.stderr, flush=True)
        sys.exit(130)


def main() -> None:
    """``trpo-lab``."""
    _run("main")


def sweep_main() -> None:
    """``trpo-lab-sweep``."""
    _run("sweep_main")
