"""Single path against vine: gradient quality at equal env steps, and what common random
numbers do to the branches' Qhat differences. Prints two markdown tables.

    python benchmarks/bench_vine.py [--repeats 8] [--budget 2048] [--only gradient|crn] \
        [--envs garnet cartpole hopper] [--gradient-figure analysis/gallery/vine_gradient.png] \
        [--figure analysis/gallery/vine_crn.png]

Gradient quality: at a fixed old policy (the run's initial policy, seed 0), the gradient of
the dL estimate at theta_old (``predicted_improvement``, units of J) from independent batches
of about ``--budget`` env steps, against a reference: on the garnet the exact gradient of J
(the exact tabular batch), on CartPole one single-path gradient of 262,144 fresh steps, on
Hopper-v5 of 65,536 (``REFERENCE_STEPS``). Single
path: a batch of ``budget`` steps with GAE(lambda=1) advantages on the untrained critic (the
baseline changes no expectation). Vine: a trunk of budget/4 steps, N rollout states chosen so
that trunk + branches are about ``budget`` steps (the steps actually taken are printed),
every action branched (``proposal=all``; Hopper's Box actions: K = 4 from the old policy) to
the episode's end, common random numbers on.
Cosine mean +- SE over ``--repeats`` batches.

CRN: Var[Qhat(s, a) - Qhat(s, a')] over 300 visits of one state with independent noise per
branch against common noise, per state, under the initial policy; for the tabular envs also the
mean probability that two branches in distinct (s, a) rows land on the same next state in one
step (:func:`trpo_lab.vine.coupled_meeting_probability`), with the shared uniform and with
independent ones: once together, CRN branches stay together, so this is what CRN buys.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.conftest import compose_typed  # noqa: E402
from trpo_lab import exact  # noqa: E402
from trpo_lab.algos.common import predicted_improvement  # noqa: E402
from trpo_lab.envs import env_factory, make_vector_env, tabular_model  # noqa: E402
from trpo_lab.envs.snapshot import snapshot  # noqa: E402
from trpo_lab.numerics import flat_grad  # noqa: E402
from trpo_lab.policies import Policy  # noqa: E402
from trpo_lab.rollout import Collector, build_batch, exact_batch  # noqa: E402
from trpo_lab.vine import VineSampler, coupled_meeting_probability  # noqa: E402

SETTINGS = {
    "garnet": ["env=garnet", "policy=tabular", "gamma=0.9", "critic.hidden_sizes=[]"],
    "cartpole": ["env=cartpole"],
    "hopper": ["env=hopper", "num_envs=1"],
}
GRADIENT_ENVS = ("garnet", "cartpole", "hopper")
#: the vine's actions per setting: every action of a small Discrete set, else K = 4 from the
#: old policy (Hopper's Box actions; self-normalised, so its gradient at theta_old is 3/4 of
#: the true one in expectation: the cosine does not see the scale)
VINE_ACTIONS = {"hopper": ["algo.vine.proposal=policy", "algo.vine.actions=4"]}
#: single-path steps of the high-sample reference gradient (the garnet's is exact)
REFERENCE_STEPS = {"cartpole": 262_144, "hopper": 65_536}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def build(setting: str, *overrides: str, seed: int = 0):
    actions = VINE_ACTIONS.get(setting, ["algo.vine.proposal=all"])
    cfg = compose_typed(*SETTINGS[setting], "algo.sampler=vine", *actions,
                        "algo.vine.horizon=0", "algo.vine.states=1", f"seed={seed}", *overrides)
    envs = make_vector_env(cfg.env, cfg.num_envs, cfg.gamma)
    torch.manual_seed(cfg.seed)
    policy = Policy(envs.single_observation_space, envs.single_action_space, cfg.policy,
                    list(cfg.critic.hidden_sizes))
    if setting == "garnet":  # a non-uniform old policy: random logits
        with torch.no_grad():
            policy.actor[0].weight.copy_(torch.randn_like(policy.actor[0].weight))
    return cfg, envs, policy


def gradient(policy: Policy, batch) -> np.ndarray:
    return flat_grad(predicted_improvement(policy, batch),
                     policy.actor_parameters()).double().numpy()


def reference(setting: str, cfg, envs, policy) -> np.ndarray:
    if setting == "garnet":
        mdp = tabular_model(envs)
        pi = policy.numpy_actor().probabilities(np.eye(mdp.num_states))
        old = exact.evaluate(mdp, pi, cfg.gamma)
        return gradient(policy, exact_batch(policy, pi, old.A, old.rho, cfg.gamma, False))
    collector = Collector(envs, REFERENCE_STEPS[setting], 12345, False, False, cfg.gamma)
    data = collector.collect(policy.numpy_actor())
    return gradient(policy, build_batch(policy, data, cfg.gamma, 1.0, False))


def single_path(cfg, envs, policy, budget: int, repeats: int) -> tuple[list[np.ndarray], int]:
    collector = Collector(envs, budget, 1, False, False, cfg.gamma)
    actor = policy.numpy_actor()
    grads = [gradient(policy, build_batch(policy, collector.collect(actor), cfg.gamma, 1.0,
                                          False)) for _ in range(repeats)]
    return grads, budget


def vine(cfg, envs, policy, budget: int, repeats: int, states: int
         ) -> tuple[list[np.ndarray], float]:
    trunk = budget // 4
    cfg.algo.vine.states = states
    collector = Collector(envs, trunk, 2, False, False, cfg.gamma)
    sampler = VineSampler(cfg, collector, env_factory(cfg.env, cfg.gamma))
    actor = policy.numpy_actor()
    grads, steps = [], []
    for _ in range(repeats):
        data = collector.collect(actor)
        batch, branch = sampler.batch(policy, data, build_batch(policy, data, cfg.gamma, 1.0,
                                                                False),
                                      collector.encode, actor)
        grads.append(gradient(policy, batch))
        steps.append(trunk + branch)
    return grads, float(np.mean(steps))


def states_for(cfg, envs, policy, budget: int) -> int:
    """N such that trunk (budget / 4) + branches is about the budget: from one pilot batch."""
    _, pilot = vine(cfg, envs, policy, budget, 1, 8)
    per_state = (pilot - budget // 4) / 8
    return max(1, min(budget // 4, int(round(0.75 * budget / per_state))))


def gradient_table(budget: int, repeats: int, envs_wanted: list[str],
                   figure: Path | None = None) -> list[str]:
    rows = ["| env | sampler | env steps per batch | cosine with the reference (mean +- SE) |",
            "| --- | --- | ---: | --- |"]
    points: list[tuple[str, str, np.ndarray]] = []
    for setting in envs_wanted:
        cfg, envs, policy = build(setting)
        ref = reference(setting, cfg, envs, policy)
        n = states_for(cfg, envs, policy, budget)
        what = "all actions" if cfg.algo.vine.proposal == "all" else \
            f"K={cfg.algo.vine.actions} from the policy"
        for name, (grads, steps) in (
                ("single path", single_path(cfg, envs, policy, budget, repeats)),
                (f"vine (N={n}, {what}, CRN)", vine(cfg, envs, policy, budget, repeats, n))):
            cos = np.array([cosine(g, ref) for g in grads])
            rows.append(f"| {setting} | {name} | {steps:.0f} | {cos.mean():.3f} +- "
                        f"{cos.std(ddof=1) / np.sqrt(len(cos)):.3f} |")
            points.append((setting, name.split(" (")[0], cos))
    if figure is not None:
        plot_gradient(points, budget, figure)
    return rows


def plot_gradient(points: list[tuple[str, str, np.ndarray]], budget: int, path: Path) -> None:
    """Each batch's cosine with the reference, per env and sampler, with the mean +- SE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(env for env, _, _ in points))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for env, sampler, cos in points:
        x = envs.index(env) + (-0.15 if sampler == "single path" else 0.15)
        color = "C0" if sampler == "single path" else "C1"
        ax.scatter(np.full(len(cos), x), cos, s=10, color=color, alpha=0.5)
        ax.errorbar(x, cos.mean(), cos.std(ddof=1) / np.sqrt(len(cos)), color=color, fmt="o",
                    capsize=3, label=sampler if envs.index(env) == 0 else None)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(envs)), envs)
    ax.set_ylabel("cosine with the reference gradient")
    ax.set_title(f"Gradient quality at about {budget} env steps a batch")
    ax.legend(loc="lower right", frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def crn_variances(setting: str, state_options: list, common: bool, repeats: int = 300,
                  zero_policy: bool = False) -> list[np.ndarray]:
    cfg, envs, policy = build(setting, f"algo.vine.common_random_numbers={str(common).lower()}")
    if zero_policy:
        with torch.no_grad():
            policy.actor[0].weight.zero_()
    collector = Collector(envs, 8, 0, False, False, cfg.gamma)
    sampler = VineSampler(cfg, collector, env_factory(cfg.env, cfg.gamma))
    env = collector.envs.envs[0]
    k = int(env.action_space.n)
    out = []
    for i, options in enumerate(state_options):
        env.reset(seed=100 + i, options=options)
        seeds = np.random.default_rng(8 + i).integers(2**63, size=(repeats, k), dtype=np.int64)
        if common:
            seeds[:, 1:] = seeds[:, :1]
        q, _ = sampler.branch_returns(policy, policy.numpy_actor(), collector.encode, 1.0,
                                      [snapshot(env)] * repeats, k,
                                      torch.arange(k).repeat(repeats), seeds.reshape(-1))
        q = q.reshape(repeats, k)
        out.append((q[:, 1:] - q[:, :1]).var(0))
    return out


def meeting_probabilities(setting: str) -> str:
    """The mean one-step meeting probability of two branches in distinct (s, a) rows of a
    tabular env: with one shared uniform (CRN), and with independent ones."""
    _, envs, _ = build(setting)
    P = tabular_model(envs).P  # noqa: N806
    rows = P.reshape(-1, P.shape[-1])
    pairs = [(x, y) for x in range(len(rows)) for y in range(len(rows)) if x != y]
    crn = np.mean([coupled_meeting_probability(rows[x], rows[y]) for x, y in pairs])
    independent = np.mean([rows[x] @ rows[y] for x, y in pairs])
    return f"{crn:.2f} / {independent:.2f}"


GARNET_SHAPES = {  # held-out shapes: fewer states and wider rows make branches meet more often
    "garnet S=50 b=50": ["env.branching=50"],
    "garnet S=5 b=5 A=2": ["env.num_states=5", "env.branching=5", "env.num_actions=2"],
    "garnet S=3 b=3 A=2": ["env.num_states=3", "env.branching=3", "env.num_actions=2"],
}


def crn_table(figure: Path | None = None) -> list[str]:
    rows = ["| env | policy | one-step meeting probability, CRN / independent | variance ratio "
            "independent / common, per state and action pair |", "| --- | --- | --- | --- |"]
    bars: list[tuple[str, list[float]]] = []
    SETTINGS["chain"] = ["env=chain", "policy=tabular", "gamma=0.95", "critic.hidden_sizes=[]"]
    for name, extra in GARNET_SHAPES.items():
        SETTINGS[name] = [*SETTINGS["garnet"], *extra]
    cases = [("garnet", [{"state": s} for s in range(4)], False, "random logits"),
             *[(name, [{"state": s} for s in range(3)], True, "uniform")
               for name in GARNET_SHAPES],
             ("chain", [{"state": s} for s in range(4)], True, "uniform"),
             ("cartpole", [None] * 4, False, "initial MLP")]
    for setting, states, zero, label in cases:
        independent = crn_variances(setting, states, False, zero_policy=zero)
        common = crn_variances(setting, states, True, zero_policy=zero)
        ratios = ", ".join("/".join(f"{r:.1f}" for r in np.atleast_1d(i / c))
                           for i, c in zip(independent, common))
        meet = "-" if setting == "cartpole" else meeting_probabilities(setting)
        rows.append(f"| {setting} | {label} | {meet} | {ratios} |")
        short = setting.replace("garnet ", "garnet\n")
        bars.append((f"{short}\n({label})", [float(r) for i, c in zip(independent, common)
                                               for r in np.atleast_1d(i / c)]))
    if figure is not None:
        plot_crn(bars, figure)
    return rows


def plot_crn(bars: list[tuple[str, list[float]]], path: Path) -> None:
    """Every (state, action pair)'s variance ratio as a dot per env, on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6))
    for x, (_, ratios) in enumerate(bars):
        ax.scatter(np.full(len(ratios), x) + np.linspace(-0.15, 0.15, len(ratios)), ratios,
                   s=18, color="C0")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axhline(5.0, color="C3", lw=0.8, ls="--", label="5x")
    ax.set_yscale("log")
    ax.set_xticks(range(len(bars)), [name for name, _ in bars])
    ax.set_ylabel("Var[Qhat diff], independent / common")
    ax.set_title("Common random numbers in the vine's branches")
    ax.legend(loc="upper right", frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--budget", type=int, default=2048)
    parser.add_argument("--only", choices=["gradient", "crn"], default=None)
    parser.add_argument("--figure", type=Path, default=None,
                        help="also plot the CRN ratios there (analysis/gallery/vine_crn.png)")
    parser.add_argument("--envs", nargs="+", choices=GRADIENT_ENVS, default=list(GRADIENT_ENVS),
                        help="the gradient table's envs")
    parser.add_argument("--gradient-figure", type=Path, default=None,
                        help="also plot the cosines there (analysis/gallery/vine_gradient.png)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.only != "crn":
        print("\n".join(gradient_table(args.budget, args.repeats, args.envs,
                                        args.gradient_figure)))
        print()
    if args.only != "gradient":
        print("\n".join(crn_table(args.figure)))


if __name__ == "__main__":
    main()
