"""nlstm alone on issue 3's grid, with pytest-benchmark: inference, training, streaming step.

Each benchmark first checks nlstm against the float64 NumPy reference on the same problem
(a wrong result fails the benchmark instead of timing it), then warms up so compilation
is outside the timing.
"""
import time

import pytest

from bench import check
from bench.engines import ENGINES
from bench.grid import GRID, flops, make_problem

PAIRS = [(c, m) for c in GRID for m in GRID[c].modes()]


@pytest.mark.parametrize("case,mode", PAIRS, ids=[f"{c}-{m}" for c, m in PAIRS])
def test_nlstm(benchmark, case, mode, bench_threads):
    problem = make_problem(GRID[case])
    runner = ENGINES["nlstm"].prepare(problem, mode)
    verdicts, _ = check.check_engines(problem, mode, {"nlstm": runner})
    assert verdicts["nlstm"].ok, verdicts["nlstm"].summary()
    t0 = time.perf_counter()
    runner()
    one = max(time.perf_counter() - t0, 1e-7)
    # about a second per benchmark; very short calls are batched per round
    iterations = max(1, int(1e-3 / one))
    rounds = max(5, min(500, int(1.0 / (one * iterations))))
    benchmark.extra_info.update(case=case, mode=mode, describe=GRID[case].describe(),
                                threads=bench_threads, flops=flops(GRID[case], mode, problem.lengths))
    benchmark.pedantic(runner, rounds=rounds, iterations=iterations, warmup_rounds=2)
