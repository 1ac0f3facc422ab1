"""Scaling of ``nlstm.dask``: sequences per second for predict and fit on 1 and 2 workers
against one process, the overhead of each training step (the gradient exchange) and the
bytes it moves.

    python -m bench.dask_scaling            # a local cluster of 2 worker processes
    python -m bench.dask_scaling --quick    # tiny sizes: checks that it runs, numbers mean little
    python -m bench.dask_scaling --scheduler tcp://HOST:8786   # a running (multi-machine) cluster

Every engine runs with one nlstm thread per process (the workers' are set for the run),
so "one process" is the single-worker baseline and the efficiency is
speed-up / workers. Each timed configuration is checked first (predict equal to one
process, fit's weights equal to Sequential.fit's) and warmed up (Numba compiles or loads its
kernels in every worker), then timed ``--repeat`` times; the median is reported.
On one 2-core machine the speed-up is at most 2x; the other processes on the machine are
part of what is measured, so run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def _model(F: int, H: int, seed: int = 0):
    import nlstm

    return nlstm.Sequential([nlstm.LSTM(F, H, batch_first=True, seed=seed),
                             nlstm.Linear(H, 1, seed=seed + 1)])


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(client, N: int, T: int, F: int, H: int, batch_size: int, repeat: int, out=sys.stdout):
    import dask.array as da

    import nlstm
    import nlstm.dask as nd

    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, T, F), dtype=np.float32)
    Y = rng.standard_normal((N, 1), dtype=np.float32)
    workers = sorted(client.scheduler_info()["workers"])
    if len(workers) < 2:
        raise SystemExit(f"the cluster has {len(workers)} worker(s); this benchmark needs 2")
    client.run(nlstm.set_num_threads, 1)
    threads_before = nlstm.get_num_threads()
    nlstm.set_num_threads(1)
    try:
        model = _model(F, H)
        fit_kw = dict(epochs=1, batch_size=batch_size, seed=0, verbose=0, lr=1e-3)

        # One process.
        want = model.predict(X, batch_size=batch_size)
        t_pred1 = _median_time(lambda: model.predict(X, batch_size=batch_size), repeat)
        ref = _model(F, H)
        ref.fit(X, Y, **fit_kw)  # warm-up and the weights to check against
        t_fit1 = _median_time(lambda: _model(F, H).fit(X, Y, **fit_kw), repeat)
        steps = -(-N // batch_size)
        rows = [("one process", 1, N / t_pred1, N / t_fit1, float("nan"), 0)]

        for k in (1, 2):
            ws = workers[:k]
            Xd = da.from_array(X, chunks=(-(-N // k), -1, -1))  # one chunk per worker
            Xd, Yd = client.persist([Xd, da.from_array(Y, chunks=(Xd.chunks[0], -1))], workers=ws)

            def predict():
                return client.compute(nd.predict(client, model, Xd, batch_size=batch_size),
                                      workers=ws).result()

            np.testing.assert_allclose(predict(), want, rtol=1e-5, atol=1e-6,
                                       err_msg=f"predict on {k} workers")
            t_pred = _median_time(predict, repeat)

            m = _model(F, H)
            nd.fit(client, m, Xd, Yd, workers=ws, **fit_kw)  # warm-up and check
            for name in ref.params:
                np.testing.assert_allclose(m.params[name], ref.params[name], rtol=2e-4, atol=2e-5,
                                           err_msg=f"fit on {k} workers: {name}")
            stats = {}
            fit_times, overheads = [], []
            for _ in range(repeat):
                stats.clear()
                t0 = time.perf_counter()
                nd.fit(client, _model(F, H), Xd, Yd, workers=ws, stats=stats, **fit_kw)
                fit_times.append(time.perf_counter() - t0)
                overheads.append((stats["seconds"] - stats["compute_seconds"]) / stats["steps"])
            t_fit = statistics.median(fit_times)
            rows.append((f"nlstm.dask, {k} worker{'s' if k > 1 else ''}", k, N / t_pred, N / t_fit,
                         statistics.median(overheads), stats["bytes_per_step"]))
            client.cancel([Xd, Yd])
    finally:
        nlstm.set_num_threads(threads_before)

    base_pred, base_fit = rows[0][2], rows[0][3]
    print(f"\nnlstm.dask scaling: LSTM({F}, {H}) + Linear({H}, 1), N={N}, T={T}, batch {batch_size} "
          f"({steps} steps per epoch), 1 nlstm thread per process, median of {repeat}", file=out)
    print("| engine | workers | predict seq/s | speed-up | efficiency | fit seq/s | speed-up | "
          "efficiency | overhead per step (ms) | bytes per step |", file=out)
    print("|---|---|---|---|---|---|---|---|---|---|", file=out)
    for name, k, p, f, ovh, nbytes in rows:
        sp, sf = p / base_pred, f / base_fit
        ovh_text = "-" if np.isnan(ovh) else f"{ovh * 1e3:.2f}"
        print(f"| {name} | {k} | {p:,.0f} | {sp:.2f}x | {sp / k:.0%} | {f:,.0f} | {sf:.2f}x | "
              f"{sf / k:.0%} | {ovh_text} | {nbytes:,} |", file=out)
    print("overhead per step: the step's time on the client minus the slowest worker's gradient "
          "time (sending weights, gathering and summing gradients, the update, scheduling); "
          "bytes per step: weights out plus gradients back, all workers.", file=out)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dask_scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: checks that it runs")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="a running cluster with at least 2 workers (default: a local one of 2)")
    p.add_argument("--N", type=int, default=8192, help="sequences (default 8192)")
    p.add_argument("--T", type=int, default=50, help="steps per sequence (default 50)")
    p.add_argument("--F", type=int, default=16, help="input features (default 16)")
    p.add_argument("--H", type=int, default=64, help="hidden units (default 64)")
    p.add_argument("--batch-size", type=int, default=512, help="global batch (default 512)")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    if args.quick:
        args.N, args.T, args.F, args.H, args.batch_size, args.repeat = 256, 10, 4, 8, 64, 1

    from distributed import Client, LocalCluster

    if args.scheduler:
        with Client(args.scheduler) as client:
            run(client, args.N, args.T, args.F, args.H, args.batch_size, args.repeat)
    else:
        with LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            run(client, args.N, args.T, args.F, args.H, args.batch_size, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
