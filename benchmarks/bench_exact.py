"""Time exact evaluation + comparison of a policy pair on GARNET MDPs; prints a markdown table.

    python benchmarks/bench_exact.py [--repeats 10] [--branching 5]

Each repeat times ``evaluate(pi_old)`` followed by ``compare(pi_old, pi_new, old=...)`` (two LU
factorisations of an S x S system in all) for a fresh pair of random softmax policies, after one
warm-up call. Goal: under 50 ms median for 1,000 states x 10 actions.

The time is two dense LU factorisations (about 15 ms each at S = 1000 on 2 cores); forming P_pi
from the sparse P, Q, KL and the bounds take under 1 ms together. A training loop that keeps the
evaluation of pi_new for the next update (``compare(..., new=...)``) pays one LU per update.
Timings are sensitive to CPU contention: with as many OpenBLAS threads as cores, a busy
neighbouring process can make the LU 2-10x slower; ``OPENBLAS_NUM_THREADS=1`` gives slightly
slower but stable numbers (the header prints the setting).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from trpo_lab.envs.tabular import garnet
from trpo_lab.exact import compare, evaluate

SIZES = (100, 300, 1000)
NUM_ACTIONS = 10
GAMMA = 0.99
GOALS_MS = {1000: 50.0}


def random_policy(rng: np.random.Generator, num_states: int, num_actions: int) -> np.ndarray:
    logits = rng.normal(size=(num_states, num_actions))
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def time_pair(num_states: int, branching: int, repeats: int) -> list[float]:
    """Milliseconds of evaluate + compare for ``repeats`` random policy pairs."""
    mdp = garnet(num_states, NUM_ACTIONS, min(branching, num_states), mdp_seed=0)
    rng = np.random.default_rng(0)

    def one() -> float:
        pi_old = random_policy(rng, num_states, NUM_ACTIONS)
        pi_new = random_policy(rng, num_states, NUM_ACTIONS)
        start = time.perf_counter()
        old = evaluate(mdp, pi_old, GAMMA)
        compare(mdp, pi_old, pi_new, GAMMA, old=old)
        return 1e3 * (time.perf_counter() - start)

    one()  # warm-up: caches the sparse form of P, loads BLAS
    return [one() for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--branching", type=int, default=5,
                        help="next states per (s, a); >= S means a dense MDP")
    args = parser.parse_args()
    print(f"evaluate + compare, garnet(S, A={NUM_ACTIONS}, b={args.branching}), gamma={GAMMA}, "
          f"{args.repeats} repeats; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}\n")
    print("| states | actions | median ms | min ms | max ms | goal | pass |")
    print("| ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for num_states in SIZES:
        times = time_pair(num_states, args.branching, args.repeats)
        median = statistics.median(times)
        goal = GOALS_MS.get(num_states)
        goal_text = f"< {goal:g} ms" if goal is not None else "-"
        verdict = "-" if goal is None else ("pass" if median < goal else "FAIL")
        print(f"| {num_states} | {NUM_ACTIONS} | {median:.1f} | {min(times):.1f} | "
              f"{max(times):.1f} | {goal_text} | {verdict} |")


if __name__ == "__main__":
    main()
