"""Many runs in one process: a group trains R runs of one shape in lockstep.

The runs of a group have the same environment, policy and critic architecture, batch size and
algorithm, and differ in numbers that do not change array shapes (seed, delta, gamma, lambda,
learning rates, damping, ...); runs that differ in a key the batched code takes from one run
are refused (:func:`trpo_lab.grouping.check_group`). Each run is a
:class:`~trpo_lab.train.Trainer` of its own, with its own run directory, metrics.csv,
summary.json, checkpoint, W&B run, progress bar and random streams; the group only changes how
an update's work is done.

A group goes through the same update pipeline as a lone run (:mod:`trpo_lab.pipeline`; a lone
run is a group of one there): the rollout, the batches, the algorithm's batched update (TRPO's
and NPG's), the evaluation's episodes and the critic are done for all runs at once, with a
leading run axis; each run's diagnostics, estimates and exact comparison with the single-run
code. A run whose numbers stop being finite, or whose env raises in the batched rollout or
evaluation, fails alone (its summary says why) and leaves the group; the others go on. Since
each run's state lives in its own Trainer, a run checkpointed in a group resumes alone or in
another group, and the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trpo_lab.pipeline import Pipeline, RowHook
from trpo_lab.train import StopSignal, Trainer


class GroupTrainer:
    """Train ``trainers`` (one per run, built as for a lone run, with ``in_group=True``)
    together; see the module docstring. Raises :class:`~trpo_lab.grouping.GroupMismatch` for
    runs that cannot share the batched numerics."""

    def __init__(self, trainers: Sequence[Trainer]):
        self.trainers = list(trainers)
        self.pipeline = Pipeline(self.trainers)

    def run(self, stop: StopSignal | None = None, on_row: RowHook | None = None
            ) -> list[tuple[dict[str, Any] | None, BaseException | None]]:
        """Per run, its summary and the exception that ended it (None for a run that
        completed or was interrupted). ``on_row(r, row)``: called with each run's row (``r``
        its index in ``trainers``) once it is written."""
        return self.pipeline.run(stop, on_row)
