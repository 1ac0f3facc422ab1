"""The ``nlstm`` command: ``demo``, ``train``, ``predict``, ``inspect``, ``info``, ``bench`` and
``selfcheck``.

Every problem with an argument or a file ends the command with a one-line message on
stderr and exit code 2, never a traceback: main() turns every exception into one line
(a bug-report line for unexpected ones; ``--debug`` shows the traceback), so a new
subcommand gets this for free. No command writes over one of its input files, and sizes
are checked against the memory available before anything large is allocated.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import time
import traceback
from typing import List, Optional

import numpy as np

EXIT_USAGE = 2


class UsageError(Exception):
    """A bad argument or file: reported as one line, exit code 2."""


class _Help(argparse.HelpFormatter):
    """Shows every option's default unless its help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and action.default is not None and action.default is not False \
                and action.default is not argparse.SUPPRESS and action.option_strings:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump), exit code 2, and defaults in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

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


def _probability(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return v


# ``nlstm train --cell``: the recurrent layer class of each choice
_CELLS = {"lstm": "LSTM", "layernorm-lstm": "LayerNormLSTM", "gru": "GRU"}


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


def _out_path(path: str, what: str, inputs=()) -> str:
    """Check that ``path`` can be written, and that it is none of ``inputs`` ((option,
    path) pairs): a command never overwrites its own input."""
    if not path:
        raise UsageError(f"cannot write {what}: the path is empty")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"cannot write {what} {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"cannot write {what} {path}: it is a directory")
    for option, given in inputs:
        if _same_file(path, given):
            raise UsageError(f"refusing to write {what} to {path}: it is the input file {option} "
                             f"{given}; choose another --out")
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


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would be
        return os.path.realpath(a) == os.path.realpath(b)


def _available_memory() -> Optional[int]:
    """Bytes of memory this process could still get (Linux MemAvailable, else physical)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 2 ** 30:.1f} GB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MB"


def _check_memory(need: float, what: str) -> None:
    """One line and exit 2 when ``need`` bytes (an estimate) exceed what is available."""
    have = _available_memory()
    if have is not None and need > have:
        raise UsageError(f"{what} would need about {_gb(need)} of memory; {_gb(have)} is available")


def _lstm_bytes(features: int, hidden: int, layers: int, outputs: int, batch: int, steps: int,
                training: bool = True) -> float:
    """An estimate of the memory an LSTM + Linear model needs in float32: its weights (with
    gradients, Adam's two moments and early stopping's best copy when training) and its
    per-batch workspace (gates, states and their gradients for every step)."""
    params = 4 * hidden * (features + hidden + 2) + (layers - 1) * 4 * hidden * (2 * hidden + 2) \
        + hidden * outputs + outputs
    work = layers * steps * batch * hidden * (6 + 6 * training)
    return 4.0 * (params * (5 if training else 1) + work)


def _diverged(e: FloatingPointError, lr: float) -> "UsageError":
    return UsageError(f"training diverged: the loss became NaN or Inf at --lr {lr:g} "
                      f"(gradients are already clipped); try a lower --lr")


def _compile_first(model, X, Y, batch_size: int, val) -> None:
    """Compile (or load from the cache) every kernel ``fit`` will use before its progress
    bar starts, so that the compile notice comes first and the bar's estimates exclude
    compilation: one epoch of a copy of the model on a full batch and the last, partial
    one, and a validation pass."""
    import nlstm
    from nlstm._warmup import compile_mark, compiled_since

    start, mark = time.perf_counter(), compile_mark()
    copy = nlstm.Sequential.from_config(model.get_config())
    n = min(len(X), batch_size + len(X) % batch_size)
    m = min(len(val[0]), max(batch_size, 256))
    copy.fit(X[:n], Y[:n], epochs=1, batch_size=batch_size, validation_data=(val[0][:m], val[1][:m]),
             shuffle=False, clip_norm=1.0, verbose=0)
    done = compiled_since(mark)
    if done:
        print(f"nlstm: compiled {len(done)} kernel{'s' * (len(done) != 1)} in "
              f"{time.perf_counter() - start:.1f} s; later runs load them from the cache",
              file=sys.stderr, flush=True)


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
    _check_memory(4.0 * 3 * (args.train + n_val + n_test) * args.T
                  + 2 * _lstm_bytes(2, args.hidden, 1, 1, args.batch_size, args.T),
                  f"the demo with --train {args.train}, --T {args.T} and --hidden {args.hidden}")
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
        why = []  # why stop() ended training, if it did

        def stop(epoch, logs, t0, budget=budget):
            if logs["val_loss"] <= args.stop_at:
                why.append(f"the validation MSE reached --stop-at {args.stop_at:g}")
            elif time.perf_counter() - t0 > budget:
                why.append(f"the time limit ({budget:g} s{'' if cls is nlstm.LSTM else ', 3/8 of --time-limit'})")
            return bool(why)

        print(f"\n{model.layers[0]!r} + Linear({args.hidden}, 1): Adam lr {args.lr:g}, "
              f"batch {args.batch_size}, gradient norm clipped at 1", flush=True)
        _compile_first(model, X, Y, args.batch_size, (Xv, Yv))
        t0 = time.perf_counter()  # the budget is for training, not for compiling
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # a divergence is reported below
                hist = model.fit(X, Y, epochs=epochs, batch_size=args.batch_size,
                                 validation_data=(Xv, Yv), seed=args.seed, lr=args.lr, clip_norm=1.0,
                                 verbose=_verbose(), callback=lambda epoch, logs: stop(epoch, logs, t0))
        except FloatingPointError as e:
            raise _diverged(e, args.lr) from None
        seconds = time.perf_counter() - t0
        n = len(hist["epoch"])
        print(f"{cls.__name__} stopped after {n} epoch{'s' * (n != 1)}: "
              f"{why[0] if why else f'the epoch limit ({epochs})'}")
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
    flows = _gradient_flow(results, Xt[:256])
    if not args.no_plot:
        saved = _plot_curves(png_path, results, mean_mse, args.T)
        if saved:
            print(f"saved the learning curves to {_shown(png_path)}")
            flow_path = os.path.join(out_dir, "nlstm-demo-gradients.png")
            _plot_gradient_flow(flow_path, flows, args.T)
            print(f"saved the gradient reaching each input step to {_shown(flow_path)}")
        else:
            print("no learning-curve plot: matplotlib is not installed (pip install 'nlstm[plots]')")
    print(f"total {time.perf_counter() - t_start:.1f} s")
    return 0


def _gradient_flow(results, X) -> list:
    """[(name, (T,) norm of d prediction / d x_t averaged over X's rows)] for every trained
    model, from nlstm.inspect; prints the ratio of step 1's to step T's."""
    import nlstm

    print(f"gradient of the prediction reaching the input steps ({len(X)} test sequences): "
          f"|d pred / d x_t| at step 1 / at step {X.shape[1]}")
    flows = []
    for name, model, *_ in results:
        norm = nlstm.inspect(model, X, dy=np.ones((len(X), 1), model.dtype)).traces[0].input_grad_norm
        flows.append((name, norm))
        print(f"  {name:>4}: {norm[0]:.3g} / {norm[-1]:.3g} = {norm[0] / norm[-1]:.3g}")
    return flows


def _plot_gradient_flow(path: str, flows, T: int) -> None:
    def draw(ax, colors):
        for name, norm in flows:
            ax.plot(np.arange(1, T + 1), norm, color=colors.get(name),
                    label=f"{name}: step 1 / step {T} = {norm[0] / norm[-1]:.2g}")

    _demo_figure(path, draw, f"the gradient reaching each input step after training (T = {T})",
                 "input step t", "|d prediction / d x_t|, mean over sequences")


def _plot_curves(path: str, results, mean_mse: float, T: int) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        return False

    def draw(ax, colors):
        for name, _, hist, test, _ in results:
            c = colors.get(name, None)
            ax.plot(hist["epoch"], hist["loss"], "-", color=c, alpha=0.55, label=f"{name} training")
            ax.plot(hist["epoch"], hist["val_loss"], "o-", color=c, ms=3,
                    label=f"{name} validation (test {test:.4f})")
        ax.axhline(mean_mse, color="gray", ls="--", lw=1, label=f"predict the mean ({mean_mse:.3f})")

    _demo_figure(path, draw, f"nlstm demo: the adding problem, T = {T}", "epoch", "MSE")
    return True


def _demo_figure(path: str, draw, title: str, xlabel: str, ylabel: str) -> None:
    """One log-scale plot, drawn by ``draw(ax, colors)``, written to path as PNG atomically."""
    import matplotlib.pyplot as plt

    from nlstm.inspect import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    draw(ax, {"LSTM": "tab:blue", "RNN": "tab:red", "GRU": "tab:green"})
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)


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
    out = args.out if args.out is not None else os.path.splitext(os.path.basename(args.csv))[0] + ".nlstm.npz"
    _out_path(out, "the model", [("--csv", args.csv)])  # fail before training, not after
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
    n_windows = N - W + 1
    _check_memory(8.0 * 1.5 * n_windows * W * len(features)
                  + _lstm_bytes(len(features), args.hidden, args.layers, K, args.batch_size, W),
                  f"training with --window {W}, --hidden {args.hidden} and --layers {args.layers} "
                  f"on {N} rows")
    # Standardize with statistics of the training part only, so validation stays unseen.
    with np.errstate(over="ignore", invalid="ignore"):
        x_mean, x_std = X_all[:split].mean(axis=0), X_all[:split].std(axis=0)
        y_mean, y_std = float(y_all[:split].mean()), float(y_all[:split].std())
    for name, m, sd in [*zip(features, x_mean, x_std), (args.target, y_mean, y_std)]:
        if not (np.isfinite(m) and np.isfinite(sd)):
            big = float(np.max(np.abs(data[:, names.index(name)])))
            raise UsageError(f"column {name!r} of {args.csv} holds values too large to standardize "
                             f"(up to {big:.3g}; the limit is about 1e150): rescale it")
    x_std[x_std == 0] = 1.0
    y_std = y_std or 1.0
    Xs, ys = (X_all - x_mean) / x_std, (y_all - y_mean) / y_std
    X_tr, Y_tr = windows(Xs[:split], W, ys[:split], K)
    # Validation windows: targets all after the split; inputs may reach back into training rows.
    X_va, Y_va = windows(Xs[split - W:], W, ys[split - W:], K)
    print(f"{args.csv}: {N} rows; features {', '.join(features)}; target {args.target}")
    print(f"  windows of {W} steps -> next {K} value(s); {len(X_tr)} training windows "
          f"(rows 0-{split - 1}), {len(X_va)} validation windows (targets in rows {split}-{N - 1})")
    rec = getattr(nlstm, _CELLS[args.cell])(
        len(features), args.hidden, num_layers=args.layers, batch_first=True, seed=args.seed,
        dropout=args.dropout if args.layers > 1 else 0.0, zoneout=args.zoneout)
    model = nlstm.Sequential([rec, nlstm.Linear(args.hidden, K, seed=args.seed + 1)],
                             output="last", loss="mse")
    _compile_first(model, X_tr, Y_tr, args.batch_size, (X_va, Y_va))
    t0, timed_out = time.perf_counter(), []

    def out_of_time(epoch, logs):
        if args.time_limit is not None and time.perf_counter() - t0 > args.time_limit:
            timed_out.append(epoch)
        return bool(timed_out)

    try:
        # a divergence is reported below, once
        with _Cluster(args) as client, np.errstate(over="ignore", invalid="ignore"):
            fit = model.fit
            if client is not None:  # --scheduler / --workers: the same fit on a Dask cluster
                import functools

                import nlstm.dask

                fit = functools.partial(nlstm.dask.fit, client, model)
            hist = fit(X_tr, Y_tr, epochs=args.epochs, batch_size=args.batch_size,
                       validation_data=(X_va, Y_va), seed=args.seed, lr=args.lr,
                       clip_norm=1.0, early_stopping=args.patience, verbose=_verbose(),
                       callback=out_of_time)
    except FloatingPointError as e:
        raise _diverged(e, args.lr) from None
    n = len(hist["epoch"])
    best = int(np.argmin(hist["val_loss"])) + 1
    if timed_out:
        why = f"the time limit (--time-limit {args.time_limit:g} s)"
    elif n < args.epochs:  # fit stops early only for the time limit or for early stopping
        why = (f"early stopping: no better validation loss in the last {args.patience} epochs "
               f"(--patience {args.patience})")
    else:
        why = f"the epoch limit (--epochs {args.epochs})"
    print(f"training stopped after {n} epoch{'s' * (n != 1)}: {why}; kept the weights of epoch "
          f"{best}, the best validation loss")
    pred = model.predict(X_va) * y_std + y_mean
    truth = Y_va * y_std + y_mean
    # The naive forecast: the last observed target value, for every step ahead.
    last = y_all[split - 1: split - 1 + len(X_va)][:, None]
    rmse = lambda a: float(np.sqrt(np.mean((a - truth) ** 2)))
    mae = lambda a: float(np.mean(np.abs(a - truth)))
    m_rmse, b_rmse, m_mae, b_mae = rmse(pred), rmse(last), mae(pred), mae(last)
    print(f"validation ({len(X_va)} windows, {args.target} units):")
    name = _CELLS[args.cell]  # the model's recurrent layer, as the report names it
    width = max(len(name), len("last value"))
    print(f"  {name:<{width}}  RMSE {m_rmse:.6g}  MAE {m_mae:.6g}")
    print(f"  {'last value':<{width}}  RMSE {b_rmse:.6g}  MAE {b_mae:.6g}")
    if b_rmse > 0:
        better = "better" if m_rmse < b_rmse else "worse"
        print(f"  the {name} is {better} than the last-value baseline ({m_rmse / b_rmse:.2f}x its RMSE)")
    meta = {"task": "forecast", "features": features, "target": args.target, "window": W,
            "horizon": K, "x_mean": x_mean.tolist(), "x_std": x_std.tolist(), "y_mean": y_mean,
            "y_std": y_std, "val_rmse": m_rmse, "baseline_rmse": b_rmse,
            "epochs": len(hist["epoch"]), "source": os.path.basename(args.csv)}
    path = model.save(out, metadata=meta)
    print(f"saved the model and its standardization statistics to {path}")
    return 0


def _forecaster(model_path: str, csv_path: str):
    """A model made by 'nlstm train' (its metadata checked) and the standardized windows of
    csv_path: (model, features, target, W, K, y_mean, y_std, X (N, W, F))."""
    import nlstm
    from nlstm.data import read_csv, windows

    model = nlstm.load(model_path)
    features, target, W, K, x_mean, x_std, y_mean, y_std = _forecast_meta(model, model_path)
    names, data = read_csv(csv_path, features)
    if len(data) < W:
        raise UsageError(f"{csv_path} has {len(data)} rows; the model's window needs {W}")
    _check_memory(8.0 * 1.5 * (len(data) - W + 1) * W * len(features),
                  f"the windows of {W} rows of {csv_path}")
    X, _ = windows((data - x_mean) / x_std, W)
    if not np.all(np.abs(X) < np.finfo(np.float32).max):
        raise UsageError(f"{csv_path} holds values too far from the model's training data to "
                         f"forecast (they overflow float32 once standardized)")
    return model, features, target, W, K, y_mean, y_std, X


def cmd_predict(args) -> int:
    from nlstm.io import atomic_write

    _threads(args)
    _out_path(args.out, "predictions", [("--csv", args.csv), ("--model", args.model)])
    model, features, target, W, K, y_mean, y_std, X = _forecaster(args.model, args.csv)
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
    def write(f):
        f.write(",".join(header) + "\n")
        for i, row in enumerate(pred):
            f.write(",".join([str(i + W - 1)] + [repr(float(v)) for v in row]) + "\n")

    atomic_write(args.out, write, mode="w")
    print(f"wrote {len(pred)} forecasts of the next {K} {target} value(s) to {args.out}")
    return 0


def _forecast_meta(model, path: str):
    """The forecaster metadata of a model from 'nlstm train', checked against its layers:
    (features, target, window, horizon, x_mean, x_std, y_mean, y_std)."""
    import nlstm

    meta = getattr(model, "metadata", None) or {}
    if meta.get("task") != "forecast":
        raise UsageError(f"{path} is not a forecaster made by 'nlstm train' "
                         f"(no CSV feature metadata)")
    try:
        features, target = [str(f) for f in meta["features"]], str(meta["target"])
        W, K = meta["window"], meta["horizon"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (W, K)):
            raise ValueError(f"window and horizon must be positive integers, got {W!r} and {K!r}")
        x_mean, x_std = np.asarray(meta["x_mean"], float), np.asarray(meta["x_std"], float)
        y_mean, y_std = float(meta["y_mean"]), float(meta["y_std"])
        if x_mean.shape != (len(features),) or x_std.shape != (len(features),):
            raise ValueError("statistics do not match the features")
        if not (np.all(np.isfinite(x_mean)) and np.all(np.isfinite(x_std)) and np.all(x_std > 0)
                and np.isfinite(y_mean) and np.isfinite(y_std) and y_std > 0):
            raise ValueError("statistics must be finite, with positive standard deviations")
        if not features or len(set(features)) != len(features):
            raise ValueError("features must name distinct columns")
        layers = model.layers if isinstance(model, nlstm.Sequential) else []
        if not layers or model.output != "last" or not isinstance(layers[-1], nlstm.Linear):
            raise ValueError("the model is not an LSTM + Linear forecaster")
        first = layers[0]
        n_in = getattr(first, "input_size", getattr(first, "in_features", None))
        if n_in != len(features):
            raise ValueError(f"{len(features)} features, but the model takes {n_in} inputs")
        if layers[-1].out_features != K:
            raise ValueError(f"horizon {K}, but the model has {layers[-1].out_features} outputs")
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path}: bad forecaster metadata ({e})") from None
    return features, target, W, K, x_mean, x_std, y_mean, y_std


def cmd_inspect(args) -> int:
    import nlstm

    _threads(args)
    _out_path(args.out, "the figure", [("--csv", args.csv), ("--model", args.model)])
    model, _, target, W, K, _, _, X = _forecaster(args.model, args.csv)
    last = len(X) + W - 2  # rows are numbered as 'nlstm predict' numbers them: a window's last row
    row = last if args.row is None else args.row
    if not W - 1 <= row <= last:
        raise UsageError(f"--row {row} is out of range: the windows of {args.csv} end at rows "
                         f"{W - 1}..{last} (0-based data rows)")
    x = X[row - W + 1: row - W + 2]
    # The gradient of the forecast itself (its K values summed): which steps it depends on.
    result = nlstm.inspect(model, x, dy=np.ones((1, K), model.dtype))
    print(f"{args.model} on the window of rows {row - W + 1}-{row} of {args.csv}: gradients of "
          f"the forecast of {target} (the next {K} value(s), summed)")
    print(result.summary())
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        print("no figure: matplotlib is not installed (pip install 'nlstm[plots]')")
        return 0
    import matplotlib.pyplot as plt

    plt.close(result.plot(args.out))
    print(f"saved the figure to {_shown(args.out)}")
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
        layer = "not started yet"
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
    from nlstm._warmup import compile_mark, compiled_since

    t_start, mark = time.perf_counter(), compile_mark()
    T, B, I, H, L = 50, 8, 16, 32, 2
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = rng.integers(1, T + 1, B)
    dy = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    m32 = nlstm.LSTM(I, H, num_layers=L, bidirectional=True, seed=0)
    m64 = nlstm.LSTM(I, H, num_layers=L, bidirectional=True, dtype=np.float64)
    m64.load_state_dict(m32.state_dict())

    print(f"nlstm {nlstm.__version__}: {m32!r}, T={T} B={B}, {nlstm.get_num_threads()} threads",
          flush=True)
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
    total, compiled = time.perf_counter() - t_start, compiled_since(mark)

    print(f"  y {y.shape}  h_n {h.shape}  c_n {c.shape}  dx {dx.shape}  dh0 {dh0.shape}")
    print(f"  forward+backward: first call {first * 1e3:.1f} ms (includes compiling or loading its "
          f"kernels), then {warm * 1e3:.2f} ms")
    if compiled:
        spent = sum(sec for _, _, sec in compiled)
        print(f"  compiled {len(compiled)} kernels in {spent:.1f} s (float32 and the float64 "
              f"reference; once per machine and nlstm version); the whole check took {total:.1f} s")
    else:
        print(f"  kernels loaded from the cache; the whole check took {total:.1f} s")
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
def _forecaster_args(p: argparse.ArgumentParser) -> None:
    """--model and --csv, as read by ``_forecaster`` (predict and inspect)."""
    p.add_argument("--model", required=True, metavar="FILE", help="a model file written by 'nlstm train'")
    p.add_argument("--csv", required=True, metavar="FILE",
                   help="CSV with the model's feature columns and a header row, oldest row first")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=_positive_int, metavar="N",
                        help="threads for nlstm's kernels and BLAS (default: all cores)")
    demo_common = argparse.ArgumentParser(add_help=False)
    demo_common.add_argument("--threads", type=_positive_int, metavar="N",
                             help="threads for nlstm's kernels and BLAS (default for the demo: 1, "
                                  "the fastest at its size)")
    p = _Parser(prog="nlstm", description="Numba-accelerated LSTMs for CPUs.",
                epilog="Run 'nlstm demo' to see an LSTM learn a long-range dependency.")
    p.add_argument("--version", action="version", version=f"nlstm {_version()}")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an error (accepted anywhere on the command line)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("demo", parents=[demo_common], help="train an LSTM on the adding problem (no data needed)",
                       description="Train an LSTM (and a plain RNN beside it) on the adding problem "
                                   "and report the test MSE and the gradient reaching each input "
                                   "step. Needs no data and no flags. Runs on "
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
    d.add_argument("--hidden", type=_positive_int, help="hidden units (default 32; 16 with --quick)")
    d.add_argument("--batch-size", type=_positive_int, default=32, metavar="N", help="sequences per batch")
    d.add_argument("--lr", type=_positive_float, default=0.01, help="Adam learning rate (default 0.01)")
    d.add_argument("--seed", type=int, default=0, help="seed of the data, the weights and the batch order")
    d.add_argument("--out", default=".", metavar="DIR",
                   help="directory for nlstm-demo.npz, nlstm-demo.png and nlstm-demo-gradients.png "
                        "(default: current)")
    d.add_argument("--no-plot", action="store_true", help="don't write the learning-curve and gradient PNGs")
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
    t.add_argument("--hidden", type=_positive_int, default=32, metavar="H", help="hidden units of each LSTM layer")
    t.add_argument("--layers", type=_positive_int, default=1, metavar="N", help="stacked LSTM layers")
    t.add_argument("--dropout", type=float, default=0.0, help="between stacked layers (default 0)")
    t.add_argument("--cell", choices=list(_CELLS), default="lstm",
                   help="the recurrent layer: nlstm.LSTM, LayerNormLSTM or GRU (default lstm)")
    t.add_argument("--zoneout", type=_probability, default=0.0, metavar="P",
                   help="zoneout probability of the recurrent layers (default 0)")
    t.add_argument("--epochs", type=_positive_int, default=50, metavar="N", help="at most this many epochs")
    t.add_argument("--batch-size", type=_positive_int, default=32, metavar="N", help="windows per batch")
    t.add_argument("--lr", type=_positive_float, default=3e-3, help="Adam learning rate")
    t.add_argument("--patience", type=_positive_int, default=10, metavar="EPOCHS",
                   help="stop after this many epochs without a better validation loss")
    t.add_argument("--time-limit", type=_positive_float, metavar="SECONDS",
                   help="stop after the epoch that passes this much training time (default: none)")
    t.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch order")
    t.add_argument("--out", metavar="FILE", help="model file (default: <csv name>.nlstm.npz)")
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", parents=[common, cluster], help="forecast with a model from 'nlstm train'",
                        description="Write a CSV with, for every window of the input CSV, the index "
                                    "of its last row (0-based, data rows) and the next K forecasts.")
    _forecaster_args(pr)
    pr.add_argument("--out", required=True, metavar="FILE",
                    help="CSV to write the forecasts to (never one of the input files)")
    pr.set_defaults(func=cmd_predict)

    ins = sub.add_parser("inspect", parents=[common], help="look inside a model from 'nlstm train'",
                         description="Gates, cell state and the gradient of the forecast at every "
                                     "step of one window: prints the summaries and draws them.")
    _forecaster_args(ins)
    ins.add_argument("--row", type=int, metavar="N",
                     help="the window that ends at data row N (0-based, as 'nlstm predict' "
                          "numbers them; default: the last)")
    ins.add_argument("--out", default="inspect.png", metavar="FILE",
                     help="the figure, PNG (default: inspect.png)")
    ins.set_defaults(func=cmd_inspect)

    i = sub.add_parser("info", help="versions, CPU features, threads, Numba cache")
    i.set_defaults(func=cmd_info)

    b = sub.add_parser("bench", parents=[common], help="run the benchmark comparison (or nlstm's own timings)",
                       description="Run 'python -m bench.compare' when ./bench is present and a peer "
                                   "(torch, onnxruntime) is installed; otherwise time nlstm alone. "
                                   "Arguments after '--' go to bench.compare.")
    b.add_argument("--own", action="store_true", help="time nlstm alone")
    b.add_argument("--repeat", type=_positive_int, default=20, metavar="N",
                   help="timed runs per case for --own (the median is shown)")
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
    """Run the command line; returns the exit code (0 ok, 1 check failed, 2 any error,
    130 interrupted). Every exception becomes one line on stderr (with ``--debug``, after
    its traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]  # anywhere before "--", for every subcommand
    argv = [a for i, a in enumerate(argv) if not (i < end and a == "--debug")]
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "rest", None) and args.rest[0] == "--":
            args.rest = args.rest[1:]
        if args.command is None:
            return selfcheck()
        return args.func(args)
    except KeyboardInterrupt:
        print("nlstm: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise  # --help and --version
    except BaseException as e:
        if debug:
            traceback.print_exc()
        print(f"nlstm: error: {_message(e)}", file=sys.stderr)
        return EXIT_USAGE


def _message(e: BaseException) -> str:
    """The one line main() prints for an exception."""
    if isinstance(e, (UsageError, ValueError, OSError)):
        # Bad arguments, files and values: UsageError, ValueError (incl. nlstm.data.DataError
        # and invalid model files) or OSError (missing, unreadable, unwritable files).
        return _one_line(e)
    if isinstance(e, MemoryError):
        return (f"out of memory ({_one_line(e)}); try a smaller --window, --hidden, --layers or "
                f"--batch-size")
    if isinstance(e, FloatingPointError):
        return f"the computation overflowed: {_one_line(e)}"
    return (f"unexpected {type(e).__name__}: {_one_line(e)}. This is a bug in nlstm: please report "
            f"it with the command line and the output of 'nlstm info' (run again with --debug for "
            f"the traceback)")


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        text = f"cannot open {e.filename}: {e.strerror or type(e).__name__}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
