"""The evaluator's CartPole episodes stepped on their live columns only, to the bit.

:func:`trpo_lab.evaluation.run_samplers` steps every row of every env copy until the last
episode of a run ends, and its policy call evaluates one copy of the stacked actor per (run,
copy). On CartPole (gymnasium's ``CartPoleVectorEnv``, Euler) :func:`run` gives the same
episodes for less:

- **Live columns only.** The columns whose episode ended are dropped from the state (in
  batches: when an eighth of them ended) instead of stepping on, reset, to the last one; the
  rows ``copy_rows`` and above of the copies after the first (the held-out rows of pi', which
  nobody reads) are never stepped.
- **One copy of each distinct actor.** Requests that share their actor objects (the adaptive
  rounds of pairs of one update) are one slice of the stacked actor, so the policy call is a
  few large matrix products instead of one per (round, copy).
- **The same numbers.** The physics is :func:`~trpo_lab.envs.cartpole_physics.vector_step` on
  the live columns (elementwise, so a column's numbers do not depend on its neighbours); the
  policy's noise is each request's own stream, drawn as the general loop draws it; the policy
  call is the stacked actor's, with every slice padded to a multiple of :data:`ROW_BLOCK` rows:
  OpenBLAS computes a row of a float32 product the same way wherever it sits in a block of
  that many rows (tests/test_cartpole_columns.py holds the episodes equal to the general
  loop's, and benchmarks/compare_metrics.py a whole run's metrics to another checkout's).

What comes back per request: the returns and lengths [copies, n] (0 for rows not stepped) and,
when recorded, copy 0's steps as [T, n] arrays (T its longest episode; entries after an
episode's end are finite filler: readers mask them with ``alive``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trpo_lab.envs.cartpole_physics import vector_step
from trpo_lab.policies import NumpyActor

ROW_BLOCK = 4  # slice rows are padded to a multiple of this (OpenBLAS's row block of sgemm)
COMPACT_FRACTION = 8  # drop ended columns once 1/8 of the columns have ended
#: the CartPoleVectorEnv attributes vector_step reads
CONSTANTS = ("force_mag", "polemass_length", "total_mass", "gravity", "length", "masspole",
             "tau", "x_threshold", "theta_threshold_radians", "max_episode_steps",
             "_sutton_barto_reward", "low", "high")


class LiveColumns:
    """What :func:`vector_step` reads and writes, for the live columns: the env's constants,
    the columns' state [4, L], step counters and done flags, and a generator of its own for
    the NEXT_STEP reset of columns that ended but are not dropped yet (their numbers are never
    read)."""

    def __init__(self, env, state: np.ndarray):
        for name in CONSTANTS:
            setattr(self, name, getattr(env, name))
        self.state = state
        self.steps = np.zeros(state.shape[1], np.int64)
        self.prev_done = np.zeros(state.shape[1], bool)
        self.np_random = np.random.default_rng(0)

    def keep(self, index: np.ndarray) -> None:
        self.state = self.state[:, index]
        self.steps = self.steps[index]
        self.prev_done = self.prev_done[index]


@dataclass
class Recorded:
    """Copy 0's steps of a recorded request, per step: rows, and their values."""

    rows: list
    raw: list
    x: list
    actions: list
    rewards: list
    terminated: list
    done: list
    next_raw: list


def segments(requests) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """The slices of the stacked actor and the columns in slice order: (actors of the slices,
    slot [L] = (r m + c) n + j of each column (run r, copy c, row j), the column's slice,
    its request). A slice is one distinct actor object's rows of one part: rows below
    ``copy_rows`` or, in copy 0, at or above it (so the held-out rows and the pairs' rows of
    pi are slices of equal size)."""
    n, m = requests[0].sampler.episodes, requests[0].sampler.copies
    keys, actors, members = [], [], []
    for r, request in enumerate(requests):
        split = n if request.copy_rows is None else min(n, request.copy_rows)
        for c, actor in enumerate(request.actors):
            parts = [(0, 0, split)] + ([(1, split, n)] if c == 0 and split < n else [])
            for part, lo, hi in parts:
                key = next((k for k, (a, p) in enumerate(keys) if a is actor and p == part),
                           None)
                if key is None:
                    key = len(keys)
                    keys.append((actor, part))
                    actors.append(actor)
                    members.append([])
                members[key].append((r, (r * m + c) * n + np.arange(lo, hi)))
    slots, slices, owners = [], [], []
    for s, member in enumerate(members):
        for r, slot in member:
            slots.append(slot)
            slices.append(np.full(slot.size, s))
            owners.append(np.full(slot.size, r))
    return actors, np.concatenate(slots), np.concatenate(slices), np.concatenate(owners)


def run(requests, noise_steps: int, max_steps: int) -> list[tuple]:
    """The episodes of ``requests`` (:class:`trpo_lab.evaluation.SamplerRequest`, CartPole:
    see :func:`trpo_lab.evaluation.cartpole_columns`), after each sampler's envs were reset
    with its seeds: per request (returns [m, n], lengths [m, n], recorded steps or None)."""
    R = len(requests)  # noqa: N806
    n, m = requests[0].sampler.episodes, requests[0].sampler.copies
    actors, slot, slice_of, owner = segments(requests)
    stacked = NumpyActor.stack([a.as_float32() for a in actors])
    S = len(actors)  # noqa: N806
    policy_rngs, states = [], []
    for request in requests:
        sampler = request.sampler
        seeds = np.random.SeedSequence([sampler.seed, *request.key]).generate_state(n)
        policy_rngs.append(np.random.default_rng([sampler.seed, *request.key, 1]))
        sampler.envs.reset(seeds)
        states.append(sampler.envs.envs.unwrapped.state)
    live = LiveColumns(requests[0].sampler.envs.envs.unwrapped,
                       np.concatenate(states, axis=1)[:, slot])
    gammas = np.array([request.sampler.gamma for request in requests])
    row = slot % n
    noise_index = owner * n + row  # the column's entry of one step's noise [R, n]
    discount = np.ones(slot.size)
    gamma_col = gammas[owner]
    returns_col = np.zeros(slot.size)
    lengths_col = np.zeros(slot.size, np.int64)
    active = np.ones(slot.size, bool)
    returns = np.zeros(R * m * n)
    lengths = np.zeros(R * m * n, np.int64)
    # encode over runs of consecutive columns with the same encoder (one call for a lone run)
    recording = [r for r, request in enumerate(requests) if request.record]
    records = {r: Recorded(*([] for _ in range(8))) for r in recording}
    raw = live.state.T.astype(np.float32)
    noise: np.ndarray | None = None
    layout: dict = {}

    def arrange() -> None:
        """Each column's place in the padded [S, rows] policy input, the encoder ranges and
        the recorded columns, for the columns as they are now."""
        counts = np.bincount(slice_of, minlength=S)
        rows = max(ROW_BLOCK, -(-int(counts.max()) // ROW_BLOCK) * ROW_BLOCK)
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        place = slice_of * rows + (np.arange(slice_of.size) - start[slice_of])
        ranges, lo = [], 0
        for hi in [*(np.flatnonzero(np.diff(owner)) + 1).tolist(), owner.size]:
            if hi == owner.size or requests[owner[hi]].encode != requests[owner[lo]].encode:
                ranges.append((lo, hi, requests[owner[lo]].encode))
                lo = hi
        copy0 = slot % (m * n) < n
        layout.update(rows=rows, place=place, ranges=ranges,
                      dense=bool(place.size == S * rows),
                      recorded={r: np.flatnonzero(copy0 & (owner == r)) for r in recording})

    arrange()
    x_in: np.ndarray | None = None
    noise_in = np.zeros(S * layout["rows"], np.float32)
    for t in range(max_steps):
        if t % noise_steps == 0:
            running = np.bincount(owner[active], minlength=R) > 0
            for r in np.flatnonzero(running):
                block = stacked.noise(policy_rngs[r], noise_steps * n)
                if noise is None:
                    noise = np.zeros((noise_steps, R * n, *block.shape[1:]), np.float32)
                noise[:, r * n:(r + 1) * n] = block.reshape(noise_steps, n, *block.shape[1:])
        place, rows = layout["place"], layout["rows"]
        for lo, hi, encode in layout["ranges"]:
            x = encode(raw[lo:hi])
            if x_in is None or x_in.shape[0] != S * rows:
                x_in = np.zeros((S * rows, x.shape[-1]), x.dtype)
            if layout["dense"]:
                x_in[lo:hi] = x
            else:
                x_in[place[lo:hi]] = x
        step_noise = noise[t % noise_steps].take(noise_index, axis=0)
        if layout["dense"]:
            noise_in = step_noise
        else:
            noise_in[place] = step_noise
        actions = stacked.sample_from_noise(x_in.reshape(S, rows, -1),
                                            noise_in.reshape(S, rows)).reshape(-1)
        if not layout["dense"]:
            actions = actions[place]
        x_step = x_in if layout["dense"] else None
        next_raw, reward32, terminated, _ = vector_step(live, actions)
        done = live.prev_done
        for r, columns in layout["recorded"].items():
            record = records[r]
            record.rows.append(row[columns])
            record.raw.append(raw[columns])
            record.x.append(x_step[columns] if x_step is not None else x_in[place[columns]])
            record.actions.append(actions[columns])
            record.rewards.append(reward32[columns].astype(np.float64))
            record.terminated.append(terminated[columns])
            record.done.append(done[columns])
            record.next_raw.append(next_raw[columns])
        returns_col += np.where(active, discount * reward32.astype(np.float64), 0.0)
        lengths_col += active
        active &= ~done
        discount *= gamma_col
        raw = next_raw
        ended = slot.size - int(np.count_nonzero(active))
        if ended and (ended * COMPACT_FRACTION >= slot.size or ended == slot.size):
            gone = ~active
            returns[slot[gone]] = returns_col[gone]
            lengths[slot[gone]] = lengths_col[gone]
            if ended == slot.size:
                break
            keep = np.flatnonzero(active)
            live.keep(keep)
            slot, slice_of, owner, row, noise_index = (
                a[keep] for a in (slot, slice_of, owner, row, noise_index))
            discount, gamma_col, returns_col, lengths_col = (
                a[keep] for a in (discount, gamma_col, returns_col, lengths_col))
            active, raw = active[keep], raw[keep]
            arrange()
            x_in = None
            noise_in = np.zeros(S * layout["rows"], np.float32)
    else:
        returns[slot] = returns_col
        lengths[slot] = lengths_col
    returns, lengths = returns.reshape(R, m, n), lengths.reshape(R, m, n)
    out = []
    for r in range(R):
        recorded = None
        if r in records:
            recorded = assemble(records[r], lengths[r, 0], n)
        out.append((returns[r], lengths[r], recorded))
    return out


def assemble(record: Recorded, lengths: np.ndarray, n: int) -> tuple:
    """Copy 0's recorded steps as [T, n] arrays (T the longest episode): raw observations,
    encoded observations, actions, rewards, terminated, done, alive, next raw observations."""
    T = int(lengths.max())  # noqa: N806
    fields = (record.raw, record.x, record.actions, record.rewards, record.terminated,
              record.done, record.next_raw)
    arrays = []
    for values in fields:
        first = values[0]
        full = np.zeros((T, n, *first.shape[1:]), first.dtype)
        for t in range(T):
            full[t, record.rows[t]] = values[t]
        arrays.append(full)
    raw, x, actions, rewards, terminated, done, next_raw = arrays
    alive = np.arange(T)[:, None] < lengths[None, :]
    return raw, x, actions, rewards, terminated, done, alive, next_raw
