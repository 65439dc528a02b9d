"""gymnasium's ``CartPoleVectorEnv.step`` without its per-call overhead, to the bit.

The vector env's step spends most of its time outside the physics at the sizes used here (80-
1,600 columns): ``action_space.contains`` (a MultiDiscrete check of every action), an
``np.stack`` of the new state, and the autoreset bookkeeping even when nothing ended.
:func:`vector_step` computes the same float64 expressions in the same order on the env's own
``state`` (updated in place), with the same NEXT_STEP autoreset (the columns that ended at the
previous step are reset from the env's own ``np_random``, with the same draw), so observations,
rewards, flags, the env's state, step counters and random stream are what ``env.step`` leaves,
bit for bit (tests/test_rollout_engine.py compares them over thousands of steps). The actions
are not checked: callers pass the policy's 0/1 actions.

:func:`fast_steppable` says whether an env is one this applies to (gymnasium's
``CartPoleVectorEnv`` with the Euler integrator); anything else keeps ``env.step``.
"""

from __future__ import annotations

import numpy as np


def fast_steppable(env) -> bool:
    """``env`` (unwrapped) is gymnasium's CartPoleVectorEnv with the Euler integrator, whose
    step :func:`vector_step` reproduces."""
    from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

    return type(env) is CartPoleVectorEnv and env.kinematics_integrator == "euler" \
        and isinstance(env.state, np.ndarray) and env.state.dtype == np.float64


def vector_step(env, action: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One ``env.step(action)`` of a :func:`fast_steppable` env (unwrapped): (obs float32
    [N, 4], reward float32 [N], terminated [N], truncated [N]), the env's state advanced in
    place."""
    state = env.state
    theta, theta_dot = state[2], state[3]
    # np.sign(action - 0.5) * force_mag for the 0/1 actions, as a lookup
    force = np.array([-env.force_mag, env.force_mag]).take(action)
    costheta = np.cos(theta)
    sintheta = np.sin(theta)
    temp = (force + env.polemass_length * np.square(theta_dot) * sintheta) / env.total_mass
    # [xacc, thetaacc] written into one array, for the velocities' update below
    acc = np.empty((2, state.shape[1]))
    thetaacc = np.divide(env.gravity * sintheta - costheta * temp, env.length * (
        4.0 / 3.0 - env.masspole * np.square(costheta) / env.total_mass), out=acc[1])
    np.subtract(temp, env.polemass_length * thetaacc * costheta / env.total_mass, out=acc[0])
    # Euler, as gymnasium: each new value from the old ones, x + tau x_dot and theta + tau
    # theta_dot first (they read the old velocities), then x_dot + tau xacc and theta_dot +
    # tau thetaacc, two rows per operation
    state[::2] += env.tau * state[1::2]
    acc *= env.tau
    state[1::2] += acc
    # |x| > x_threshold or |theta| > theta_threshold: gymnasium's four comparisons exactly
    # (abs and negation are exact; NaN compares false either way)
    limits = np.array([[env.x_threshold], [env.theta_threshold_radians]])
    terminated = (np.abs(state[::2]) > limits).any(axis=0)
    env.steps += 1
    truncated = env.steps >= env.max_episode_steps
    if env._sutton_barto_reward:
        reward = -np.array(terminated, dtype=np.float32)
    else:
        reward = np.ones(terminated.shape, np.float32)
    prev_done = env.prev_done
    if prev_done.any():
        state[:, prev_done] = env.np_random.uniform(low=env.low, high=env.high,
                                                    size=(4, prev_done.sum()))
        env.steps[prev_done] = 0
        reward[prev_done] = 0.0
        terminated[prev_done] = False
        truncated[prev_done] = False
    env.prev_done = terminated | truncated
    return state.T.astype(np.float32), reward, terminated, truncated
