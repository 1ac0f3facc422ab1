"""The ``nlstm`` command end to end, through subprocesses: demo, train/predict, info,
selfcheck, bench, and every error path (one line on stderr, exit code 2)."""
import csv
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import nlstm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(nlstm.__file__)))


def run(args, cwd, timeout=300, umask=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NLSTM_THREADS", None)
    return subprocess.run([sys.executable, "-m", "nlstm", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def assert_ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert "Traceback" not in p.stderr, p.stderr


@pytest.fixture(scope="module")
def series_csv(tmp_path_factory):
    """A small seasonal series with a second, informative column."""
    d = tmp_path_factory.mktemp("csv")
    rng = np.random.default_rng(0)
    n = 240
    t = np.arange(n)
    load = np.sin(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(n)
    temp = 20 + 5 * np.roll(load, 2) + 0.2 * rng.standard_normal(n)
    path = d / "series.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "temp", "load"])
        for i in range(n):
            w.writerow([f"2024-01-{1 + i // 24:02d}T{i % 24:02d}", f"{temp[i]:.4f}", f"{load[i]:.4f}"])
    return path


def test_demo_quick(tmp_path):
    (tmp_path / "out").mkdir()
    p = run(["demo", "--quick", "--out", "out"], tmp_path)
    assert_ok(p)
    out = p.stdout
    assert "adding problem" in out and "epoch 1/20" in out
    mse = float(re.search(r"test MSE LSTM: ([0-9.]+)", out).group(1))
    assert mse < 0.05, out  # T=20 within the quick budget; the mean scores about 0.167
    if hasattr(nlstm, "RNN"):
        assert re.search(r"test MSE +RNN: [0-9.]+", out), out
    model_path, png_path = tmp_path / "out" / "nlstm-demo.npz", tmp_path / "out" / "nlstm-demo.png"
    assert f"saved the LSTM model to {os.path.join('out', 'nlstm-demo.npz')}" in out
    model = nlstm.load(model_path)
    assert model.metadata["task"] == "adding"
    pytest.importorskip("matplotlib")
    assert f"saved the learning curves to {os.path.join('out', 'nlstm-demo.png')}" in out
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_then_predict(tmp_path, series_csv):
    model_path = tmp_path / "temp.npz"
    p = run(["train", "--csv", series_csv, "--target", "temp", "--features", "temp,load",
             "--window", 12, "--horizon", 2, "--epochs", 3, "--hidden", 8, "--out", model_path], tmp_path)
    assert_ok(p)
    assert "last value" in p.stdout and f"to {model_path}" in p.stdout
    rmse = re.findall(r"RMSE ([0-9.eE+-]+)", p.stdout)
    assert len(rmse) == 2 and all(np.isfinite(float(r)) for r in rmse)
    model = nlstm.load(model_path)
    meta = model.metadata
    assert meta["features"] == ["temp", "load"] and meta["window"] == 12 and meta["horizon"] == 2
    data = np.genfromtxt(series_csv, delimiter=",", names=True, dtype=None, encoding="utf-8")
    X = np.stack([data["temp"], data["load"]], axis=1)
    split = round(len(X) * 0.8)
    np.testing.assert_allclose(meta["x_mean"], X[:split].mean(axis=0), rtol=1e-12,
                               err_msg="standardization uses the training rows only")

    assert "training stopped after 3 epochs: the epoch limit (--epochs 3)" in p.stdout, p.stdout

    out_path = tmp_path / "pred.csv"
    p = run(["predict", "--model", model_path, "--csv", series_csv, "--out", out_path], tmp_path,
            umask=0o027)
    assert_ok(p)
    assert os.stat(out_path).st_mode & 0o777 == 0o640, "forecasts follow the umask (were 0600)"
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []
    assert str(out_path) in p.stdout
    rows = list(csv.reader(open(out_path)))
    assert rows[0] == ["row", "temp+1", "temp+2"]
    assert len(rows) - 1 == len(X) - 12 + 1
    assert rows[1][0] == "11" and rows[-1][0] == str(len(X) - 1)
    got = np.array(rows[1:], float)[:, 1:]
    xs = (X - meta["x_mean"]) / meta["x_std"]
    windows = np.stack([xs[i:i + 12] for i in range(len(X) - 11)])
    want = model.predict(windows) * meta["y_std"] + meta["y_mean"]
    np.testing.assert_allclose(got, want, rtol=1e-6, err_msg="predictions")


def test_info_selfcheck_and_own_bench(tmp_path):
    with ThreadPoolExecutor(2) as pool:
        info, check, bench = pool.map(lambda a: run(a, tmp_path),
                                      [["info"], [], ["bench", "--own", "--repeat", 1]])
    for p in (info, check, bench):
        assert_ok(p)
    assert "numba threading layer" in info.stdout and "kernel cache" in info.stdout and "nlstm-" in info.stdout
    assert re.search(r"threads: nlstm \d+", info.stdout) and "numpy" in info.stdout
    assert "-> OK" in check.stdout
    assert "own timings" in bench.stdout and re.search(r"\bM\s+100\s+16", bench.stdout)


def _bad_csvs(d):
    (d / "text.csv").write_text("a,b\n1,2\n3,x\n4,5\n")
    (d / "empty.csv").write_text("")
    (d / "header.csv").write_text("a,b\n")
    (d / "ragged.csv").write_text("a,b\n1,2\n3\n")
    (d / "short.csv").write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(10)))
    (d / "bad.npz").write_bytes(b"not a model")
    (d / "folder").mkdir()
    (d / "huge.csv").write_text("a,b\n" + "".join(f"{i}e300,{i}\n" for i in range(1, 40)))
    (d / "long.csv").write_text("a\n" + "1\n" * 400_000)


ERRORS = [
    (["train", "--csv", "missing.csv", "--target", "a", "--window", 3], "cannot open missing.csv"),
    (["train", "--csv", "short.csv", "--target", "c", "--window", 3], "column 'c' is not in short.csv"),
    (["train", "--csv", "short.csv", "--target", "a", "--features", "a,z", "--window", 3],
     "column 'z' is not in"),
    (["train", "--csv", "short.csv", "--target", "a", "--window", 20], "window 20"),
    (["train", "--csv", "short.csv", "--target", "a", "--window", 8], "too few"),
    (["train", "--csv", "text.csv", "--target", "b", "--window", 1], "line 3, column 'b': 'x' is not a number"),
    (["train", "--csv", "empty.csv", "--target", "a", "--window", 1], "empty"),
    (["train", "--csv", "header.csv", "--target", "a", "--window", 1], "no data rows"),
    (["train", "--csv", "ragged.csv", "--target", "a", "--window", 1], "line 3 has 1 fields"),
    (["train", "--csv", "short.csv", "--target", "a", "--window", 0], "--window: expected a positive integer"),
    (["train", "--csv", "short.csv", "--target", "a", "--window", "abc"], "expected a positive integer"),
    (["train", "--csv", "short.csv", "--target", "a", "--window", 2, "--val", 1.5], "between 0 and 1"),
    (["train", "--csv", "short.csv", "--target", "a", "--window", 2, "--out", "nodir/m.npz"], "does not exist"),
    (["train", "--csv", "short.csv", "--window", 2], "the following arguments are required: --target"),
    (["predict", "--model", "bad.npz", "--csv", "short.csv", "--out", "p.csv"], "not a valid nlstm model file"),
    (["predict", "--model", "missing.npz", "--csv", "short.csv", "--out", "p.csv"], "cannot open missing.npz"),
    (["predict", "--model", "layer.npz", "--csv", "short.csv", "--out", "p.csv"], "not a forecaster"),
    (["predict", "--model", "layer.npz", "--csv", "short.csv", "--out", "folder"], "is a directory"),
    (["demo", "--out", "nodir"], "no such directory"),
    (["demo", "--epochs", "-1"], "--epochs: expected a positive integer"),
    (["bench", "--own", "extra"], "extra arguments"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    # never over an input file
    (["predict", "--model", "h1.npz", "--csv", "short.csv", "--out", "short.csv"],
     "refusing to write predictions to short.csv: it is the input file --csv short.csv"),
    (["predict", "--model", "h1.npz", "--csv", "short.csv", "--out", "./h1.npz"],
     "it is the input file --model h1.npz"),
    (["train", "--csv", "short.csv", "--target", "a", "--window", 2, "--out", "short.csv"],
     "refusing to write the model to short.csv: it is the input file --csv short.csv"),
    (["train", "--csv", "short.csv", "--target", "a", "--window", 2, "--out", ""], "the path is empty"),
    # sizes checked against memory before anything is allocated
    (["train", "--csv", "short.csv", "--target", "a", "--window", 2, "--hidden", 3_000_000],
     "--hidden 3000000 and --layers 1 on 10 rows would need about"),
    (["train", "--csv", "short.csv", "--target", "a", "--window", 2, "--layers", 10_000_000],
     "--layers 10000000 on 10 rows would need about"),
    (["train", "--csv", "long.csv", "--target", "a", "--window", 200_000],
     "training with --window 200000, --hidden 32 and --layers 1 on 400000 rows would need about"),
    (["demo", "--T", 10 ** 9], "the demo with --train 10000, --T 1000000000 and --hidden 32 would need"),
    # values and metadata
    (["train", "--csv", "huge.csv", "--target", "b", "--features", "a,b", "--window", 2],
     "column 'a' of huge.csv holds values too large to standardize"),
    (["predict", "--model", "h1.npz", "--csv", "huge.csv", "--out", "p.csv"],
     "huge.csv holds values too far from the model's training data to forecast"),
    (["predict", "--model", "h3.npz", "--csv", "short.csv", "--out", "p.csv"],
     "bad forecaster metadata (horizon 3, but the model has 1 outputs)"),
    (["predict", "--model", "f3.npz", "--csv", "short.csv", "--out", "p.csv"],
     "bad forecaster metadata (2 features, but the model takes 1 inputs)"),
]


def _forecaster_files(d):
    """h1.npz: a valid forecaster of short.csv's column a; h3.npz and f3.npz: its metadata
    claims 3 outputs, or 2 input features."""
    model = nlstm.Sequential([nlstm.LSTM(1, 2, batch_first=True), nlstm.Linear(2, 1)], output="last")
    meta = {"task": "forecast", "features": ["a"], "target": "a", "window": 2, "horizon": 1,
            "x_mean": [0.0], "x_std": [1.0], "y_mean": 0.0, "y_std": 1.0}
    model.save(d / "h1.npz", metadata=meta)
    model.save(d / "h3.npz", metadata=dict(meta, horizon=3))
    model.save(d / "f3.npz", metadata=dict(meta, features=["a", "b"], x_mean=[0, 0], x_std=[1, 1]))


def test_every_error_is_one_line_and_exit_2(tmp_path):
    _bad_csvs(tmp_path)
    _forecaster_files(tmp_path)
    nlstm.save(nlstm.Sequential([nlstm.LSTM(1, 2), nlstm.Linear(2, 1)]), tmp_path / "layer.npz")
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path) if (tmp_path / f).is_file()}
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda case: run(case[0], tmp_path), ERRORS))
    for (args, msg), p in zip(ERRORS, results):
        where = f"nlstm {' '.join(map(str, args))}"
        assert p.returncode == 2, f"{where}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nlstm: error: "), f"{where}: {p.stderr!r}"
        assert msg in lines[0], f"{where}: expected {msg!r} in {lines[0]!r}"
        assert "check_finite" not in lines[0], f"{where}: the command line has no check_finite"
    assert not (tmp_path / "p.csv").exists()
    for f, data in before.items():
        assert (tmp_path / f).read_bytes() == data, f"{f} was changed"
    assert sorted(os.listdir(tmp_path)) == sorted([*before, "folder"]), "nothing new was written"


def test_train_defaults_to_the_target_alone(tmp_path, series_csv):
    # The CSV also has a text column: only the columns used must be numeric.
    p = run(["train", "--csv", series_csv, "--target", "load", "--window", 6, "--epochs", 1], tmp_path)
    assert_ok(p)
    assert "features load;" in p.stdout and "series.nlstm.npz" in p.stdout
    assert nlstm.load(tmp_path / "series.nlstm.npz").metadata["features"] == ["load"]


def test_demo_plot_is_skipped_quietly_without_matplotlib(monkeypatch, tmp_path):
    from nlstm import cli

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli._plot_curves(str(tmp_path / "x.png"), [], 0.167, 20) is False
    assert not (tmp_path / "x.png").exists()


def test_why_training_stopped(tmp_path, series_csv):
    common = ["train", "--csv", series_csv, "--target", "load", "--window", 6, "--hidden", 4,
              "--out", tmp_path / "m.npz"]
    early = run(common + ["--epochs", 200, "--patience", 1], tmp_path)
    timed = run(common + ["--epochs", 200, "--time-limit", 0.001], tmp_path)
    for p in (early, timed):
        assert_ok(p)
    assert re.search(r"training stopped after \d+ epochs: early stopping: no better validation loss "
                     r"in the last 1 epochs \(--patience 1\); kept the weights of epoch \d+", early.stdout), early.stdout
    assert "training stopped after 1 epoch: the time limit (--time-limit 0.001 s)" in timed.stdout, timed.stdout


def test_a_diverging_training_is_one_line(tmp_path, series_csv):
    p = run(["train", "--csv", series_csv, "--target", "load", "--window", 6, "--hidden", 4,
             "--epochs", 2, "--lr", 1e30, "--out", tmp_path / "m.npz"], tmp_path)
    assert p.returncode == 2, p.stderr
    lines = [l for l in p.stderr.splitlines() if not l.startswith("nlstm: compil")]
    assert lines == ["nlstm: error: training diverged: the loss became NaN or Inf at --lr 1e+30 "
                     "(gradients are already clipped); try a lower --lr"], p.stderr
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("error, shown", [
    (KeyError("x"), "nlstm: error: unexpected KeyError: 'x'. This is a bug in nlstm: please report it"),
    (MemoryError(), "nlstm: error: out of memory (MemoryError); try a smaller"),
    (FloatingPointError("overflow in exp"), "nlstm: error: the computation overflowed: overflow in exp"),
    (RuntimeError("boom"), "nlstm: error: unexpected RuntimeError: boom. This is a bug"),
])
def test_every_exception_reaching_main_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys, error, shown):
    from nlstm import cli

    def fail(args):
        raise error

    monkeypatch.setattr(cli, "cmd_info", fail)
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(shown), err
    for argv in (["--debug", "info"], ["info", "--debug"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):") and "in fail" in err, err
        assert err.strip().splitlines()[-1].startswith(shown)


def test_every_option_has_help_and_shows_its_default():
    import argparse

    from nlstm import cli

    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    formatter = cli._Help("nlstm")
    for name, sub in subs.items():
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            where = f"nlstm {name} {action.option_strings[0]}"
            assert action.help, f"{where} has no help text"
            if action.default is not None and action.default is not False:
                assert "default" in formatter._get_help_string(action), f"{where} does not show its default"
    demo = " ".join(subs["demo"].format_help().split())
    assert "all cores" not in demo and "default for the demo: 1" in demo


def test_compilation_happens_before_training_starts(tmp_path):
    """The CLI compiles (or loads) every kernel fit needs before its progress bar starts, so
    the bar's estimates exclude compilation: fit itself compiles nothing."""
    from nlstm import cli
    from nlstm.kernels import config

    X = np.random.default_rng(0).standard_normal((37, 5, 2)).astype(np.float32)
    Y = X[:, -1, :1].copy()
    model = nlstm.Sequential([nlstm.LSTM(2, 3, num_layers=2, batch_first=True, seed=0, dtype=np.float64),
                              nlstm.Linear(3, 1, seed=1, dtype=np.float64)], output="last")
    cli._compile_first(model, X, Y, 8, (X[:3], Y[:3]))
    before = len(config.compiled)
    model.fit(X, Y, epochs=1, batch_size=8, validation_data=(X[:3], Y[:3]), clip_norm=1.0, verbose=0)
    assert config.compiled[before:] == []
