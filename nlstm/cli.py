"""The ``nlstm`` command: ``demo``, ``train``, ``predict``, ``info``, ``bench`` and ``selfcheck``.

Every problem with an argument or a file ends the command with a one-line message on
stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

import numpy as np

EXIT_USAGE = 2


class UsageError(Exception):
    """A bad argument or file: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message):  # noqa: D102 - argparse's hook
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return v


def _threads(args) -> None:
    import nlstm

    if getattr(args, "threads", None):
        nlstm.set_num_threads(args.threads)


def _verbose() -> int:
    """A progress bar on a terminal, one line per epoch otherwise (logs stay readable)."""
    return 1 if sys.stderr.isatty() else 2


def _shown(path: str) -> str:
    """A path as the user would type it: relative when under the current directory."""
    rel = os.path.relpath(path)
    return path if rel.startswith(os.pardir) else rel


def _out_path(path: str, what: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"cannot write {what} {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"cannot write {what} {path}: it is a directory")
    return path


# ---- a Dask cluster for train / predict (--scheduler, --workers) ---------------------------
def _cluster_flags() -> argparse.ArgumentParser:
    c = argparse.ArgumentParser(add_help=False)
    g = c.add_mutually_exclusive_group()
    g.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="run on this Dask cluster (needs the 'dask' extra)")
    g.add_argument("--workers", type=_positive_int, metavar="N",
                   help="run on a local Dask cluster of N worker processes, started for the run")
    return c


class _Cluster:
    """``with _Cluster(args) as client``: a dask Client for --scheduler/--workers, else None."""

    def __init__(self, args):
        self.args, self.closing = args, []

    def __enter__(self):
        address, n = getattr(self.args, "scheduler", None), getattr(self.args, "workers", None)
        if address is None and n is None:
            return None
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise UsageError('--scheduler and --workers need Dask: pip install "nlstm[dask]"') from None
        try:
            if address is not None:
                client = Client(address, timeout="20s")
            else:
                cluster = LocalCluster(n_workers=n, processes=True, threads_per_worker=1,
                                       dashboard_address=None)
                self.closing.append(cluster)
                client = Client(cluster)
        except (OSError, TimeoutError) as e:
            self.__exit__()
            raise UsageError(f"cannot connect to the Dask scheduler {address}: {_one_line(e)}") from None
        self.closing.insert(0, client)
        return client

    def __exit__(self, *exc):
        for c in self.closing:
            c.close()
        self.closing = []


# ---- demo --------------------------------------------------------------------------------
def _demo_model(cls, hidden: int, seed: int, dtype=np.float32):
    import nlstm

    # Forget-gate bias +1 (Gers et al. 2000; Jozefowicz et al. 2015): the cell starts out
    # remembering, which shortens the plateau before the network finds the markers.
    extra = {"forget_bias": 1.0} if cls.__name__ == "LSTM" else {}
    rec = cls(2, hidden, batch_first=True, seed=seed, dtype=dtype, **extra)
    return nlstm.Sequential([rec, nlstm.Linear(hidden, 1, seed=seed + 1)], output="last", loss="mse")


def cmd_demo(args) -> int:
    import nlstm
    from nlstm.data import adding_problem

    if args.threads is None:
        # Measured on a 2-core machine: at this size (B=32, H=32) a training step is 2-3x
        # faster on one thread than split over two (the per-call hand-off costs more than
        # the rows save), and the other core stays free.
        args.threads = 1
    _threads(args)
    if args.quick:
        defaults = dict(T=20, train=3000, epochs=20, hidden=16, time_limit=20.0)
    else:
        defaults = dict(T=100, train=10000, epochs=40, hidden=32, time_limit=40.0)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    out_dir = os.path.abspath(args.out)
    if not os.path.isdir(out_dir):
        raise UsageError(f"--out {args.out}: no such directory")
    model_path = os.path.join(out_dir, "nlstm-demo.npz")
    png_path = os.path.join(out_dir, "nlstm-demo.png")
    n_val, n_test = max(200, args.train // 10), max(400, args.train // 5)
    t_start = time.perf_counter()
    X, Y = adding_problem(args.train, args.T, seed=args.seed)
    Xv, Yv = adding_problem(n_val, args.T, seed=args.seed + 1)
    Xt, Yt = adding_problem(n_test, args.T, seed=args.seed + 2)
    mean_mse = float(np.mean((Yt - Y.mean()) ** 2))
    print(f"nlstm {nlstm.__version__} demo: the adding problem (Hochreiter & Schmidhuber, 1997)")
    print(f"  each input is {args.T} random numbers, two of them marked; the target is the sum of "
          f"the marked two")
    print(f"  {args.train} training, {n_val} validation and {n_test} test sequences; "
          f"always predicting the mean scores MSE {mean_mse:.3f}")
    threads = nlstm.get_num_threads()
    print(f"  {threads} thread{'s' * (threads != 1)}; training stops at validation MSE <= "
          f"{args.stop_at:g}, after {args.epochs} epochs or after {args.time_limit:g} s")
    kinds = [nlstm.LSTM] + ([nlstm.RNN] if hasattr(nlstm, "RNN") else [])
    results = []
    epochs = args.epochs
    for cls in kinds:
        model = _demo_model(cls, args.hidden, args.seed)
        # The RNN's epochs are cheaper; a smaller budget keeps the whole demo near a minute.
        budget = args.time_limit if cls is nlstm.LSTM else max(1.0, args.time_limit * 0.375)
        t0 = time.perf_counter()

        def stop(epoch, logs, t0=t0, budget=budget):
            return logs["val_loss"] <= args.stop_at or time.perf_counter() - t0 > budget

        print(f"\n{model.layers[0]!r} + Linear({args.hidden}, 1): Adam lr {args.lr:g}, "
              f"batch {args.batch_size}, gradient norm clipped at 1", flush=True)
        hist = model.fit(X, Y, epochs=epochs, batch_size=args.batch_size, validation_data=(Xv, Yv),
                         seed=args.seed, lr=args.lr, clip_norm=1.0, verbose=_verbose(), callback=stop)
        seconds = time.perf_counter() - t0
        test = model.evaluate(Xt, Yt)
        results.append((cls.__name__, model, hist, test, seconds))
        if cls is nlstm.LSTM:
            # The plain RNN gets as many epochs as the LSTM used: the comparison is per
            # epoch of the same data, and the RNN's epochs are cheaper.
            epochs = len(hist["epoch"])
    print()
    for name, _, hist, test, seconds in results:
        n = len(hist["epoch"])
        if test <= 0.01:
            verdict = "solved"
        elif test >= 0.8 * mean_mse:
            verdict = "no better than predicting the mean"
        else:
            verdict = "partly learned"
        print(f"test MSE {name:>4}: {test:.4f}   {verdict} ({n} epoch{'s' * (n != 1)}, {seconds:.1f} s)")
    print(f"test MSE mean: {mean_mse:.4f}   (always predicting the mean of the training targets)")
    lstm = results[0]
    if lstm[3] > 0.01:
        print("the LSTM needs more training here: raise --epochs or --time-limit")
    model_path = lstm[1].save(model_path, metadata={"task": "adding", "T": args.T})
    print(f"saved the LSTM model to {_shown(model_path)}  (load it with nlstm.load)")
    if not args.no_plot:
        saved = _plot_curves(png_path, results, mean_mse, args.T)
        if saved:
            print(f"saved the learning curves to {_shown(png_path)}")
        else:
            print("no learning-curve plot: matplotlib is not installed (pip install 'nlstm[plots]')")
    print(f"total {time.perf_counter() - t_start:.1f} s")
    return 0


def _plot_curves(path: str, results, mean_mse: float, T: int) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    colors = {"LSTM": "tab:blue", "RNN": "tab:red", "GRU": "tab:green"}
    for name, _, hist, test, _ in results:
        c = colors.get(name, None)
        ax.plot(hist["epoch"], hist["loss"], "-", color=c, alpha=0.55, label=f"{name} training")
        ax.plot(hist["epoch"], hist["val_loss"], "o-", color=c, ms=3,
                label=f"{name} validation (test {test:.4f})")
    ax.axhline(mean_mse, color="gray", ls="--", lw=1, label=f"predict the mean ({mean_mse:.3f})")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE")
    ax.set_title(f"nlstm demo: the adding problem, T = {T}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return True


# ---- train / predict ---------------------------------------------------------------------
def _columns(text: Optional[str]) -> Optional[List[str]]:
    if text is None:
        return None
    cols = [c.strip() for c in text.split(",")]
    if not all(cols):
        raise UsageError(f"--features {text!r}: expected comma-separated column names")
    if len(set(cols)) != len(cols):
        raise UsageError(f"--features {text!r} names a column twice")
    return cols


def cmd_train(args) -> int:
    import nlstm
    from nlstm.data import read_csv, windows

    _threads(args)
    out = args.out or os.path.splitext(os.path.basename(args.csv))[0] + ".nlstm.npz"
    _out_path(out, "the model")  # fail before training, not after
    features = _columns(args.features) or [args.target]
    names, data = read_csv(args.csv, list(dict.fromkeys(features + [args.target])))
    X_all = data[:, [names.index(c) for c in features]]
    y_all = data[:, names.index(args.target)]
    N, W, K = len(data), args.window, args.horizon
    split = int(round(N * (1 - args.val)))
    if N < W + K + 1:
        raise UsageError(f"--window {W} and --horizon {K} need at least {W + K + 1} rows; "
                         f"{args.csv} has {N}")
    if split - W - K + 1 < 1 or N - split < K:
        raise UsageError(f"{args.csv} has {N} rows: too few for --window {W}, --horizon {K} and "
                         f"--val {args.val:g} (training needs {W + K} rows, validation {K})")
    # Standardize with statistics of the training part only, so validation stays unseen.
    x_mean, x_std = X_all[:split].mean(axis=0), X_all[:split].std(axis=0)
    y_mean, y_std = float(y_all[:split].mean()), float(y_all[:split].std())
    x_std[x_std == 0] = 1.0
    y_std = y_std or 1.0
    Xs, ys = (X_all - x_mean) / x_std, (y_all - y_mean) / y_std
    X_tr, Y_tr = windows(Xs[:split], W, ys[:split], K)
    # Validation windows: targets all after the split; inputs may reach back into training rows.
    X_va, Y_va = windows(Xs[split - W:], W, ys[split - W:], K)
    print(f"{args.csv}: {N} rows; features {', '.join(features)}; target {args.target}")
    print(f"  windows of {W} steps -> next {K} value(s); {len(X_tr)} training windows "
          f"(rows 0-{split - 1}), {len(X_va)} validation windows (targets in rows {split}-{N - 1})")
    rec = nlstm.LSTM(len(features), args.hidden, num_layers=args.layers, batch_first=True,
                     seed=args.seed, dropout=args.dropout if args.layers > 1 else 0.0)
    model = nlstm.Sequential([rec, nlstm.Linear(args.hidden, K, seed=args.seed + 1)],
                             output="last", loss="mse")
    with _Cluster(args) as client:
        fit = model.fit
        if client is not None:
            import functools

            import nlstm.dask

            fit = functools.partial(nlstm.dask.fit, client, model)
        hist = fit(X_tr, Y_tr, epochs=args.epochs, batch_size=args.batch_size,
                   validation_data=(X_va, Y_va), seed=args.seed, lr=args.lr, clip_norm=1.0,
                   early_stopping=args.patience, verbose=_verbose())
    pred = model.predict(X_va) * y_std + y_mean
    truth = Y_va * y_std + y_mean
    # The naive forecast: the last observed target value, for every step ahead.
    last = y_all[split - 1: split - 1 + len(X_va)][:, None]
    rmse = lambda a: float(np.sqrt(np.mean((a - truth) ** 2)))
    mae = lambda a: float(np.mean(np.abs(a - truth)))
    m_rmse, b_rmse, m_mae, b_mae = rmse(pred), rmse(last), mae(pred), mae(last)
    print(f"validation ({len(X_va)} windows, {args.target} units):")
    print(f"  LSTM        RMSE {m_rmse:.6g}  MAE {m_mae:.6g}")
    print(f"  last value  RMSE {b_rmse:.6g}  MAE {b_mae:.6g}")
    if b_rmse > 0:
        better = "better" if m_rmse < b_rmse else "worse"
        print(f"  the LSTM is {better} than the last-value baseline ({m_rmse / b_rmse:.2f}x its RMSE)")
    meta = {"task": "forecast", "features": features, "target": args.target, "window": W,
            "horizon": K, "x_mean": x_mean.tolist(), "x_std": x_std.tolist(), "y_mean": y_mean,
            "y_std": y_std, "val_rmse": m_rmse, "baseline_rmse": b_rmse,
            "epochs": len(hist["epoch"]), "source": os.path.basename(args.csv)}
    path = model.save(out, metadata=meta)
    print(f"saved the model and its standardization statistics to {path}")
    return 0


def cmd_predict(args) -> int:
    import nlstm
    from nlstm.data import read_csv, windows

    _threads(args)
    _out_path(args.out, "predictions")
    model = nlstm.load(args.model)
    meta = getattr(model, "metadata", None) or {}
    if meta.get("task") != "forecast":
        raise UsageError(f"{args.model} is not a forecaster made by 'nlstm train' "
                         f"(no CSV feature metadata)")
    try:
        features, target = list(meta["features"]), str(meta["target"])
        W, K = int(meta["window"]), int(meta["horizon"])
        x_mean, x_std = np.asarray(meta["x_mean"], float), np.asarray(meta["x_std"], float)
        y_mean, y_std = float(meta["y_mean"]), float(meta["y_std"])
        if x_mean.shape != (len(features),) or x_std.shape != (len(features),):
            raise ValueError("statistics do not match the features")
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{args.model}: bad forecaster metadata ({e})") from None
    names, data = read_csv(args.csv, features)
    if len(data) < W:
        raise UsageError(f"{args.csv} has {len(data)} rows; the model's window needs {W}")
    X, _ = windows((data - x_mean) / x_std, W)
    with _Cluster(args) as client:
        if client is None:
            pred = model.predict(X)
        else:
            import nlstm.dask

            pred = client.compute(nlstm.dask.predict(client, model, X)).result()
    pred = pred * y_std + y_mean
    header = ["row"] + [f"{target}+{k}" for k in range(1, K + 1)]
    # Each row of output: the index (0-based, data rows) of a window's last row, then the
    # forecasts of the next K values after it.
    directory = os.path.dirname(os.path.abspath(args.out))
    fd, tmp = tempfile.mkstemp(prefix=".nlstm-predict.", suffix=".csv", dir=directory)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(",".join(header) + "\n")
            for i, row in enumerate(pred):
                f.write(",".join([str(i + W - 1)] + [repr(float(v)) for v in row]) + "\n")
        os.replace(tmp, args.out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    print(f"wrote {len(pred)} forecasts of the next {K} {target} value(s) to {args.out}")
    return 0


# ---- info / bench / selfcheck -------------------------------------------------------------
def _dist_version(name: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cmd_info(args) -> int:
    import numba

    import nlstm

    print(f"nlstm {nlstm.__version__} ({os.path.dirname(os.path.abspath(nlstm.__file__))})")
    print(f"python {platform.python_version()} ({platform.python_implementation()}, {sys.executable})")
    for name in ("numpy", "numba", "llvmlite", "scipy", "tqdm", "matplotlib", "torch", "onnxruntime", "onnx"):
        v = _dist_version(name)
        print(f"  {name:<12} {v if v else '-'}")
    print(f"platform {platform.platform()}, {os.cpu_count()} logical CPUs")
    try:
        import llvmlite.binding as llvm

        feats = llvm.get_host_cpu_features()
        shown = [f for f in ("sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                             "avx512bf16", "neon", "sve") if feats.get(f, False)]
        print(f"cpu {llvm.get_host_cpu_name()}: {' '.join(shown) if shown else 'no vector features found'}")
    except Exception as e:  # informational only
        print(f"cpu: unknown ({e})")
    print(f"threads: nlstm {nlstm.get_num_threads()}, numba max {numba.config.NUMBA_NUM_THREADS}")
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not started (nlstm's kernels run on its own thread pool)"
    print(f"numba threading layer: {layer} (requested: {numba.config.THREADING_LAYER})")
    print(f"kernel cache: {_cache_dir()}")
    return 0


def _cache_dir() -> str:
    from nlstm.kernels.config import cache_dir

    return f"{cache_dir()} (NLSTM_CACHE_DIR overrides)"


def cmd_bench(args) -> int:
    have_bench = os.path.isfile(os.path.join(os.getcwd(), "bench", "compare.py"))
    peers = [m for m in ("torch", "onnxruntime") if importlib.util.find_spec(m) is not None]
    if have_bench and peers and not args.own:
        print(f"running python -m bench.compare in {os.getcwd()} (peers: {', '.join(peers)})", flush=True)
        return subprocess.call([sys.executable, "-m", "bench.compare", *args.rest], cwd=os.getcwd())
    if args.rest:
        raise UsageError(f"extra arguments {args.rest} are for bench.compare, which is not used here")
    why = "--own" if args.own else ("no bench/compare.py in the current directory" if not have_bench
                                    else "no peers installed (pip install 'nlstm[peers]')")
    print(f"nlstm's own timings ({why}):")
    return _own_bench(args)


def _own_bench(args) -> int:
    import nlstm

    _threads(args)
    cases = [("S", 100, 1, 32, 64), ("M", 100, 16, 64, 128), ("L", 50, 64, 256, 256)]
    rng = np.random.default_rng(0)
    print(f"  float32, {nlstm.get_num_threads()} threads, median of {args.repeat} runs after a warm-up")
    print(f"  {'case':<5}{'T':>5}{'B':>5}{'I':>5}{'H':>5}{'forward ms':>13}{'fwd+bwd ms':>13}")
    for name, T, B, I, H in cases:
        m = nlstm.LSTM(I, H, seed=0)
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        dy = np.ones((T, B, H), np.float32)

        def fwd():
            m(x)

        def train():
            m.forward(x)
            m.backward(dy)

        row = []
        for fn in (fwd, train):
            fn()
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            row.append(float(np.median(times)) * 1e3)
        print(f"  {name:<5}{T:>5}{B:>5}{I:>5}{H:>5}{row[0]:>13.3f}{row[1]:>13.3f}", flush=True)
    return 0


def selfcheck() -> int:
    """A forward and backward pass on random data, compared with a float64 run of the same layer."""
    import nlstm

    T, B, I, H, L = 50, 8, 16, 32, 2
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = rng.integers(1, T + 1, B)
    dy = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    m32 = nlstm.LSTM(I, H, num_layers=L, bidirectional=True, seed=0)
    m64 = nlstm.LSTM(I, H, num_layers=L, bidirectional=True, dtype=np.float64)
    m64.load_state_dict(m32.state_dict())

    t0 = time.perf_counter()
    m32.forward(x, lengths=lengths)
    m32.backward(dy)
    first = time.perf_counter() - t0
    m32.zero_grad()
    t0 = time.perf_counter()
    y, (h, c) = m32.forward(x, lengths=lengths)
    dx, (dh0, dc0) = m32.backward(dy)
    warm = time.perf_counter() - t0
    y64, _ = m64.forward(x, lengths=lengths)
    dx64, _ = m64.backward(dy)

    print(f"nlstm {nlstm.__version__}: {m32!r}, T={T} B={B}, {nlstm.get_num_threads()} threads")
    print(f"  y {y.shape}  h_n {h.shape}  c_n {c.shape}  dx {dx.shape}  dh0 {dh0.shape}")
    print(f"  forward+backward: first call {first * 1e3:.1f} ms (includes compile or cache load), "
          f"then {warm * 1e3:.2f} ms")
    worst = 0.0
    rows = [("y", y, y64), ("dx", dx, dx64)] + [(k, m32.grads[k], m64.grads[k]) for k in m32.grads]
    for name, a, b in rows:
        worst = max(worst, float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30)))
    ok = worst < 1e-4
    print(f"  float32 vs float64: largest relative difference over y, dx and {len(m32.grads)} "
          f"parameter gradients = {worst:.2e} -> {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def cmd_selfcheck(args) -> int:
    _threads(args)
    return selfcheck()


# ---- entry point -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=_positive_int, metavar="N",
                        help="threads for nlstm's kernels and BLAS (default: all cores)")
    p = _Parser(prog="nlstm", description="Numba-accelerated LSTMs for CPUs.",
                epilog="Run 'nlstm demo' to see an LSTM learn a long-range dependency.")
    p.add_argument("--version", action="version", version=f"nlstm {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("demo", parents=[common], help="train an LSTM on the adding problem (no data needed)",
                       description="Train an LSTM (and a plain RNN beside it) on the adding problem "
                                   "and report the test MSE. Needs no data and no flags. Runs on "
                                   "one thread (fastest at this size) unless --threads is given.")
    d.add_argument("--quick", action="store_true",
                   help="a reduced budget for a fast check (T=20, 3000 sequences, at most 20 epochs)")
    d.add_argument("--T", type=_positive_int, metavar="STEPS", help="sequence length (default 100)")
    d.add_argument("--train", type=_positive_int, metavar="N", help="training sequences (default 10000)")
    d.add_argument("--epochs", type=_positive_int, help="at most this many epochs (default 40)")
    d.add_argument("--time-limit", type=_positive_float, metavar="SECONDS",
                   help="stop the LSTM's training after this long (default 40; the RNN gets 3/8 of it)")
    d.add_argument("--stop-at", type=_positive_float, default=0.002, metavar="MSE",
                   help="stop when the validation MSE reaches this (default 0.002)")
    d.add_argument("--hidden", type=_positive_int, help="hidden units (default 32)")
    d.add_argument("--batch-size", type=_positive_int, default=32)
    d.add_argument("--lr", type=_positive_float, default=0.01, help="Adam learning rate (default 0.01)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default=".", metavar="DIR",
                   help="directory for nlstm-demo.npz and nlstm-demo.png (default: current)")
    d.add_argument("--no-plot", action="store_true", help="don't write the learning-curve PNG")
    d.set_defaults(func=cmd_demo)

    cluster = _cluster_flags()
    t = sub.add_parser("train", parents=[common, cluster], help="train a forecaster on a CSV time series",
                       description="Train an LSTM to forecast the next HORIZON values of a column "
                                   "from windows of WINDOW rows. The split is chronological; "
                                   "standardization uses the training part only and is saved "
                                   "in the model file.")
    t.add_argument("--csv", required=True, metavar="FILE", help="CSV with a header row, oldest row first")
    t.add_argument("--target", required=True, metavar="COL", help="the column to forecast")
    t.add_argument("--features", metavar="COLS", help="comma-separated input columns (default: the target alone)")
    t.add_argument("--window", type=_positive_int, required=True, metavar="W", help="input steps")
    t.add_argument("--horizon", type=_positive_int, default=1, metavar="K",
                   help="forecast the next K values (default 1)")
    t.add_argument("--val", type=_fraction, default=0.2, metavar="FRACTION",
                   help="the last FRACTION of rows is for validation (default 0.2)")
    t.add_argument("--hidden", type=_positive_int, default=32)
    t.add_argument("--layers", type=_positive_int, default=1)
    t.add_argument("--dropout", type=float, default=0.0, help="between stacked layers (default 0)")
    t.add_argument("--epochs", type=_positive_int, default=50)
    t.add_argument("--batch-size", type=_positive_int, default=32)
    t.add_argument("--lr", type=_positive_float, default=3e-3)
    t.add_argument("--patience", type=_positive_int, default=10,
                   help="stop after this many epochs without a better validation loss")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", metavar="FILE", help="model file (default: <csv name>.nlstm.npz)")
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", parents=[common, cluster], help="forecast with a model from 'nlstm train'",
                        description="Write a CSV with, for every window of the input CSV, the index "
                                    "of its last row (0-based, data rows) and the next K forecasts.")
    pr.add_argument("--model", required=True, metavar="FILE")
    pr.add_argument("--csv", required=True, metavar="FILE")
    pr.add_argument("--out", required=True, metavar="FILE")
    pr.set_defaults(func=cmd_predict)

    i = sub.add_parser("info", help="versions, CPU features, threads, Numba cache")
    i.set_defaults(func=cmd_info)

    b = sub.add_parser("bench", parents=[common], help="run the benchmark comparison (or nlstm's own timings)",
                       description="Run 'python -m bench.compare' when ./bench is present and a peer "
                                   "(torch, onnxruntime) is installed; otherwise time nlstm alone. "
                                   "Arguments after '--' go to bench.compare.")
    b.add_argument("--own", action="store_true", help="time nlstm alone")
    b.add_argument("--repeat", type=_positive_int, default=20)
    b.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    b.set_defaults(func=cmd_bench)

    s = sub.add_parser("selfcheck", parents=[common],
                       help="a forward and backward pass checked against float64 (the default)")
    s.set_defaults(func=cmd_selfcheck)
    return p


def _version() -> str:
    from nlstm import __version__

    return __version__


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 check failed, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "rest", None) and args.rest[0] == "--":
            args.rest = args.rest[1:]
        if args.command is None:
            return selfcheck()
        return args.func(args)
    except UsageError as e:
        print(f"nlstm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as e:
        # Bad files and values surface here as ValueError (incl. nlstm.data.DataError and
        # invalid model files) or OSError (missing, unreadable, unwritable files).
        print(f"nlstm: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nlstm: interrupted", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        text = f"cannot open {e.filename}: {e.strerror or type(e).__name__}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
