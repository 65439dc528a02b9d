"""The configuration schema: typed dataclasses registered in Hydra's ConfigStore.

YAML files in ``conf/`` hold values; these dataclasses are the schema. The entry point converts
the composed ``DictConfig`` once into these objects (:func:`to_typed`) and validates every field
(:func:`validate`); the rest of the package only sees typed objects.

Every field carries its allowed range (checked at start, exit code 2 on violation) and advice,
in the spirit of Spinning Up's docstrings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration value outside its allowed range (reported as ``key=value: allowed``)."""

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"invalid value {key}={value!r}: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


Check = Callable[[Any], str | None]  # returns None if fine, else a description of what is allowed


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def interval(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
             hi_open: bool = False, integer: bool = False) -> Check:
    """A real (or integer) number in an interval; NaN and infinities are always refused."""
    left = "-inf" if lo is None else f"{lo:g}"
    right = "inf" if hi is None else f"{hi:g}"
    kind = "an integer" if integer else "a finite number"
    allowed = f"must be {kind} in {'(' if lo_open or lo is None else '['}{left}, {right}" \
              f"{')' if hi_open or hi is None else ']'}"

    def check(value: Any) -> str | None:
        if not _is_real(value) or (integer and not isinstance(value, int)):
            return allowed
        if lo is not None and (value < lo or (lo_open and value == lo)):
            return allowed
        if hi is not None and (value > hi or (hi_open and value == hi)):
            return allowed
        return None

    return check


def one_of(*choices: str) -> Check:
    allowed = "must be one of " + ", ".join(choices)
    return lambda value: None if value in choices else allowed


def int_list(lo: int, hi: int) -> Check:
    allowed = f"must be a list of integers in [{lo}, {hi}] (may be empty)"

    def check(value: Any) -> str | None:
        ok = all(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
                 for v in value)
        return None if ok else allowed

    return check


def torch_device(value: Any) -> str | None:
    ok = isinstance(value, str) and (value in ("cpu", "cuda") or re.fullmatch(
        r"cuda:\d{1,3}", value) is not None)
    return None if ok else "must be cpu, cuda or cuda:N (N the GPU's index)"


def finite_list(value: Any) -> str | None:
    ok = all(_is_real(v) and abs(v) <= 1e3 for v in value)
    return None if ok else "must be a list of finite numbers in [-1000, 1000] (may be empty)"


def reward_bounds(value: Any) -> str | None:
    ok = len(value) == 0 or (len(value) == 2 and all(_is_real(v) and math.isfinite(v)
                                                     for v in value) and value[0] <= value[1])
    return None if ok else "must be [] or [low, high], finite numbers with low <= high"


def beta_value(value: Any) -> str | None:
    if value == "theory" or (_is_real(value) and value >= 0):
        return None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if math.isfinite(number) and number >= 0:
            return None
    return "must be a finite number >= 0 or the string 'theory' (beta = C of the TRPO bound)"


def no_check(_: Any) -> None:
    return None


def param(default: Any, check: Check, doc: str) -> Any:
    """A schema field: its default, its range check, and advice for the user."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"check": check, "doc": doc})
    return field(default=default, metadata={"check": check, "doc": doc})


ESTIMATORS = ("sampled", "exact")


@dataclass
class AlgoConfig:
    name: str = MISSING
    estimator: str = param(
        "sampled", one_of(*ESTIMATORS),
        "sampled: advantages from GAE on rollouts. exact: exact advantages and visitation from "
        "the tabular model (tabular envs only); isolates the surrogate's error from sampling.")


SAMPLERS = ("single_path", "vine")
PROPOSALS = ("all", "policy", "uniform")


@dataclass
class VineConfig:
    """The vine sampler of the TRPO paper (section 5.2; :mod:`trpo_lab.vine`), used when
    ``algo.sampler=vine``. The trunk trajectories are the run's ``num_envs`` envs stepped
    ``batch_steps / num_envs`` steps per update by the old policy (the single-path batch,
    which also trains the critic); the rollout set is ``states`` of their states, drawn
    uniformly without replacement; from each, ``actions`` branches restore the env's snapshot
    (:mod:`trpo_lab.envs.snapshot`), take their action and follow the old policy. Branch steps
    count in ``env_steps`` on top of the trunk's ``batch_steps``."""

    states: int = param(64, interval(1, 10**7, integer=True),
                        "Rollout-set size N: trunk states branched per update; at most "
                        "batch_steps. Costs about N x actions x (branch length) env steps; "
                        "the paper used a few hundred to a few thousand states.")
    actions: int = param(4, interval(1, 1000, integer=True),
                         "Actions K branched per state with proposal=policy|uniform (at least "
                         "2: a self-normalised estimate of one action has no gradient). "
                         "proposal=all branches every action and ignores it.")
    proposal: str = param(
        "all", one_of(*PROPOSALS),
        "all: every action of a Discrete action space, the exact sum_a pi(a|s) Qhat(s,a) "
        "(best for small action sets). policy: K actions from the old policy; uniform: K "
        "uniform actions (Discrete, or a Box with finite bounds); both use the self-normalised "
        "importance-weighted surrogate sum_k w_k Qhat_k / sum_k w_k, w_k = pi(a_k|s)/q(a_k|s), "
        "whose gradient at theta_old is (K-1)/K of the true one for proposal=policy.")
    horizon: int = param(
        0, interval(0, 10**7, integer=True),
        "Branch length H in env steps, the branched action included: 0 = to the episode's "
        "end (termination or the env's time limit: Qhat is then an unbiased return). H > 0 "
        "cuts a branch after H steps and bootstraps from the critic, gamma^H V(s_H): cheaper, "
        "biased by the critic's error. Use 0 on tabular envs and CartPole; 100-200 on MuJoCo.")
    common_random_numbers: bool = param(
        True, no_check,
        "The branches of one state share their random numbers (env noise and the old "
        "policy's sampling noise), so the Qhat differences between actions lose the noise "
        "they share (the paper's variance reduction). false: independent noise per branch.")


@dataclass
class TRPOConfig(AlgoConfig):
    name: str = "trpo"
    delta: float = param(0.01, interval(0, 10, lo_open=True),
                         "Max mean KL(old||new) per update. 0.01 is the standard; 0.001-0.1 "
                         "is the useful range. Larger steps learn faster until the surrogate lies.")
    cg_iters: int = param(10, interval(1, 1000, integer=True),
                          "Conjugate-gradient iterations for F^-1 g. 10-20 suffice.")
    cg_damping: float = param(0.1, interval(0, 1e3),
                              "Added to the Fisher diagonal (F + damping I). 0.1 is robust; "
                              "1e-3 tracks the true natural gradient more closely.")
    backtrack_iters: int = param(10, interval(0, 100, integer=True),
                                 "Line-search steps, each shrinking the step by backtrack_coef.")
    backtrack_coef: float = param(0.8, interval(0, 1, lo_open=True, hi_open=True),
                                  "Shrink factor per backtrack, in (0, 1). 0.5-0.8 is typical.")
    line_search: bool = param(True, no_check,
                              "false: take the full natural-gradient step (the NPG baseline).")
    line_search_on: str = param(
        "standardized", one_of("standardized", "dL"),
        "What the line search requires to improve (besides mean KL <= delta): "
        "'standardized' the policy objective sum_i w_i ratio_i A_i the gradient was taken of "
        "(standardised advantages when normalize_advantages, the classic TRPO check); 'dL' "
        "the dL estimate in units of J on raw advantages (surrogate/improvement). The value "
        "it tested is logged as trpo/surrogate_tested.")
    fvp_subsample: float = param(
        1.0, interval(0, 1, lo_open=True),
        "Fraction of the batch's states on which the Fisher-vector products of conjugate "
        "gradient are computed, in (0, 1]: ceil(f B) rows spread evenly over the batch, their "
        "weights rescaled to the batch's total (Schulman's thesis: 0.1; sb3-contrib's "
        "sub_sampling_factor k is f = 1/k). The gradient, the step's KL check and the line "
        "search keep the whole batch. 1 = the whole batch (the default: today's numbers). "
        "CG's cost falls about in proportion; keep f B >= a few hundred states, below that F "
        "gets noisy and steps erratic (README: its measured effect).")
    sampler: str = param(
        "single_path", one_of(*SAMPLERS),
        "single_path: GAE advantages on the batch's trajectories (every public TRPO). vine: "
        "Qhat from branches of restored env snapshots (TRPO paper, section 5.2; algo.vine.*); "
        "envs without snapshots are refused.")
    vine: VineConfig = field(default_factory=VineConfig)
    step_length: str = param(
        "undamped", one_of("damped", "undamped"),
        "Which Fisher measures the full step sqrt(2 delta / s^T F s) s: 'undamped' (F, the "
        "quadratic model of the KL: its full step has model KL = delta) or 'damped' (F + "
        "cg_damping I: a shorter step wherever damping is comparable to F's eigenvalues, "
        "the choice of sb3-contrib, Spinning Up and baselines). Tabular policies need "
        "'undamped' (their Fisher entries are about d_pi(s) pi (1 - pi): damping 0.1 shrank "
        "steps to 5% of delta).")


@dataclass
class VPGConfig(AlgoConfig):
    name: str = "vpg"
    lr: float = param(3e-4, interval(0, 10, lo_open=True),
                      "Actor learning rate. Adam: 1e-4-3e-3; SGD needs far larger values.")
    optimizer: str = param("adam", one_of("adam", "sgd"), "adam or sgd.")
    steps: int = param(1, interval(1, 10000, integer=True),
                       "Gradient steps per batch on the surrogate (1 = textbook VPG).")


@dataclass
class KLPenaltyConfig(AlgoConfig):
    name: str = "kl_penalty"
    beta: Any = param(3.0, beta_value,
                      "Penalty weight on mean KL(old||new), or 'theory' for beta = C = "
                      "4 eps gamma/(1-gamma)^2 with the max-KL penalty (TRPO's Algorithm 1).")
    lr: float = param(1e-3, interval(0, 10, lo_open=True), "Actor learning rate (Adam).")
    optimizer: str = param("adam", one_of("adam", "sgd"), "adam or sgd.")
    epochs: int = param(10, interval(1, 10000, integer=True),
                        "Passes over the batch per update.")
    minibatches: int = param(1, interval(1, 100000, integer=True),
                             "Minibatches per epoch (1 = full batch).")


@dataclass
class PPOConfig(AlgoConfig):
    name: str = "ppo"
    clip: float = param(0.2, interval(0, 10, lo_open=True),
                        "Clip range epsilon for the ratio; 0.1-0.3 is the usual range.")
    lr: float = param(3e-4, interval(0, 10, lo_open=True), "Actor learning rate (Adam).")
    epochs: int = param(10, interval(1, 10000, integer=True), "Passes over the batch per update.")
    minibatches: int = param(32, interval(1, 100000, integer=True),
                             "Minibatches per epoch; batch_steps must be divisible by it.")


ALGO_SCHEMAS: dict[str, type[AlgoConfig]] = {
    "trpo": TRPOConfig, "vpg": VPGConfig, "kl_penalty": KLPenaltyConfig, "ppo": PPOConfig}

TABULAR_ENVS = ("garnet", "chain", "gridworld")
# env=minatar env.game=...: the minatar package's gymnasium ids (minatar.gym.register_envs)
MINATAR_GAMES = {"breakout": "MinAtar/Breakout-v1", "space_invaders": "MinAtar/SpaceInvaders-v1",
                 "asterix": "MinAtar/Asterix-v1", "freeway": "MinAtar/Freeway-v1",
                 "seaquest": "MinAtar/Seaquest-v1"}


@dataclass
class EnvConfig:
    name: str = param("custom", no_check,
                      "Short name (cartpole, pendulum, hopper, swimmer, walker2d, garnet, chain, "
                      "gridworld, minatar, custom).")
    id: str = param(MISSING, no_check,
                    "Any registered gymnasium id whose spaces are served (README, 'Spaces').")
    tabular: bool = param(False, no_check, "Set by the tabular env configs; do not override.")
    normalize_obs: bool = param(False, no_check,
                                "Running mean/std observation normalisation (MuJoCo: true).")
    normalize_reward: bool = param(
        False, no_check,
        "Divide rewards by the running std of the discounted return, clipped to +-10, as "
        "sb3's VecNormalize (MuJoCo and CartPole: true, set in conf/env/). Changes only the "
        "scale the critic learns in (policy advantages are standardised anyway); logged "
        "estimates of J and dJ stay in reward units, value/loss is in the critic's scaled "
        "units. Leave it on where values reach tens or more: the critic's tanh MLP with Adam "
        "at lr 1e-3 moves its output about 1 per update, so on CartPole (values up to ~100 "
        "at gamma 0.99) the unscaled critic lagged the whole run (explained variance ~0) and "
        "the default run solved 4 of 10 seeds instead of 10 (README, Benchmarks).")
    kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "check": no_check, "doc": "Extra keyword arguments for gymnasium.make."})
    num_states: int = param(50, interval(2, 100000, integer=True),
                            "garnet: number of states.")
    num_actions: int = param(4, interval(2, 1000, integer=True), "garnet: number of actions.")
    branching: int = param(5, interval(1, 100000, integer=True),
                           "garnet: next states per (s, a); <= num_states.")
    mdp_seed: int = param(0, interval(0, 2**31 - 1, integer=True),
                          "garnet: seed of the random MDP (separate from the run's seed).")
    game: str = param("", one_of("", *MINATAR_GAMES),
                      "env=minatar: the MinAtar game (breakout, space_invaders, asterix, "
                      "freeway, seaquest); its gymnasium id MinAtar/<Game>-v1 is set from it. "
                      "Leave empty for other envs.")
    horizon: int = param(0, interval(0, 10**7, integer=True),
                         "tabular: truncation horizon H of sampled episodes; 0 = smallest H "
                         "with gamma^H <= 1e-6, so sampled returns measure the exact J.")
    reward_bounds: list[float] = param(
        [], reward_bounds,
        "[low, high]: every reward of the env lies within (CartPole: [0, 1], set in "
        "conf/env/). With the env's max_episode_steps T it bounds a pair's |G' - G| by "
        "(max(high, 0) - min(low, 0)) sum_{t<T} gamma^t, which gives dJ an interval when "
        "every paired episode coincides (README, 'Calibration'). [] = unknown: such a dJ "
        "gets SE 0, flagged by eval/pairs_differing = 0. Tabular envs take it from the MDP.")
    action_components: list[int] = param(
        [], int_list(2, 1000),
        "tabular: factor the MDP's joint actions into MultiDiscrete components (n_1, ..., "
        "n_k), product = the MDP's actions (garnet: env.num_actions), joint index in C order; "
        "the policy is then a product of Categoricals while the exact evaluator works on joint "
        "actions. [] (default): Discrete actions. E.g. env=garnet env.num_actions=6 "
        "'env.action_components=[3,2]'.")


def env_label(name: str | None, env_id: str | None) -> str | None:
    """What a run's env is called in summary.json, W&B run names and analysis tables: the name
    of its env config (``cartpole``, ``garnet``), but the gymnasium id for ``env=custom``
    (``Acrobot-v1``), so that two custom envs are told apart."""
    if name in ("custom", "minatar") and env_id:
        return env_id
    return name


POLICIES = ("mlp", "linear", "tabular", "cnn", "module")
BACKENDS = ("auto", "generic", "fast")


def module_target(spec: dict[str, Any]) -> str | None:
    """The class a ``policy.actor`` / ``policy.critic`` node names, or None ({} or
    ``_target_: null``: the policy's own network)."""
    return spec.get("_target_")  # a dict the user wrote, not the typed config


def module_spec(value: Any) -> str | None:
    """A ``policy.actor`` / ``policy.critic`` node: {} or {_target_: pkg.mod.Class, kwargs}."""
    if not isinstance(value, dict):
        return "must be a mapping {_target_: package.module.Class, <keyword arguments>}"
    target = module_target(value)
    if target is None and len(value) > ("_target_" in value):
        return "has keyword arguments but no _target_=package.module.Class"
    if target is not None and not isinstance(target, str):
        return "_target_ must be a string package.module.Class"
    return None


@dataclass
class PolicyConfig:
    name: str = param("mlp", one_of(*POLICIES),
                      "mlp, linear, tabular, cnn (image observations: conv layers, then "
                      "hidden_sizes) or module (your torch module: policy.actor._target_).")
    hidden_sizes: list[int] = param([64, 64], int_list(1, 65536),
                                    "Actor hidden layers (mlp; cnn: after the conv layers). "
                                    "64x64 is standard for mlp, [64] for cnn on MinAtar.")
    activation: str = param("tanh", one_of("tanh", "relu"),
                            "tanh is the TRPO default (mlp); cnn uses relu.")
    init_log_std: float = param(0.0, interval(-10, 5),
                                "Initial log std of the Gaussian head (Box actions).")
    channels: list[int] = param([16, 16], int_list(1, 4096),
                                "cnn: output channels per conv layer; the TRPO paper's Atari "
                                "net has [16, 16].")
    kernel_size: int = param(0, interval(0, 64, integer=True),
                             "cnn: conv kernel size; 0 = 3 on images under 32 px (MinAtar), "
                             "4 on larger frames (Atari, as the TRPO paper).")
    stride: int = param(0, interval(0, 64, integer=True),
                        "cnn: conv stride; 0 = 1 under 32 px, 2 on larger frames.")
    actor: dict[str, Any] = field(default_factory=dict, metadata={
        "check": module_spec,
        "doc": "policy=module: the actor's class, policy.actor._target_=pkg.mod.Class (its "
               "other keys are keyword arguments), called as Class(observation_space=..., "
               "output_dim=..., **kwargs); forward maps [N, *obs_shape] to [N, output_dim]."})
    critic: dict[str, Any] = field(default_factory=dict, metadata={
        "check": module_spec,
        "doc": "The critic's class as policy.actor (output_dim 1); {} = the MLP critic of "
               "critic.hidden_sizes. Any policy may set it."})
    backend: str = param("auto", one_of(*BACKENDS),
                         "How derivatives are computed. auto: the hand-written numpy path for "
                         "plain Linear + tanh/ReLU stacks (mlp, linear, tabular), torch.func "
                         "otherwise. generic: torch.func for every network (any module, any "
                         "device). fast: the hand-written path; refused for other networks.")


@dataclass
class CriticConfig:
    hidden_sizes: list[int] = param([64, 64], int_list(1, 65536),
                                    "Critic hidden layers; [] gives a linear critic.")
    lr: float = param(1e-3, interval(0, 10, lo_open=True), "Critic Adam learning rate.")
    adam_eps: float = param(1e-5, interval(0, 1, lo_open=True),
                            "Critic Adam epsilon; 1e-5 as sb3 and baselines, torch's default "
                            "is 1e-8.")
    epochs: int = param(5, interval(0, 10000, integer=True),
                        "Passes over the batch per update (0 = frozen critic).")
    minibatches: int = param(4, interval(1, 100000, integer=True), "Minibatches per epoch.")


@dataclass
class LoggerConfig:
    name: str = param("wandb", one_of("wandb", "none"), "wandb or none.")
    mode: str = param("auto", one_of("auto", "offline", "online", "disabled"),
                      "auto: online when an API key is configured, else offline.")
    project: str = param("trpo-lab", no_check, "W&B project.")
    entity: str | None = param(None, no_check, "W&B entity (team or user); None = default.")
    group: str | None = param(None, no_check, "W&B group; sweeps set it to name + start time.")
    tags: list[str] = param([], no_check, "Extra W&B tags.")
    connect_timeout: float = param(
        1.0, interval(0, 60, lo_open=True),
        "Seconds to wait for a TCP connection to the W&B server (WANDB_BASE_URL, or the "
        "https proxy) before an online run logs offline instead; the check runs only when "
        "the run would log online.")
    log_checkpoints: bool = param(
        False, no_check,
        "Log every checkpoint.pt as a version of the W&B artifact checkpoint-<run id> (type "
        "model; aliases latest and update-<k>); offline it is kept in the offline run and "
        "uploaded by wandb sync. Each version stores a copy of the file (a few hundred KB for "
        "the default MLP).")


@dataclass
class EvalConfig:
    episodes: int = param(
        64, interval(0, 100000, integer=True),
        "Fresh stochastic episodes of pi and of pi' per evaluated update, stepped together in "
        "one vector env on paired reset seeds and paired noise (common random numbers), for "
        "the Monte Carlo true J and dJ and their standard errors. 0 = off. The SE of dJ falls "
        "as 1/sqrt(episodes); 64 resolves most CartPole updates (benchmarks/bench_truth.py).")
    min_differing: int = param(
        64, interval(0, 10**6, integer=True),
        "Adaptive pairs: while fewer than this many of the paired episodes differ (a small "
        "step changes few actions, and coinciding pairs make the SE of dJ collapse towards 0), "
        "draw further rounds of eval.episodes pairs, up to eval.max_pairs "
        "(trpo_lab/intervals.py). 0 = always exactly eval.episodes pairs. Updates that did not "
        "move the policy never draw more. Chosen by measurement (README, 'Calibration').")
    max_pairs: int = param(
        4096, interval(1, 10**7, integer=True),
        "Most paired episodes per evaluated update with adaptive pairs (rounds of "
        "eval.episodes while the total stays within it). Early CartPole updates' pairs nearly "
        "all differ and never draw more; small late steps can reach it. 4096 by measurement: "
        "1024 left the dJ intervals of some garnets at 91% coverage (README, 'Calibration').")
    max_coinciding_pairs: int = param(
        512, interval(1, 10**7, integer=True),
        "Adaptive pairs stop once this many pairs are drawn and every one coincides (a solved "
        "CartPole policy: both reach 500 in every pair). The interval is then the bound of "
        "trpo_lab/intervals.py where the returns are bounded (tabular MDPs, env.reward_bounds), "
        "else {0} with eval/pairs_differing = 0. Raise it to resolve tinier steps, at the "
        "evaluation's cost.")
    heldout_episodes: int = param(
        64, interval(0, 100000, integer=True),
        "Fresh episodes of the old policy per evaluated update, never trained on, on which "
        "surrogate/improvement_heldout (dL) and surrogate/linear_heldout are estimated with "
        "their standard error over episodes. Counted in heldout/env_steps, not env_steps. "
        "0 = off. 64 by measurement: the per-episode terms are heavy-tailed, and 16 gave "
        "95% intervals covering the exact dL in far fewer updates (README, 'Calibration').")
    every: int = param(
        1, interval(1, 10**9, integer=True),
        "Evaluate (true/*, mc/*, held-out dL) every N updates; the others leave those cells "
        "empty. Raise it where episodes are expensive (MuJoCo: 1,000-step episodes).")
    final_episodes: int = param(
        0, interval(0, 100000, integer=True),
        "Episodes with the deterministic policy (argmax, or the Gaussian mean) on fresh envs "
        "when training completes; their mean undiscounted return is summary.json's "
        "final_eval_return, the figure papers and the rl-baselines3-zoo report (10 is "
        "usual). 0 = off.")


@dataclass
class ProbeConfig:
    every: int = param(
        0, interval(0, 10**9, integer=True),
        "Probe every K-th update (k % K == 0) and write its rows to probes.csv: the landscape "
        "of the surrogate and of the true objective along the step and along random "
        "directions, and the policy gradient's quality against batch size. 0 = off. A probe "
        "costs about 1-3 s on CartPole and on the garnet (benchmarks/bench_probes.py): 10-50 "
        "suits a run of 50-500 updates.")
    alphas: list[float] = param(
        [-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0], finite_list,
        "Points theta_old + alpha d of each landscape line, in units of the direction d (d = "
        "the step taken: alpha = 1 is the new policy). Keep 0 and 1; [] = no landscape rows.")
    random_directions: int = param(
        1, interval(0, 100, integer=True),
        "Random directions of the step's norm (seeded by seed and update) probed beside the "
        "step: the baseline that shows how special the step's direction is. 0 = step only.")
    episodes: int = param(
        64, interval(1, 100000, integer=True),
        "Paired Monte Carlo episodes per landscape point off the tabular envs (pi_old and "
        "every point in one vector env, common random numbers): the SE of 'true' falls as "
        "1/sqrt(episodes). Tabular envs use the exact J and ignore it.")
    batch_steps: list[int] = param(
        [64, 256, 1024, 4096, 16384], int_list(1, 10**7),
        "Env steps of the independent batches whose policy gradients are compared with the "
        "reference gradient (64 ... 16,384, log spaced, as Ilyas et al. 2020). [] = no "
        "gradient rows.")
    batch_by: str = param(
        "episodes", one_of("episodes", "steps"),
        "How a gradient batch of B steps is drawn: 'episodes' max(1, round(B / L)) whole "
        "episodes (L the mean episode length of the probe's first round), so each batch weighs "
        "the discounted visitation as the full gradient does and batch size changes only the "
        "variance; 'steps' exactly B steps of whole episodes in order, the last one cut (Ilyas "
        "et al.'s batching: a batch shorter than an episode sees only its early steps, a "
        "biased direction).")
    batches: int = param(
        8, interval(2, 1000, integer=True),
        "Independent batches per batch size: cosine_mean and cosine_se are over them, "
        "pairwise_cosine_mean over their pairs. Costs batches x sum(batch_steps) env steps.")
    reference_steps: int = param(
        65536, interval(1, 10**8, integer=True),
        "Off the tabular envs, the reference gradient is one estimate from this many fresh "
        "steps (independent of the batches); its own noise pulls the cosines down, so keep it "
        ">= 4 x max(batch_steps). Tabular envs use the exact gradient of J and ignore it.")


@dataclass
class CheckpointConfig:
    every: int = param(10, interval(0, 10**9, integer=True),
                       "Checkpoint every N updates (and always at the end). 0 = only at the end.")


@dataclass
class Config:
    algo: Any = MISSING
    env: EnvConfig = MISSING
    policy: PolicyConfig = MISSING
    logger: LoggerConfig = MISSING
    critic: CriticConfig = field(default_factory=CriticConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    seed: int = param(0, interval(0, 2**31 - 1, integer=True), "Seeds every RNG of the run.")
    gamma: float = param(0.99, interval(0, 1, hi_open=True),
                         "Discount of J and of the advantages, in [0, 1).")
    gae_lambda: float = param(0.95, interval(0, 1),
                              "GAE lambda in [0, 1]: 0 = one-step TD, 1 = Monte Carlo.")
    total_steps: int = param(100_000, interval(1, 10**12, integer=True),
                             "Environment steps in total, rounded up to whole batches: "
                             "updates = ceil(total_steps / batch_steps), so a run trains at "
                             "least total_steps steps.")
    batch_steps: int = param(2048, interval(1, 10**9, integer=True),
                             "Environment steps per update (all envs together); a multiple "
                             "of num_envs.")
    num_envs: int = param(1, interval(1, 4096, integer=True), "Parallel (vector) environments.")
    normalize_advantages: bool = param(True, no_check,
                                       "Standardise advantages in the policy loss (all algos).")
    max_bad_updates: int = param(5, interval(1, 10**6, integer=True),
                                 "Stop as failed after this many consecutive non-finite updates.")
    resume: bool = param(False, no_check,
                         "Resume from checkpoint.pt in the run directory (also automatic when "
                         "the run directory holds an unfinished run).")
    device: str = param("cpu", torch_device,
                        "Torch device of the networks and the update: cpu (the default), "
                        "cuda or cuda:N (a GPU torch sees; "
                        "refused where torch sees none). Off the CPU every network takes the "
                        "generic backend (policy.backend=fast is refused); rollouts and the "
                        "evaluator step the envs on the CPU and call the actor on the device.")
    torch_threads: int = param(1, interval(0, 256, integer=True),
                               "torch.set_num_threads; 1 is fastest for small nets, 0 = default.")
    progress: bool = param(True, no_check,
                           "Progress bar (only shown on a terminal). The lines saying where "
                           "the run writes are printed either way.")


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore, outside every config group.

    They sit at the root of the config repository (``/trpo_schema``, ``/env_schema``, ...), and
    each option's YAML names its schema by that absolute path in its defaults list, so a schema
    is never an option of its group: ``algo=trpo_schema`` is refused like any unknown option,
    and neither ``--help`` nor an unknown-option message lists the schemas.
    """
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for name, schema in ALGO_SCHEMAS.items():
        cs.store(name=f"{name}_schema", node=schema)
    cs.store(name="env_schema", node=EnvConfig)
    cs.store(name="policy_schema", node=PolicyConfig)
    cs.store(name="logger_schema", node=LoggerConfig)


def to_typed(cfg: DictConfig) -> Config:
    """Convert the composed config once into dataclass instances."""
    typed = OmegaConf.to_object(cfg)
    assert isinstance(typed, Config)
    if typed.env.name == "minatar" and typed.env.game in MINATAR_GAMES:
        typed.env.id = MINATAR_GAMES[typed.env.game]
    return typed


def _validate_fields(obj: Any, prefix: str) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            _validate_fields(value, key + ".")
            continue
        check = f.metadata.get("check")
        if check is not None:
            problem = check(value)
            if problem:
                raise ConfigError(key, value, problem)


def validate(cfg: Config) -> None:
    """Check every field's range and the cross-field rules; raise ConfigError on the first."""
    _validate_fields(cfg, "")
    if cfg.batch_steps % cfg.num_envs:
        raise ConfigError("batch_steps", cfg.batch_steps,
                          f"must be a multiple of num_envs={cfg.num_envs}")
    if cfg.total_steps < cfg.batch_steps:
        raise ConfigError("total_steps", cfg.total_steps,
                          f"must be >= batch_steps={cfg.batch_steps} (at least one update)")
    algo = cfg.algo
    if algo.estimator == "exact" and not cfg.env.tabular:
        raise ConfigError("algo.estimator", "exact",
                          f"exact estimation needs a tabular env ({', '.join(TABULAR_ENVS)}); "
                          f"env={cfg.env.name} is not tabular")
    for minibatched in (algo, cfg.critic):
        count = getattr(minibatched, "minibatches", 1)
        if count > cfg.batch_steps:
            key = "algo.minibatches" if minibatched is algo else "critic.minibatches"
            raise ConfigError(key, count, f"must be <= batch_steps={cfg.batch_steps}")
    if isinstance(algo, TRPOConfig) and algo.sampler == "vine":
        _validate_vine(cfg, algo)
    if cfg.env.name == "garnet" and cfg.env.branching > cfg.env.num_states:
        raise ConfigError("env.branching", cfg.env.branching,
                          f"must be <= env.num_states={cfg.env.num_states}")
    components = list(cfg.env.action_components)
    if components and not cfg.env.tabular:
        raise ConfigError("env.action_components", components,
                          f"factored actions are for the tabular envs ({', '.join(TABULAR_ENVS)})"
                          f"; env={cfg.env.name} takes its action space from gymnasium")
    if components and cfg.env.name == "garnet" and math.prod(components) != cfg.env.num_actions:
        raise ConfigError("env.action_components", components,
                          f"their product {math.prod(components)} must be env.num_actions="
                          f"{cfg.env.num_actions} (the garnet's joint actions): set "
                          f"env.num_actions={math.prod(components)}")
    if cfg.env.tabular and list(cfg.env.reward_bounds):
        raise ConfigError("env.reward_bounds", list(cfg.env.reward_bounds),
                          f"must be [] on tabular envs (env={cfg.env.name}): the bound comes "
                          "from the MDP's own rewards")
    if cfg.env.tabular and cfg.env.normalize_obs:
        raise ConfigError("env.normalize_obs", True,
                          f"must be false on tabular envs (env={cfg.env.name}): the exact "
                          "columns evaluate the policy on the MDP's states, not on normalised "
                          "one-hot vectors")
    if cfg.env.name == "minatar" and not cfg.env.game:
        raise ConfigError("env.game", cfg.env.game,
                          "env=minatar needs a game: one of " + ", ".join(MINATAR_GAMES))
    policy = cfg.policy
    if policy.name == "module" and module_target(policy.actor) is None:
        raise ConfigError("policy.actor._target_", None,
                          "policy=module needs the actor's class: "
                          "policy.actor._target_=package.module.Class")
    if policy.name != "module" and module_target(policy.actor) is not None:
        raise ConfigError("policy.actor", dict(policy.actor),
                          f"is for policy=module (policy={policy.name} builds its own actor)")
    if policy.backend == "fast" and policy.name in ("cnn", "module"):
        raise ConfigError("policy.backend", "fast",
                          f"the hand-written derivatives serve Linear + tanh/ReLU stacks "
                          f"(policy=mlp, linear, tabular), not policy={policy.name}: use "
                          "policy.backend=auto or generic")
    if policy.backend == "fast" and cfg.device != "cpu":
        raise ConfigError("policy.backend", "fast",
                          f"the hand-written derivatives run in numpy on the CPU, not on "
                          f"device={cfg.device}: use policy.backend=auto or generic (auto "
                          "takes the generic backend off the CPU)")
    if policy.backend == "fast" and module_target(policy.critic) is not None:
        raise ConfigError("policy.backend", "fast",
                          "the hand-written derivatives serve the MLP critic, not "
                          f"policy.critic._target_={module_target(policy.critic)}: use "
                          "policy.backend=auto or generic")
    if cfg.policy.name == "tabular" and not cfg.env.tabular:
        raise ConfigError("policy", "tabular",
                          f"a tabular policy needs a tabular env ({', '.join(TABULAR_ENVS)}) "
                          f"with a Discrete observation space; env={cfg.env.name}")


def _validate_vine(cfg: Config, algo: TRPOConfig) -> None:
    vine = algo.vine
    if algo.estimator == "exact":
        raise ConfigError("algo.sampler", "vine",
                          "needs algo.estimator=sampled (the exact estimator has no samples)")
    if vine.states > cfg.batch_steps:
        raise ConfigError("algo.vine.states", vine.states,
                          f"must be <= batch_steps={cfg.batch_steps} (the trunk's states)")
    if vine.proposal != "all" and vine.actions < 2:
        raise ConfigError("algo.vine.actions", vine.actions,
                          f"must be >= 2 with algo.vine.proposal={vine.proposal} (a "
                          "self-normalised estimate of one action has no gradient)")


def planned_updates(cfg: Config) -> int:
    """The number of updates a run trains: ``total_steps`` rounded up to whole batches, so that
    it trains at least ``total_steps`` env steps (100000 at 2048 a batch: 49 updates, 100352)."""
    return -(-cfg.total_steps // cfg.batch_steps)
