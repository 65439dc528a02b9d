"""The update pipeline, written once for one run or many: a lone run is a group of one.

Per update, every active run goes through the same phases, in this order:

1. **begin**: the collecting policy (the actor and the observation map now); on a tabular
   model its exact evaluation (:meth:`Trainer.begin_update <trpo_lab.train.Trainer.
   begin_update>`);
2. **collect**: one rollout for all runs (:func:`trpo_lab.rollout.collect_runs`: one policy call
   per step for every run's envs, each run's noise its own); exact estimators skip it;
3. **batch**: critic values and one GAE recursion over all runs
   (:func:`trpo_lab.rollout.build_batches`), then each run's batch bookkeeping, vine branches
   and gradient of dL (:meth:`~trpo_lab.train.Trainer.take_batch`);
4. **update**: the algorithm's update of many runs when it declares one (``update_runs`` in
   :mod:`trpo_lab.registry`: TRPO's and NPG's batched conjugate gradient and line search),
   otherwise each run's ``update``;
5. **guard**: non-finite numbers put a run's old parameters back; the update's size on its
   batch (:meth:`~trpo_lab.train.Trainer.guard_update`);
6. **measure**: the fresh episodes of the Monte Carlo truth and the held-out batch for all
   evaluated runs at once (:func:`trpo_lab.evaluation.run_samplers`), then each run's estimates,
   exact comparison and probes (:meth:`~trpo_lab.train.Trainer.measure_update`);
7. **critic**: every training critic's epochs at once (:func:`trpo_lab.critic.
   critic_update_runs`);
8. **record**: each run's row to metrics.csv, W&B, the row hook and its progress bar, the health
   checks and a checkpoint when due (:meth:`~trpo_lab.train.Trainer.record`).

The runs of a group must agree in every key the batched code takes from one run
(:func:`trpo_lab.grouping.check_group`, checked when the pipeline is built).

Failure isolation: where a run's own code can raise (its env in the rollout or evaluation, its
batch, its algorithm's update run by run, its measurements, its row, its files), that run fails
alone (:meth:`Trainer.fail <trpo_lab.train.Trainer.fail>`: summary.json says why) and leaves
the pipeline; the others go on. An exception in a batched call over several runs fails every
run in it. A KeyboardInterrupt (a second Ctrl-C) drops the update in progress of every run: each
ends at its last checkpoint. A :class:`~trpo_lab.train.StopSignal` (SIGTERM, the first Ctrl-C)
ends every run after the current update, checkpointed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from trpo_lab.critic import critic_update_runs
from trpo_lab.evaluation import run_samplers
from trpo_lab.grouping import check_group
from trpo_lab.numerics import flat_params
from trpo_lab.registry import algorithm_of, resolve
from trpo_lab.rollout import build_batches, collect_runs

#: ``on_row(r, row)``: called with each run's index in the pipeline and its row, once written
RowHook = Callable[[int, dict[str, Any]], None]
Result = tuple["dict[str, Any] | None", "BaseException | None"]


class Pipeline:
    """Train ``trainers`` (:class:`~trpo_lab.train.Trainer`, one per run, each with its own run
    directory and state) through the phases of the module docstring. :meth:`run` returns, per
    run, its summary and the exception that ended it (None for a run that completed or was
    interrupted)."""

    def __init__(self, trainers: Sequence[Any]):
        self.trainers = list(trainers)
        if not self.trainers:
            raise ValueError("a pipeline needs at least one run")
        check_group([t.cfg for t in self.trainers])
        first = self.trainers[0].cfg
        self.exact = first.algo.estimator == "exact"
        path = algorithm_of(first.algo).update_runs
        self.update_runs = resolve(path) if path is not None else None

    # ----------------------------------------------------------------- the loop
    def start(self, stop=None) -> None:
        """Start every run's clock and progress bar (a group's bars one below the other)."""
        alone = len(self.trainers) == 1
        for k, trainer in enumerate(self.trainers):
            trainer.start(stop, position=None if alone else k)

    def run(self, stop=None, on_row: RowHook | None = None) -> list[Result]:
        """Train every run to its ``total_steps`` (runs may plan different numbers of
        updates: a run that is done finishes while the others go on)."""
        self.start(stop)
        results: dict[int, Result] = {}
        active = [r for r, t in enumerate(self.trainers) if t.iteration < t.updates]
        status, dropped = "completed", False
        try:
            while active:
                active = self.update(active, results, on_row)
                if active and stop is not None and stop.requested:
                    status = "interrupted"  # every run still training, its update just done
                    break
                for r in [r for r in active if self.trainers[r].iteration >=
                          self.trainers[r].updates]:
                    active.remove(r)
                    self._finish(r, "completed", False, results)
        except KeyboardInterrupt:
            status, dropped = "interrupted", True
        for r in range(len(self.trainers)):
            if r not in results:
                self._finish(r, status, dropped, results)
        return [results[r] for r in range(len(self.trainers))]

    def _finish(self, r: int, status: str, dropped: bool, results: dict[int, Result]) -> None:
        """End run ``r`` with ``status``; what its end raises (its summary cannot be written,
        ...) is that run's error alone."""
        try:
            results[r] = (self.trainers[r].finish(status, dropped=dropped), None)
        except Exception as error:  # noqa: BLE001  (that run's; the others still end)
            results[r] = (None, error)

    # ----------------------------------------------------------------- one update
    def _fail(self, r: int, error: Exception, results: dict[int, Result]) -> None:
        results[r] = (None, self.trainers[r].fail(error))

    def _each(self, runs: list[int], results: dict[int, Result],
              phase: Callable[[int], Any]) -> tuple[list[int], dict[int, Any]]:
        """``phase(r)`` for each run, a run that raises failing alone; the runs that went
        through and what ``phase`` returned for each."""
        survivors, out = [], {}
        for r in runs:
            try:
                out[r] = phase(r)
            except Exception as error:  # noqa: BLE001  (that run fails; the others go on)
                self._fail(r, error, results)
                continue
            survivors.append(r)
        return survivors, out

    def _fail_all(self, runs: list[int], error: Exception, results: dict[int, Result]) -> list:
        """A batched call over ``runs`` raised: every run in it fails."""
        for r in runs:
            self._fail(r, error, results)
        return []

    def _drop_failures(self, runs: list[int], failures: dict[int, Exception],
                       results: dict[int, Result]) -> list[int]:
        """The runs whose envs raised in a batched phase (``failures``: by position in
        ``runs``) fail alone; the others."""
        for k in sorted(failures):
            self._fail(runs[k], failures[k], results)
        return [r for k, r in enumerate(runs) if k not in failures]

    def update(self, active: list[int], results: dict[int, Result],
               on_row: RowHook | None = None) -> list[int]:
        """One update of every run in ``active`` (indices into the trainers); returns the runs
        still active (a run that raised has failed, into ``results``)."""
        trainers = self.trainers
        thetas = {r: flat_params(trainers[r].policy.actor_parameters()) for r in active}
        active, updates = self._each(active, results, lambda r: trainers[r].begin_update())
        if not active:
            return active
        # collect and batch
        if self.exact:
            active, _ = self._each(active, results,
                                   lambda r: trainers[r].take_batch(updates[r], None))
        else:
            failures: dict[int, Exception] = {}  # a run's env raised: that run fails
            try:
                datas = collect_runs([trainers[r].collector for r in active],
                                     [updates[r].actor_old for r in active], failures)
            except Exception as error:  # noqa: BLE001  (the batched call: its runs fail)
                return self._fail_all(active, error, results)
            datas = {r: d for k, (r, d) in enumerate(zip(active, datas)) if k not in failures}
            active = self._drop_failures(active, failures, results)
            if not active:
                return active
            cfgs = [trainers[r].cfg for r in active]
            try:
                batches = build_batches([trainers[r].policy for r in active],
                                        [datas[r] for r in active], [c.gamma for c in cfgs],
                                        [c.gae_lambda for c in cfgs],
                                        cfgs[0].normalize_advantages)
            except Exception as error:  # noqa: BLE001
                return self._fail_all(active, error, results)
            batch_of = dict(zip(active, batches))
            active, _ = self._each(active, results, lambda r: trainers[r].take_batch(
                updates[r], datas[r], batch_of[r]))
        if not active:
            return active
        # the algorithm's update, then the guard
        if self.update_runs is not None:
            try:
                infos = dict(zip(active, self.update_runs(
                    [trainers[r].policy for r in active], [updates[r].batch for r in active],
                    [trainers[r].cfg.algo for r in active])))
            except Exception as error:  # noqa: BLE001
                return self._fail_all(active, error, results)
        else:
            active, infos = self._each(active, results,
                                       lambda r: trainers[r].algo.update(updates[r].batch))
        active, _ = self._each(active, results,
                               lambda r: trainers[r].guard_update(updates[r], infos[r]))
        # measure: the evaluation's episodes for every evaluated run at once
        active, requests = self._each(active, results,
                                      lambda r: trainers[r].evaluation_request(updates[r]))
        sampled = [r for r in active if requests[r] is not None]
        episodes: dict[int, Any] = {}
        if sampled:
            failures = {}
            try:
                runs = run_samplers([requests[r] for r in sampled], failures)
            except Exception as error:  # noqa: BLE001
                self._fail_all(sampled, error, results)
                runs, failures = [], {}
            episodes = {r: e for k, (r, e) in enumerate(zip(sampled, runs)) if k not in failures}
            self._drop_failures(sampled, failures, results)
            active = [r for r in active if r not in results]
        active, _ = self._each(active, results,
                               lambda r: trainers[r].measure_update(updates[r], episodes.get(r)))
        # the critic
        critics = [r for r in active if trainers[r].trains_critic(updates[r])]
        if critics:
            try:
                rows = critic_update_runs([trainers[r].critic for r in critics],
                                          [updates[r].critic_data() for r in critics])
            except Exception as error:  # noqa: BLE001
                self._fail_all(critics, error, results)
                rows = []
                active = [r for r in active if r not in results]
            for r, row in zip(critics, rows):
                updates[r].row.update(row)
        # record

        def record(r: int) -> None:
            row = trainers[r].end_update(updates[r])
            hook = None if on_row is None else (lambda row: on_row(r, row))
            trainers[r].record(row, thetas[r], hook)

        active, _ = self._each(active, results, record)
        return active
