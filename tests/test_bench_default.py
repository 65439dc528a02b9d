"""benchmarks/bench_default.py's pure figures: the first solved update, and the truth
measurement's resolution over all updates, before the run solves, and without the updates whose
paired episodes all coincide."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_default.py"
SPEC = importlib.util.spec_from_file_location("bench_default", PATH)
bench = importlib.util.module_from_spec(SPEC)
sys.modules["bench_default"] = bench
SPEC.loader.exec_module(bench)


def test_first_solved_is_the_first_trailing_median_of_five_at_475():
    # trailing medians from update 4: med(10,20,480,490,500)=480 -> update 4 solves
    assert bench.first_solved([10, 20, 480, 490, 500, 500]) == 4
    # medians at updates 4, 5, 6: 474, 474, 475 -> update 6 (>= 475, not > 475)
    assert bench.first_solved([0, 0, 474, 500, 500, 474, 475]) == 6
    # fewer than 5 updates never solve, however high
    assert bench.first_solved([500, 500, 500, 500]) is None
    # a NaN inside the window: that window does not count; the next one without it does
    assert bench.first_solved([math.nan, 500, 500, 500, 500, 500]) == 5
    assert bench.first_solved([100.0] * 49) is None


def test_first_solved_agrees_with_final_return_of_the_truncated_run():
    returns = [20, 60, 150, 300, 470, 480, 476, 474, 490, 500, 300, 500]
    t = bench.first_solved(returns)
    # trailing medians at updates 4-8: 150, 300, 470, 474, 476: update 8 is the first
    assert t == 8
    assert bench.final_return(returns[:t + 1]) >= bench.SOLVED
    assert all(bench.final_return(returns[:k + 1]) < bench.SOLVED for k in range(t))


def test_truth_ratio_resolution_row_and_equal_pairs():
    dj = [2.0, -1.0, 0.0, math.nan, 3.0, 0.0]
    se = [1.0, 1.0, 0.0, 1.0, math.nan, 0.5]
    z, resolved, rows, equal = bench.truth(dj, se)
    assert z == [2.0, 1.0, 0.0, 0.0]
    assert resolved == [True, False, False, False]  # 2 > 1.96, 1 < 1.96, 0 = 0, 0 < 0.98
    assert rows == [0, 1, 2, 5]  # rows 3 and 4 were not evaluated (a NaN)
    assert equal == [False, False, True, False]  # only dJ = SE = 0 is "all pairs equal"


def run_of(seed: int, returns: list[float], dj: list[float], se: list[float]):
    run = bench.Run("v", seed, Path("."), ())
    run.solved_at = bench.first_solved(returns)
    run.z, run.resolved, run.rows, run.equal = bench.truth(dj, se)
    return run


def test_resolution_all_before_solved_and_without_equal_pairs():
    # run a: solves at update 5; updates 0-4 resolved 4 of 5 (z 3,3,3,3,1), 5-7 all pairs equal
    a = run_of(0, [0, 0, 0, 480, 480, 480, 500, 500],
               [3, 3, 3, 3, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0])
    assert a.solved_at == 5
    # run b: never solves; 4 updates, 2 resolved (z 4, 2.5; then 1, 0.5)
    b = run_of(1, [10, 20, 30, 40], [4, 2.5, 1, 0.5], [1, 1, 1, 1])
    assert b.solved_at is None
    frac, median, n = bench.resolution([a, b])
    assert n == 12 and frac == pytest.approx(6 / 12)
    # z pooled: 3,3,3,3,1,0,0,0,4,2.5,1,0.5 -> sorted 0,0,0,0.5,1,1,2.5,3,3,3,3,4: median 1.75
    assert median == pytest.approx(1.75)
    frac, median, n = bench.resolution([a, b], before_solved=True)
    assert n == 9 and frac == pytest.approx(6 / 9)  # a's 0-4 and all of b
    assert median == pytest.approx(3.0)  # 0.5, 1, 1, 2.5, 3 (the 5th of 9), 3, 3, 3, 4
    frac, median, n = bench.resolution([a, b], skip_equal=True)
    assert n == 9 and frac == pytest.approx(6 / 9)
    assert bench.resolution([], before_solved=True)[2] == 0
    assert math.isnan(bench.resolution([])[0])
