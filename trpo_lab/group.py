"""Many runs in one process: a group trains R runs of one shape in lockstep.

The runs of a group have the same environment, policy and critic architecture, batch size and
algorithm, and differ in numbers that do not change array shapes (seed, delta, gamma, lambda,
learning rates, damping, ...). Each run is a :class:`~trpo_lab.train.Trainer` of its own, with
its own run directory, metrics.csv, summary.json, checkpoint, W&B run and random streams; the
group only changes how an update's work is done. Per update every run goes through the phases
of :meth:`Trainer.step <trpo_lab.train.Trainer.step>`, and three of them are done for all runs at
once, with a leading run axis:

- the rollout (:func:`trpo_lab.rollout.collect_runs`): one policy call per step for every
  run's envs, each run's noise from its own generator;
- the batches (:func:`trpo_lab.rollout.build_batches`): one GAE recursion over all runs;
- the algorithm's update, when it declares a batched one (``update_runs`` in
  :mod:`trpo_lab.registry`): TRPO's and NPG's (:func:`trpo_lab.algos.trpo.trpo_update_runs`:
  batched gradient, conjugate gradient on batched Fisher-vector products, a line search with
  a per-run acceptance mask); the other algorithms update run by run;
- the critic (:func:`trpo_lab.critic.critic_update_runs`).

- the fresh episodes of the Monte Carlo truth and the held-out batch
  (:func:`trpo_lab.evaluation.run_samplers`): one policy call per step for every run's
  episodes, each run's envs and random numbers its own.

The diagnostics of an update, the estimates from its episodes, and the exact tabular
comparison are computed run by run with the single-run code. A run whose numbers stop being
finite, or whose env raises in the batched rollout or evaluation (the exception is that run's:
:func:`~trpo_lab.rollout.collect_runs`, :func:`~trpo_lab.evaluation.run_samplers`), fails
alone (its summary says why) and leaves the group; the others go on. Since each
run's state lives in its own Trainer, a run checkpointed in a group resumes alone or in another
group, and the other way round.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from trpo_lab.critic import critic_update_runs
from trpo_lab.evaluation import run_samplers
from trpo_lab.numerics import flat_params
from trpo_lab.registry import algorithm_of, resolve
from trpo_lab.rollout import build_batches, collect_runs
from trpo_lab.train import StopSignal, Trainer


class GroupTrainer:
    """Train ``trainers`` (one per run, built as for a lone run) together; see the module
    docstring. :meth:`run` returns, per run, its summary and the exception that ended it
    (None for a run that completed or was interrupted)."""

    def __init__(self, trainers: Sequence[Trainer]):
        self.trainers = list(trainers)
        first = self.trainers[0].cfg
        for trainer in self.trainers[1:]:
            cfg = trainer.cfg
            same = (type(cfg.algo), cfg.batch_steps, cfg.num_envs, cfg.algo.estimator,
                    cfg.env.id, cfg.policy.name) == (type(first.algo), first.batch_steps,
                                                     first.num_envs, first.algo.estimator,
                                                     first.env.id, first.policy.name)
            if not same:
                raise ValueError("a group's runs must have one algorithm, env, policy and "
                                 "batch shape")
        self.exact = first.algo.estimator == "exact"
        # the algorithm's batched update of many runs (TRPO's), or None: run by run
        path = algorithm_of(first.algo).update_runs
        self.update_runs = resolve(path) if path is not None else None

    def run(self, stop: StopSignal | None = None
            ) -> list[tuple[dict[str, Any] | None, BaseException | None]]:
        results: dict[int, tuple[dict[str, Any] | None, BaseException | None]] = {}
        for trainer in self.trainers:
            trainer.t_start = time.perf_counter()
            trainer.first_update_at = time.time()
            trainer.stop = stop
        active = [r for r, t in enumerate(self.trainers) if t.iteration < t.updates]
        status, dropped = "completed", False
        try:
            while active:
                active = self._update(active, results)
                for r in [r for r in active if self.trainers[r].iteration >=
                          self.trainers[r].updates]:
                    active.remove(r)
                    results[r] = (self._finish(r, "completed"), None)
                if active and stop is not None and stop.requested:
                    status = "interrupted"
                    break
        except KeyboardInterrupt:
            status, dropped = "interrupted", True
        for r in range(len(self.trainers)):
            if r not in results:
                results[r] = (self._finish(r, status, dropped), None)
        return [results[r] for r in range(len(self.trainers))]

    def _finish(self, r: int, status: str, dropped: bool = False) -> dict[str, Any]:
        trainer = self.trainers[r]
        return trainer._finish(status, None, None, trainer.stop, dropped=dropped)

    def _fail(self, r: int, error: Exception, results: dict) -> None:
        results[r] = (None, self.trainers[r].fail(error))

    def _fail_envs(self, runs: list[int], failures: dict[int, Exception], results: dict,
                   active: list[int]) -> None:
        """The runs whose envs raised in a batched phase (``failures``: by position in
        ``runs``) fail alone and leave ``active``."""
        for k in sorted(failures):
            self._fail(runs[k], failures[k], results)
        active[:] = [r for r in active if r not in results]

    def _update(self, active: list[int], results: dict) -> list[int]:
        """One update of every active run; returns the runs still active (a run that raised
        has failed alone)."""
        trainers = self.trainers
        thetas = {r: flat_params(trainers[r].policy.actor_parameters()) for r in active}
        updates = {}
        for r in list(active):
            try:
                updates[r] = trainers[r].begin_update()
            except Exception as error:  # noqa: BLE001  (that run fails; the group goes on)
                self._fail(r, error, results)
                active.remove(r)
        if not active:
            return active
        try:
            if self.exact:
                for r in active:
                    trainers[r].take_batch(updates[r], None)
            else:
                failures: dict[int, Exception] = {}  # a run's env raised: that run fails
                datas = collect_runs([trainers[r].collector for r in active],
                                     [updates[r].actor_old for r in active], failures)
                datas = [d for k, d in enumerate(datas) if k not in failures]
                self._fail_envs(list(active), failures, results, active)
                if not active:
                    return active
                cfgs = [trainers[r].cfg for r in active]
                batches = build_batches([trainers[r].policy for r in active], datas,
                                        [c.gamma for c in cfgs], [c.gae_lambda for c in cfgs],
                                        cfgs[0].normalize_advantages)
                for r, data, batch in zip(active, datas, batches):
                    trainers[r].take_batch(updates[r], data, batch)
            if self.update_runs is not None:
                infos = self.update_runs([trainers[r].policy for r in active],
                                         [updates[r].batch for r in active],
                                         [trainers[r].cfg.algo for r in active])
            else:
                infos = [trainers[r].algo.update(updates[r].batch) for r in active]
            for r, info in zip(active, infos):
                trainers[r].guard_update(updates[r], info)
            requests = {r: trainers[r].evaluation_request(updates[r]) for r in active}
            sampled = [r for r in active if requests[r] is not None]
            failures = {}
            runs = run_samplers([requests[r] for r in sampled], failures) if sampled else []
            episodes = {r: e for k, (r, e) in enumerate(zip(sampled, runs)) if k not in failures}
            self._fail_envs(sampled, failures, results, active)
            if not active:
                return active
            for r in active:
                trainers[r].measure_update(updates[r], episodes.get(r))
            critics = [r for r in active if trainers[r].trains_critic(updates[r])]
            if critics:
                rows = critic_update_runs([trainers[r].critic for r in critics],
                                          [updates[r].critic_data() for r in critics])
                for r, row in zip(critics, rows):
                    updates[r].row.update(row)
        except KeyboardInterrupt:
            raise
        except Exception as error:  # noqa: BLE001  (a batched phase: every run in it fails)
            for r in active:
                self._fail(r, error, results)
            return []
        still = []
        for r in active:
            try:
                row = trainers[r].end_update(updates[r])
                trainers[r].record(row, thetas[r])
            except Exception as error:  # noqa: BLE001  (NumericalFailure, a full disk, ...)
                self._fail(r, error, results)
                continue
            still.append(r)
        return still
