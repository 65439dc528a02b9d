"""A run: its models and environments, its state, its recorder, and its part of each phase.

Per update k: collect a batch with the current policy (or build the exact batch on a tabular
model), estimate J(pi) by paired Monte Carlo, let the algorithm update the actor, measure the
update (KL, ratios, predicted and true improvement, bounds), probe it when due
(``probe.every``: rows of probes.csv, :mod:`trpo_lab.probes`), train the critic, log one row,
and checkpoint when due. The algorithms differ only inside their update.

The trainer's jobs are separate: the order of the phases is :mod:`trpo_lab.pipeline`'s (a lone
run is a group of one there; :meth:`Trainer.run` trains it so); the run's counters and random
streams are one record (:class:`trpo_lab.runstate.RunState`) that the checkpoint writes, a
resume loads and a dropped update rewinds to; its files, W&B run, progress bar and summary are
its :class:`trpo_lab.recorder.Recorder`'s. What stays here is the run's own part of each phase
(:meth:`Trainer.begin_update`, :meth:`~Trainer.take_batch`, :meth:`~Trainer.guard_update`,
:meth:`~Trainer.measure_update`, :meth:`~Trainer.end_update`, :meth:`~Trainer.record`) and its
start and end (:meth:`~Trainer.start`, :meth:`~Trainer.finish`, :meth:`~Trainer.fail`).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trpo_lab.algos import algo_label, make_algorithm
from trpo_lab.algos.common import heldout_improvement, predicted_improvement, ratio
from trpo_lab.checkpoint import load_checkpoint, misfit, save_checkpoint
from trpo_lab.config import Config, ConfigError, TRPOConfig, env_label, planned_updates
from trpo_lab.critic import CriticTrainer
from trpo_lab.envs import env_factory, make_vector_env, tabular_model
from trpo_lab.evaluation import (
    Episodes,
    EpisodeSampler,
    GymEpisodes,
    MonteCarloEstimate,
    SamplerRequest,
    deterministic_returns,
    episode_envs,
    run_samplers,
)
from trpo_lab.guards import ProgressWatch, batch_overflow, critic_nonfinite, nonfinite_hint
from trpo_lab.intervals import paired_improvement, paired_return_bound, run_prediction_summary
from trpo_lab.logging import (
    MetricsPosition,
    WandbRun,
    check_present,
    checkpointed_rows,
    resolve_wandb_mode,
)
from trpo_lab.numerics import flat_grad, flat_params, set_flat_params
from trpo_lab.pipeline import Pipeline
from trpo_lab.policies import Policy
from trpo_lab.preflight import episode_step_bound, observation_warnings
from trpo_lab.probes import PROBES, Prober, UpdateContext
from trpo_lab.recorder import (  # noqa: F401  (SUMMARY, WANDB_ID, write_summary: callers')
    METRICS,
    SUMMARY,
    WANDB_ID,
    Recorder,
    RunWriteError,
    read_summary,
    write_summary,
    writing,
)
from trpo_lab.resume import ResumeMismatch, config_differences, flat_config
from trpo_lab.rollout import (
    Batch,
    Collector,
    HeldoutBatch,
    RolloutData,
    build_batch,
    exact_batch,
    heldout_batch,
)
from trpo_lab.run_summary import column, comparison_figures, read_metrics
from trpo_lab.runstate import Counters, RandomStreams, RunState
from trpo_lab.vine import VineSampler, uses_vine

CHECKPOINT = "checkpoint.pt"


class NumericalFailure(RuntimeError):
    """Too many consecutive updates with non-finite numbers."""


def exit_code(status: str, signum: int | None = None) -> int:
    """The exit code of a process whose run ended with ``status``: 0 completed, 1 failed, and
    128 + the signal's number when interrupted, as shells expect (130 after Ctrl-C, 143 after
    SIGTERM; 130 when no signal is known, e.g. a KeyboardInterrupt)."""
    if status == "completed":
        return 0
    if status == "interrupted":
        return 128 + (signum if signum is not None else signal.SIGINT)
    return 1


@dataclass
class StopSignal:
    """SIGTERM/SIGINT: the loop finishes the current update, checkpoints and stops; ``signum``
    is the first signal received.

    A second Ctrl-C stops at once (KeyboardInterrupt): the update in progress is dropped and the
    run stays at its last checkpoint, so it resumes exactly. Once the training loop is over
    (``shielded``: the final checkpoint, summary and W&B finish, about a second) a Ctrl-C only
    asks for what is already happening.
    """

    requested: bool = False
    signum: int | None = None
    shielded: bool = False
    previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread (some launchers)
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT and not self.shielded:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def load_resume_state(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """The checkpoint to resume from, checked: readable, and made with this configuration in
    every key that changes results. Raises before anything is built or written."""
    state = load_checkpoint(run_dir / CHECKPOINT)
    if "config" in state:
        differences = config_differences(state["config"], flat_config(cfg))
        if differences:
            raise ResumeMismatch(run_dir, differences)
    return state


def will_resume(cfg: Config, run_dir: Path) -> bool:
    """A checkpoint and an unfinished run (or resume=true): training continues from it."""
    summary = read_summary(run_dir)
    return (run_dir / CHECKPOINT).exists() and (
        cfg.resume or summary is None or summary.get("status") != "completed")


def check_total_steps(cfg: Config, run_dir: Path, state: dict[str, Any]) -> None:
    """A resume may extend total_steps, never cut it below the updates already done."""
    if planned_updates(cfg) < state["iteration"]:
        raise ConfigError("total_steps", cfg.total_steps,
                          f"{run_dir} has done {state['iteration']} updates "
                          f"({state['env_steps']} env steps): to resume it, total_steps must "
                          f"be at least {state['env_steps']}")


def metrics_position(state: dict[str, Any]) -> MetricsPosition | None:
    return MetricsPosition(**state["metrics"]) if "metrics" in state else None


def check_run_dir(cfg: Config, run_dir: Path) -> None:
    """Read-only checks of what a run directory holds against this configuration: the
    checkpoint (readable, same configuration) and, if training would resume, metrics.csv.
    Raises :class:`ResumeMismatch` or :class:`~trpo_lab.rundir.RunFileError`."""
    if not (run_dir / CHECKPOINT).exists():
        return
    state = load_resume_state(cfg, run_dir)
    if not will_resume(cfg, run_dir):
        return
    check_total_steps(cfg, run_dir, state)
    check_policy_fits(cfg, run_dir, state)
    metrics, position = run_dir / METRICS, metrics_position(state)
    check_present(metrics, state["iteration"] if position is None else position.rows)
    if metrics.exists():
        checkpointed_rows(metrics, metrics.read_bytes(), state["iteration"], position)
    probes = run_dir / PROBES
    if "probes" in state:
        position = MetricsPosition(**state["probes"])
        check_present(probes, position.rows)
        if probes.exists():
            checkpointed_rows(probes, probes.read_bytes(), position.rows, position)


def check_policy_fits(cfg: Config, run_dir: Path, state: dict[str, Any]) -> None:
    """The checkpoint's policy (actor and critic) loads into the model this configuration
    builds, or :class:`~trpo_lab.rundir.RunFileError` (exit 2): a checkpoint that reads but
    holds tensors of other shapes is refused before anything is written."""
    envs = make_vector_env(cfg.env, 1, cfg.gamma)
    try:
        policy = Policy(envs.single_observation_space, envs.single_action_space, cfg.policy,
                        list(cfg.critic.hidden_sizes))
    finally:
        envs.close()
    try:
        policy.load_state_dict(state["policy"])
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as error:
        raise misfit(run_dir / CHECKPOINT, "policy", error) from None


def update_diagnostics(policy: Policy, batch: Batch) -> dict[str, float]:
    """Size of the update on the batch's states, the same for every algorithm."""
    with torch.no_grad():
        params = policy.dist_params(batch.obs)
        kl = policy.head.kl(batch.old_params, params)
        reverse = policy.head.kl(params, batch.old_params)
        ratios = ratio(policy, batch, params)
        w = batch.weights
        return {
            "kl/mean": float((w * kl).sum()),
            "kl/max": float(kl.max()),
            "kl/reverse_mean": float((w * reverse).sum()),
            "policy/max_ratio": float(ratios[w > 0].max()),
            "policy/entropy": float((w * policy.head.entropy(params)).sum()),
            "surrogate/improvement": float(predicted_improvement(policy, batch, params)),
        }


def exact_diagnostics(compare) -> dict[str, float]:
    return {
        "true/J": compare.J_old, "true/J_se": 0.0,
        "true/improvement": compare.true_improvement, "true/improvement_se": 0.0,
        "bound/trpo": compare.bound_trpo, "bound/cpo": compare.bound_cpo,
        "bound/C": compare.C, "bound/eps": compare.eps,
        "exact/surrogate_improvement": compare.surrogate_improvement,
        "exact/pdl_residual": compare.pdl_residual,
    }


@dataclass
class Update:
    """What one update carries from phase to phase (:mod:`trpo_lab.pipeline`)."""

    t0: float
    row: dict[str, Any]
    encode_old: Callable[[np.ndarray], np.ndarray]
    actor_old: Any  # NumpyActor: the collecting policy
    pi_old: np.ndarray | None = None  # tabular: pi(.|s) of the collecting policy
    old_eval: Any = None  # tabular: its exact evaluation
    reward_scale: float = 1.0
    batch: Batch | None = None
    theta_old: torch.Tensor | None = None
    theta_new: torch.Tensor | None = None
    grad_dl: torch.Tensor | None = None
    nonfinite: bool = False
    heldout: HeldoutBatch | None = None  # the evaluation's held-out batch, for the probes
    critic_batch: Batch | None = None  # what the critic trains on when not ``batch`` (vine)
    steps: int = 0  # env steps this update took (vine: trunk and branches)

    def critic_data(self) -> Batch:
        """The batch the critic trains on: the trunk's for vine, else the update's."""
        return self.batch if self.critic_batch is None else self.critic_batch


def full_float32_on_gpus() -> None:
    """No TF32 (a 10-bit mantissa) in float32 matrix products and convolutions, and cuDNN's
    deterministic kernels: a ``device=cuda`` run computes in float32 as its CPU run does, and
    a rerun repeats it (torch's defaults allow TF32 convolutions on Ampere and later GPUs)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _counter(name: str) -> property:
    """``trainer.<name>``: the run's counter of that name (:class:`~trpo_lab.runstate.
    Counters`)."""
    return property(lambda self: getattr(self.counters, name),
                     lambda self, value: setattr(self.counters, name, value),
                     doc=f"``counters.{name}``")


class Trainer:
    iteration = _counter("iteration")
    env_steps = _counter("env_steps")
    bad_updates = _counter("bad_updates")
    wall_before = _counter("wall_s")  # training seconds before this process's session
    heldout_env_steps = _counter("heldout_env_steps")
    eval_env_steps = _counter("eval_env_steps")
    probe_env_steps = _counter("probe_env_steps")
    last_true_J = _counter("last_true_J")  # noqa: N815  (true/J of the last row with one)
    last_true_J_se = _counter("last_true_J_se")  # noqa: N815
    last_returns = _counter("last_returns")
    run_id = _counter("run_id")

    def __init__(self, cfg: Config, run_dir: Path, *, wandb_config: dict | None = None,
                 group: str | None = None, tags: list[str] | None = None,
                 clock_origins: dict[str, float] | None = None, in_group: bool = False):
        """``in_group``: the run trains in a group with others in this process
        (:mod:`trpo_lab.group`): its W&B run is one of several open at once."""
        self.cfg, self.run_dir = cfg, run_dir
        self.resumed = will_resume(cfg, run_dir)
        # checked before anything is built or written: a refused resume changes nothing
        resume_state = load_resume_state(cfg, run_dir) if self.resumed else None
        self.clock_origins = clock_origins or {}
        self.first_update_at: float | None = None
        self.t_start: float | None = None  # start(): this session's clock
        self.stop: StopSignal | None = None  # set by start(): which signal stopped the run
        # a W&B sweep agent chooses the run id; otherwise a fresh one, kept across resumes
        self.counters = Counters(run_id=os.environ.get("WANDB_RUN_ID") or os.urandom(4).hex())
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        if cfg.device != "cpu":
            full_float32_on_gpus()
        seed_everything(cfg.seed)
        self.envs = make_vector_env(cfg.env, cfg.num_envs, cfg.gamma)
        self.policy = Policy(self.envs.single_observation_space, self.envs.single_action_space,
                             cfg.policy, list(cfg.critic.hidden_sizes), cfg.device)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.algo = make_algorithm(self.policy, cfg.algo, cfg.gamma, self.generator)
        self.critic = CriticTrainer(self.policy, cfg.critic, self.generator)
        self.collector = Collector(self.envs, cfg.batch_steps // cfg.num_envs, cfg.seed,
                                   cfg.env.normalize_obs, cfg.env.normalize_reward, cfg.gamma)
        self.vine = VineSampler(cfg, self.collector, env_factory(cfg.env, cfg.gamma)) \
            if uses_vine(cfg) else None
        self.mdp = tabular_model(self.envs) if cfg.env.tabular else None
        if self.mdp is not None:
            from trpo_lab import exact  # scipy.linalg: only tabular runs pay for the import

            self.exact = exact
        self.return_bound = self._return_bound()
        self.sampler = self._sampler()
        # adaptive rounds of pairs (made on first use; several when rounds step together)
        self.more_pairs: list[EpisodeSampler] = []
        self.prober = Prober(cfg, self.policy, self.mdp, self.exact if self.mdp else None) \
            if cfg.probe.every else None
        self.updates = planned_updates(cfg)
        self.final_eval_returns: list[float] = []
        self.final_eval_s = 0.0  # kept out of wall_s, which times training
        self.final_eval_error: str | None = None
        self.warnings = observation_warnings(self.envs.single_observation_space,
                                             cfg.policy.name, cfg.env.normalize_obs)
        for warning in self.warnings:
            print(f"trpo-lab: warning: {warning}", file=sys.stderr, flush=True)
        self.write_failed = False  # the run ends because a file could not be written
        self.progress_watch = ProgressWatch(cfg)
        loaded = None
        if resume_state is not None:
            check_total_steps(cfg, run_dir, resume_state)
            loaded = self._load(resume_state)
        self.group = group or cfg.logger.group
        wandb = None
        if cfg.logger.name != "none" and resolve_wandb_mode(cfg.logger.mode) != "disabled":
            label = algo_label(cfg.algo)
            wandb = dict(
                mode=resolve_wandb_mode(cfg.logger.mode), project=cfg.logger.project,
                entity=cfg.logger.entity, group=self.group, job_type=label,
                tags=[*cfg.logger.tags, *(tags or [])],
                name=f"{label}-{env_label(cfg.env.name, cfg.env.id)}-seed{cfg.seed}-"
                     f"{run_dir.name}",
                config=wandb_config or {}, run_dir=run_dir, run_id=self.run_id,
                connect_timeout=cfg.logger.connect_timeout,
                reinit="create_new" if in_group else "finish_previous")
        self.recorder = Recorder(
            run_dir, resume_rows=self.iteration if self.resumed else None,
            metrics_at=None if loaded is None else loaded.metrics,
            probes_at=None if loaded is None else loaded.probes,
            probes=self.prober is not None, wandb=wandb, resumed=self.resumed)
        if self.recorder.run_id is not None:
            self.run_id = self.recorder.run_id  # an interrupted first attempt's W&B id
        # what a resume would start from: the checkpoint on disk (or the start)
        self.saved = self.run_state()
        self.checkpoint_on_disk = self.resumed

    @property
    def metrics(self):
        """metrics.csv (the recorder's)."""
        return self.recorder.metrics

    @property
    def probes(self):
        """probes.csv (the recorder's), None without probes."""
        return self.recorder.probes

    @property
    def wandb(self) -> WandbRun | None:
        """The run's W&B run (the recorder's), None without W&B."""
        return self.recorder.wandb

    def _sampler(self) -> EpisodeSampler | None:
        """Rows [0, eval.episodes) of the sampler are the paired evaluation, the next
        eval.heldout_episodes rows the held-out batch (old policy only; independent episodes)."""
        rows = self.cfg.eval.episodes + self.cfg.eval.heldout_episodes
        if rows == 0:
            return None
        copies = 2 if self.cfg.eval.episodes else 1
        return EpisodeSampler(episode_envs(self.cfg.env, self.cfg.gamma, rows, copies, self.mdp),
                              self.cfg.gamma, self.cfg.seed + 10_000)

    def _pair_samplers(self, count: int) -> list[EpisodeSampler]:
        """``count`` envs of the adaptive rounds of pairs (eval.episodes pairs a round), made on
        first use: the evaluation's seed, its keys (update, round, 1) distinct from the first
        round's (update,)."""
        while len(self.more_pairs) < count:
            self.more_pairs.append(EpisodeSampler(
                episode_envs(self.cfg.env, self.cfg.gamma, self.cfg.eval.episodes, 2, self.mdp),
                self.cfg.gamma, self.cfg.seed + 10_000))
        return self.more_pairs[:count]

    def _return_bound(self) -> float | None:
        """The largest |G' - G| of a pair, for dJ's interval when no pair differs: from the
        MDP's rewards and horizon, or from env.reward_bounds and the env's max_episode_steps;
        None when either is unknown."""
        cfg = self.cfg
        if self.mdp is not None:
            low, high = float(self.mdp.R.min()), float(self.mdp.R.max())
        elif list(cfg.env.reward_bounds):
            low, high = (float(b) for b in cfg.env.reward_bounds)
        else:
            return None
        steps = episode_step_bound(cfg)  # the tabular horizon H on tabular envs
        return None if steps is None else paired_return_bound(low, high, cfg.gamma, steps)

    def _rounds_ahead(self, round_index: int) -> int:
        """How many adaptive rounds to step together from ``round_index`` on: 1, 2, 4, ...
        (round r with the r - 1 before it done), within eval.max_pairs, where the rounds'
        envs step as ONE vector env (CartPole: a step costs about the same for 128 columns as
        for 1,024); 1 elsewhere. Every round's episodes are those of its own keys, as alone
        (run_samplers); a round the stopping rule does not reach is dropped uncounted."""
        envs = self._pair_samplers(1)[0].envs
        if not (isinstance(envs, GymEpisodes) and envs.vector_state):
            return 1
        last = self.cfg.eval.max_pairs // self.cfg.eval.episodes - 1
        return max(1, min(round_index, last - round_index + 1))

    # ----------------------------------------------------------------- checkpoints
    def run_state(self) -> RunState:
        """The run's counters, random streams and where its files end, now (a copy)."""
        metrics, probes = self.recorder.positions()
        return RunState(self.counters, RandomStreams.capture(self.generator), metrics,
                        probes).copy()

    def _state(self) -> dict[str, Any]:
        """The checkpoint: the run state (:class:`~trpo_lab.runstate.RunState`, its keys as
        always) and the models, optimisers, collector, configuration and progress watch."""
        return {
            **self.run_state().to_state(self._elapsed()),
            "policy": self.policy.state_dict(), "algo": self.algo.state_dict(),
            "critic": self.critic.state_dict(), "collector": self.collector.state_dict(),
            "config": flat_config(self.cfg),
            "progress_watch": self.progress_watch.state_dict(),
        }

    def _load(self, state: dict[str, Any]) -> RunState:
        """Resume from the checkpoint ``state``: the run state it holds (returned: where
        metrics.csv and probes.csv end), then the models."""
        loaded = RunState.from_state(state)
        self.counters = loaded.counters
        for part, load in (("policy", self.policy.load_state_dict),
                           ("algo", self.algo.load_state_dict),
                           ("critic", self.critic.load_state_dict),
                           ("collector", self.collector.load_state_dict),
                           ("generator", self.generator.set_state)):
            try:  # a checkpoint that reads but does not fit the model: refused, nothing written
                load(state[part])
            except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as error:
                self.envs.close()
                raise misfit(self.run_dir / CHECKPOINT, part, error) from None
        loaded.streams.restore(self.generator)
        if "progress_watch" in state:
            self.progress_watch.load_state_dict(state["progress_watch"])
        return loaded

    def checkpoint(self) -> None:
        if self.checkpoint_on_disk and self.saved.counters.iteration == self.iteration:
            return  # this update is on disk already
        self.recorder.sync()
        state = self._state()
        with writing(self.run_dir / CHECKPOINT):
            save_checkpoint(self.run_dir / CHECKPOINT, state)
        self.saved = RunState.from_state(state)
        self.saved.counters.wall_s = self.wall_before  # the record's seconds: as run_state()
        self.checkpoint_on_disk = True
        self.recorder.checkpointed(self.run_dir / CHECKPOINT, self.iteration, self.env_steps,
                                   self.cfg.logger.log_checkpoints)

    def _rewind_to_checkpoint(self) -> None:
        """After an update was dropped midway: the run is what the checkpoint on disk holds
        (the same record a resume would load: counters, random streams, the files' ends)."""
        saved = self.saved.copy()
        self.recorder.truncate_to(saved.metrics, saved.probes)
        self.counters = saved.counters
        saved.streams.restore(self.generator)

    def _elapsed(self) -> float:
        return time.perf_counter() - self.t_start if self.t_start is not None else 0.0

    # ----------------------------------------------------------------- one update
    def _pi_table(self) -> np.ndarray:
        return self.policy.numpy_actor().probabilities(np.eye(self.mdp.num_states))

    def step(self) -> dict[str, Any]:
        """One update of this run alone, through the pipeline (a group of one), recorded as in
        :meth:`run`; returns its row. Raises what failed the run (its summary says failed).
        Starts the run's clock if :meth:`start` has not."""
        if self.t_start is None:
            self.start(self.stop)
        rows: list[dict[str, Any]] = []
        results: dict = {}
        Pipeline([self]).update([0], results, lambda r, row: rows.append(row))
        if results:
            raise results[0][1]
        return rows[0]

    def begin_update(self) -> Update:
        """The policy that collects this batch: the actor now, with the observation statistics
        now (collecting updates them); every estimate about pi uses exactly this map."""
        update = Update(time.perf_counter(), {"iteration": self.iteration},
                        self.collector.frozen_encoder(), self.policy.numpy_actor())
        if self.mdp is not None:
            update.pi_old = self._pi_table()
            update.old_eval = self.exact.evaluate(self.mdp, update.pi_old, self.cfg.gamma)
        return update

    def take_batch(self, update: Update, data: RolloutData | None,
                   batch: Batch | None = None) -> None:
        """The update's batch (exact, or built from the rollout ``data`` unless ``batch`` is
        given: a group builds its runs' batches together) and the gradient of dL at
        theta_old."""
        cfg, row = self.cfg, update.row
        if cfg.algo.estimator == "exact":
            update.batch = exact_batch(self.policy, update.pi_old, update.old_eval.A,
                                       update.old_eval.rho, cfg.gamma, cfg.normalize_advantages)
        else:
            update.reward_scale = data.reward_scale
            update.batch = batch if batch is not None else build_batch(
                self.policy, data, cfg.gamma, cfg.gae_lambda, cfg.normalize_advantages)
            returns = data.stats.returns
            if returns:
                self.last_returns = returns
                row["rollout/return_mean"] = float(np.mean(returns))
                row["rollout/length_mean"] = float(np.mean(data.stats.lengths))
            row["rollout/episodes"] = len(returns)
        update.steps = cfg.batch_steps
        if self.vine is not None:  # the trunk trains the critic; the policy the vine batch
            update.critic_batch = update.batch
            update.batch, branch_steps = self.vine.batch(
                self.policy, data, update.batch, update.encode_old, update.actor_old)
            update.steps += branch_steps
        self.env_steps += update.steps
        row["env_steps"] = self.env_steps
        params = self.policy.actor_parameters()
        update.theta_old = flat_params(params)
        update.grad_dl = flat_grad(predicted_improvement(self.policy, update.batch), params)

    def guard_update(self, update: Update, info: dict[str, float]) -> None:
        """Non-finite numbers put the old parameters back; the update's size on its batch."""
        row, batch = update.row, update.batch
        params = self.policy.actor_parameters()
        theta_old = update.theta_old
        theta_new = flat_params(params)
        nonfinite = info.pop("guard/nonfinite", 0.0) > 0 or not torch.isfinite(theta_new).all() \
            or batch_overflow(batch.advantages, None if batch.exact else batch.returns)
        if nonfinite:
            set_flat_params(params, theta_old)
            theta_new = theta_old
            if "trpo/accepted" in info:
                info.update({"trpo/accepted": 0.0, "trpo/step_norm": 0.0})
                info.pop("trpo/surrogate_tested", None)
        update.nonfinite = bool(nonfinite)
        update.theta_new = theta_new
        row.update(info)
        row.update(update_diagnostics(self.policy, batch))
        row["surrogate/linear"] = float(update.grad_dl @ (theta_new - theta_old))

    def evaluation_request(self, update: Update) -> SamplerRequest | None:
        """The fresh episodes this update's evaluation needs (after :meth:`guard_update`), or
        None when it does not evaluate: a group samples its runs' episodes together."""
        if self.sampler is None or (self.iteration % self.cfg.eval.every != 0
                                    and not self.probing()):
            return None  # a probed update is always evaluated
        actors = [update.actor_old, self.policy.numpy_actor()] if self.cfg.eval.episodes \
            else [update.actor_old]
        return SamplerRequest(self.sampler, actors, update.encode_old, (self.iteration,),
                              self.cfg.eval.heldout_episodes > 0, self.cfg.eval.episodes)

    def measure_update(self, update: Update, episodes: list[Episodes] | None = None) -> None:
        """The truth of the update: paired Monte Carlo J and dJ and the held-out dL (on
        ``episodes`` when given, sampled here otherwise), and on tabular envs the exact
        comparison and bounds."""
        cfg, row = self.cfg, update.row
        request = self.evaluation_request(update)
        if request is not None:
            start = time.perf_counter()
            if episodes is None:
                episodes = self.sampler.run(request.actors, request.encode, request.key,
                                            record=request.record)
            evaluation, update.heldout = self._evaluate(
                episodes, update.theta_old, update.theta_new, update.reward_scale,
                self._exact_advantages(update), request)
            row.update(evaluation)
            row["time/eval_s"] = time.perf_counter() - start
        if self.mdp is not None:
            row.update(exact_diagnostics(
                self.exact.compare(self.mdp, update.pi_old, self._pi_table(), cfg.gamma,
                                   old=update.old_eval)))
        if "true/J" in row:
            self.last_true_J, self.last_true_J_se = row["true/J"], row["true/J_se"]
        if self.probing():
            self._probe(update)

    def probing(self) -> bool:
        """This update is probed (``probe.every``)."""
        return self.prober is not None and self.prober.due(self.iteration)

    def _exact_advantages(self, update: Update) -> np.ndarray | None:
        """The exact A_pi the update was fitted to (``algo.estimator=exact``), else None."""
        return update.old_eval.A if self.cfg.algo.estimator == "exact" else None

    def _probe(self, update: Update) -> None:
        """The probes of this update (before the critic moves): rows of probes.csv."""
        start = time.perf_counter()
        rows = self.prober.run(UpdateContext(
            self.iteration, self.env_steps, update.batch, update.theta_old, update.theta_new,
            update.actor_old, update.encode_old, update.reward_scale, update.heldout,
            update.pi_old, update.old_eval, self._exact_advantages(update)))
        self.recorder.write_probes(rows)
        self.probe_env_steps += self.prober.env_steps
        update.row["time/probe_s"] = time.perf_counter() - start

    def trains_critic(self, update: Update) -> bool:
        return not update.batch.exact and self.cfg.critic.epochs > 0

    def end_update(self, update: Update) -> dict[str, Any]:
        row = update.row
        nonfinite = update.nonfinite or critic_nonfinite(row)
        self.bad_updates = self.bad_updates + 1 if nonfinite else 0
        row["guard/nonfinite"] = float(nonfinite)
        row["guard/bad_updates"] = self.bad_updates
        elapsed = time.perf_counter() - update.t0
        row["time/wall_s"] = self.wall_before + self._elapsed()
        row["time/sps"] = update.steps / elapsed if elapsed > 0 else math.nan
        row["heldout/env_steps"] = self.heldout_env_steps
        row["eval/env_steps"] = self.eval_env_steps
        if self.prober is not None:
            row["probe/env_steps"] = self.probe_env_steps
        self.iteration += 1
        return row

    def _evaluate(self, runs: list[Episodes], theta_old: torch.Tensor, theta_new: torch.Tensor,
                  reward_scale: float, exact_advantages: np.ndarray | None,
                  request: SamplerRequest | None = None
                  ) -> tuple[dict[str, float], HeldoutBatch | None]:
        """Paired Monte Carlo J and dJ, and dL on the held-out episodes, for one update, from
        the sampler's ``runs`` of the old and new policy (:meth:`evaluation_request`), with
        further rounds of pairs while too few differ (:func:`trpo_lab.intervals.
        paired_improvement`, keyed by (update, round, 1), in an env of their own); and the
        held-out batch itself (None when eval.heldout_episodes is 0), for the probes.

        Both policies saw the observation map of the collecting policy. The held-out batch (the
        old policy's log-probabilities and gradient, the pre-update critic's advantages) is
        built with the actor set back to theta_old for a moment.
        """
        cfg, out = self.cfg, {}
        heldout = None
        n_eval = cfg.eval.episodes
        if n_eval:
            old, new = (run.columns(slice(0, n_eval)) for run in runs)
            self.eval_env_steps += old.steps + new.steps

            drawn: dict[int, list[Episodes]] = {}

            def draw(round_index: int) -> tuple[np.ndarray, np.ndarray]:
                if round_index not in drawn:  # this round and the next few, stepped together
                    rounds = range(round_index, round_index + self._rounds_ahead(round_index))
                    drawn.update(zip(rounds, run_samplers([
                        SamplerRequest(sampler, request.actors, request.encode,
                                       (*request.key, k, 1))
                        for sampler, k in zip(self._pair_samplers(len(rounds)), rounds)])))
                more_old, more_new = drawn.pop(round_index)
                self.eval_env_steps += more_old.steps + more_new.steps
                return more_new.returns, more_old.returns

            dj = paired_improvement(new.returns, old.returns,
                                    request is not None and not torch.equal(theta_old, theta_new),
                                    cfg.eval.min_differing, cfg.eval.max_pairs, draw,
                                    cfg.eval.max_coinciding_pairs, self.return_bound)
            j = MonteCarloEstimate.of(dj.old_returns, self.return_bound)
            prefix = "mc/" if self.mdp is not None else "true/"
            out.update({f"{prefix}J": j.mean, f"{prefix}J_se": j.se,
                        f"{prefix}improvement": dj.mean, f"{prefix}improvement_se": dj.se,
                        "eval/pairs": dj.pairs, "eval/pairs_differing": dj.differing})
        if cfg.eval.heldout_episodes:
            params = self.policy.actor_parameters()
            set_flat_params(params, theta_old)
            heldout = heldout_batch(self.policy, runs[0].columns(slice(n_eval, None)),
                                    cfg.gamma, cfg.gae_lambda, reward_scale, exact_advantages)
            grad = flat_grad(predicted_improvement(self.policy, heldout.batch), params)
            set_flat_params(params, theta_new)
            dl, dl_se = heldout_improvement(self.policy, heldout)
            self.heldout_env_steps += heldout.env_steps
            out.update({"surrogate/improvement_heldout": dl,
                        "surrogate/improvement_heldout_se": dl_se,
                        "surrogate/linear_heldout": float(grad @ (theta_new - theta_old))})
        return out, heldout

    # ----------------------------------------------------------------- the loop
    def summary(self, status: str, error: str | None = None) -> dict[str, Any]:
        wall_s = self.wall_before + self._elapsed() - self.final_eval_s
        return {
            "status": status, "error": error, "iterations": self.iteration,
            "updates_planned": self.updates, "env_steps": self.env_steps,
            "final_return_mean": float(np.mean(self.last_returns)) if self.last_returns
            else None,
            "final_true_J": None if math.isnan(self.last_true_J) else self.last_true_J,
            "final_true_J_se": None if math.isnan(self.last_true_J_se) else self.last_true_J_se,
            "final_eval_return": float(np.mean(self.final_eval_returns))
            if self.final_eval_returns else None,
            "final_eval_returns": self.final_eval_returns,
            "final_eval_s": self.final_eval_s, "final_eval_error": self.final_eval_error,
            "wall_s": wall_s,
            **self._comparison(wall_s),
            "wandb_run_id": self.run_id,
            # the W&B mode actually used (offline when online was impossible), and why not online
            "wandb_mode": self.wandb.final_mode() if self.wandb is not None else None,
            "wandb_fallback": self.wandb.fallback if self.wandb is not None else None,
            "algo": algo_label(self.cfg.algo),
            "env": env_label(self.cfg.env.name, self.cfg.env.id), "seed": self.cfg.seed,
            "group": self.group, "warnings": self.warnings,
            # start-up: seconds from process start and from job start to the first update
            "startup": {f"{name}_to_first_update_s": self.first_update_at - origin
                        for name, origin in self.clock_origins.items()}
            if self.first_update_at is not None else {},
        }

    def _comparison(self, wall_s: float) -> dict[str, Any]:
        """The figures a runs table sorts by, from metrics.csv as written so far (every update
        of the run, across resumes): :func:`trpo_lab.run_summary.comparison_figures` and the
        dJ-against-dL statistics of :func:`trpo_lab.intervals.run_prediction_summary` (None:
        not finite)."""
        path = self.run_dir / METRICS
        rows = read_metrics(path.read_text()) if path.exists() else []
        delta = float(self.cfg.algo.delta) if isinstance(self.cfg.algo, TRPOConfig) else None
        names = ("surrogate/improvement_heldout", "surrogate/improvement_heldout_se",
                 "true/improvement", "true/improvement_se", "bound/trpo")
        prediction = run_prediction_summary({name: column(rows, name) for name in names},
                                            seed=self.cfg.seed) if rows else {}
        return comparison_figures(rows, delta, self.env_steps, wall_s) | {
            key: (value if math.isfinite(value) else None) for key, value in prediction.items()}

    def run(self, stop: StopSignal | None = None,
            on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Train to ``total_steps`` through the pipeline (:class:`trpo_lab.pipeline.Pipeline`,
        a group of one); returns the summary (also written to summary.json). ``on_row``: called
        with each update's row once it is written.

        A KeyboardInterrupt (a second Ctrl-C) drops the update in progress: the run ends at its
        last checkpoint, with metrics.csv cut back to it, and resumes exactly. A file that
        cannot be written (a full disk) ends the run with :class:`RunWriteError`; the last
        checkpoint stays intact. Any other exception is recorded (summary.json: failed) and
        raised.
        """
        hook = None if on_row is None else (lambda r, row: on_row(row))
        summary, error = Pipeline([self]).run(stop, hook)[0]
        if error is not None:
            raise error
        return summary

    def start(self, stop: StopSignal | None = None, position: int | None = None) -> None:
        """Start this session's clock and the progress bar (``position``: its line, in a
        group); ``stop``: the signal that ends the run after an update."""
        self.t_start = time.perf_counter()
        self.first_update_at = time.time()
        self.stop = stop
        desc = algo_label(self.cfg.algo)
        self.recorder.open_progress(
            self.cfg.progress, self.updates * self.cfg.batch_steps,
            self.iteration * self.cfg.batch_steps,
            desc if position is None else f"{desc} {self.run_dir.name}", position)

    def fail(self, exc: Exception) -> Exception:
        """End the run as failed after ``exc`` (summary.json, W&B); returns the exception to
        raise: for a file that cannot be written, one that says what the checkpoint holds."""
        if isinstance(exc, RunWriteError):
            self.write_failed = True  # W&B cannot write either: its complaints stay quiet
            failure = RunWriteError(exc.path, exc.os_error, self.saved.counters.iteration
                                    if self.checkpoint_on_disk else None)
            with contextlib.suppress(RunWriteError):  # the summary may not fit either
                self.finish("failed", str(failure))
            return failure
        self.finish("failed", f"{type(exc).__name__}: {exc}")
        return exc

    def record(self, row: dict[str, Any], theta_before: torch.Tensor,
               on_row: Callable[[dict[str, Any]], None] | None = None) -> bool:
        """Write an update's row (metrics.csv, W&B, the progress bar), check the run's health,
        checkpoint when due; True when a stop was requested. Raises :class:`NumericalFailure`."""
        self.recorder.write_row(row)
        self._watch_progress(row, theta_before)
        self.recorder.log_row(row)
        if on_row is not None:
            on_row(row)
        self.recorder.advance(row, self.cfg.batch_steps)
        if self.bad_updates >= self.cfg.max_bad_updates:
            raise NumericalFailure(
                f"{self.bad_updates} consecutive updates had non-finite numbers "
                f"(max_bad_updates={self.cfg.max_bad_updates}); last at iteration "
                f"{row['iteration']}{nonfinite_hint(row)}")
        every = self.cfg.checkpoint.every
        if every and self.iteration % every == 0 and self.iteration < self.updates:
            self.checkpoint()
        return self.stop is not None and self.stop.requested

    def _watch_progress(self, row: dict[str, Any], theta_before: torch.Tensor) -> None:
        moved = not torch.equal(theta_before, flat_params(self.policy.actor_parameters()))
        warning = self.progress_watch.observe(row, moved)
        if warning is not None:
            self.warnings.append(warning)
            print(f"trpo-lab: warning: {warning}", file=sys.stderr, flush=True)

    def finish(self, status: str, error: str | None = None, dropped: bool = False
               ) -> dict[str, Any]:
        """End the run with ``status``: the last checkpoint (unless it failed or its update
        was ``dropped``: then back to the checkpoint on disk), the final evaluation of a
        completed run, summary.json, the files closed, W&B finished; returns the summary."""
        stop = self.stop
        if stop is not None:
            stop.shielded = True  # from here on a Ctrl-C waits: what is written is written whole
        self.recorder.close_progress()
        summary: dict[str, Any] | None = None
        try:
            if status != "failed" and not dropped:
                try:
                    self.checkpoint()
                except KeyboardInterrupt:  # without a StopSignal: the default Ctrl-C
                    status, dropped = "interrupted", True
            if dropped:
                self._rewind_to_checkpoint()
            if status == "completed" and self.cfg.eval.final_episodes > 0:
                self._final_evaluation()
            summary = self.summary(status, error)
            self.recorder.write_summary(summary)
        finally:
            try:
                self.recorder.close_files()
            finally:
                self._close(status, summary)
        return summary

    def _final_evaluation(self) -> None:
        start = time.perf_counter()
        try:
            self.final_eval_returns = deterministic_returns(
                env_factory(self.cfg.env, self.cfg.gamma), self.policy.numpy_actor(),
                self.collector.encode, self.cfg.eval.final_episodes, self.cfg.seed)
        except KeyboardInterrupt:  # training is done and saved: the run stays completed
            self.final_eval_error = "KeyboardInterrupt: the final evaluation was interrupted"
        except Exception as exc:  # noqa: BLE001  (training is done: record, keep the run)
            self.final_eval_error = f"{type(exc).__name__}: {exc}"
        self.final_eval_s = time.perf_counter() - start

    def _close(self, status: str, summary: dict[str, Any] | None) -> None:
        if self.wandb is not None:
            signum = self.stop.signum if self.stop is not None else None
            self.recorder.finish_wandb(status, summary or self.summary(status),
                                       exit_code(status, signum), self.write_failed)
        self.envs.close()
        if self.sampler is not None:
            self.sampler.close()
        for sampler in self.more_pairs:
            sampler.close()
        if self.prober is not None:
            self.prober.close()
