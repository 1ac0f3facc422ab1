"""The parts of the README's reproducibility promise a test can check: the same results
twice in one process at 1 and at 2 threads, and ``fit`` bitwise identical run to run
(in this process and in a fresh one), and a first run (which compiles the kernels) the
same as later runs (which load them from the disk cache)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import nlstm

ROOT = Path(__file__).resolve().parents[1]


def _forward_backward(layer, x):
    y, s = layer.forward(x, train=True)
    layer.zero_grad()
    dx, ds = layer.backward(np.cos(y))
    return [y, *np.atleast_1d(s), dx, *np.atleast_1d(ds), *layer.grads.values()]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cls,T,B,H", [(nlstm.LSTM, 30, 9, 32), (nlstm.GRU, 30, 9, 32),
                                       (nlstm.RNN, 30, 9, 48),
                                       (nlstm.LSTM, 400, 1, 128)])  # the one-row unit split
def test_same_results_twice_in_one_process(cls, T, B, H, threads, monkeypatch):
    monkeypatch.setattr(nlstm._threads, "cpus_available", lambda: 2)
    before = nlstm.get_num_threads()
    nlstm.set_num_threads(threads)
    try:
        layer = cls(5, H, num_layers=2, seed=4)
        x = np.random.default_rng(1).standard_normal((T, B, 5)).astype(np.float32)
        first = [a.copy() for a in _forward_backward(layer, x)]
        nlstm.LSTM(5, 8, seed=0)(x)  # other work in between, same thread
        second = _forward_backward(layer, x)
    finally:
        nlstm.set_num_threads(before)
    for i, (a, b) in enumerate(zip(first, second)):
        np.testing.assert_array_equal(a, b, err_msg=f"array {i}")


_FIT = textwrap.dedent("""
    import hashlib, numpy as np, nlstm
    def fit_digest(threads):
        nlstm.set_num_threads(threads)
        rng = np.random.default_rng(0)
        X = rng.standard_normal((96, 12, 3)).astype(np.float32)
        Y = X[:, -3:, :1].sum(axis=1)
        model = nlstm.Sequential([nlstm.LSTM(3, 16, batch_first=True, seed=1),
                                  nlstm.Dropout(0.2), nlstm.Linear(16, 1, seed=2)])
        model.fit(X, Y, epochs=3, batch_size=16, seed=5, verbose=0, clip_norm=1.0)
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode()); h.update(np.ascontiguousarray(v).tobytes())
        return h.hexdigest()
""")


def test_fit_is_bitwise_identical_run_to_run(monkeypatch):
    monkeypatch.setattr(nlstm._threads, "cpus_available", lambda: 2)
    before = nlstm.get_num_threads()
    space = {}
    exec(_FIT, space)
    try:
        here = {n: space["fit_digest"](n) for n in (1, 2)}
        again = space["fit_digest"](1)
    finally:
        nlstm.set_num_threads(before)
    assert again == here[1]
    # A fresh process (as a second run of a script) gives the same weights bit for bit.
    code = _FIT + "import nlstm._threads as t; t.cpus_available = lambda: 2\n" \
                  "print(fit_digest(1), fit_digest(2))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=ROOT,  # the same environment (OPENBLAS_CORETYPE, caches)
                         env=dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_NUM_THREADS="2"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [here[1], here[2]]


_FIRST_RUN = textwrap.dedent("""
    import hashlib
    import numpy as np
    import nlstm
    from nlstm.kernels import config
    h = hashlib.sha256()
    rng = np.random.default_rng(0)
    for cls, T, B, I, H, dtype in ((nlstm.LSTM, 6, 10, 3, 5, np.float32),
                                   (nlstm.LSTM, 7, 3, 8, 37, np.float64),
                                   (nlstm.LayerNormLSTM, 7, 3, 8, 37, np.float32)):
        layer = cls(I, H, seed=1, dtype=dtype)
        x = rng.standard_normal((T, B, I)).astype(dtype)
        y, s = layer.forward(x, train=True)
        layer.zero_grad()
        dx, ds = layer.backward(np.cos(y))
        for a in (y, *np.atleast_1d(s), dx, *np.atleast_1d(ds), *layer.grads.values()):
            h.update(np.ascontiguousarray(a).tobytes())
    print(h.hexdigest(), len(config.compiled))
""")


def test_the_first_run_gives_the_bits_of_later_runs(tmp_path):
    # A first run compiles the kernels, later runs load them from the disk cache. Each kernel
    # must run the same code both ways: these cases differed in the last bit while a kernel
    # could call either of a helper's two builds (kernels/config._install_private_helpers).
    env = dict(os.environ, PYTHONPATH=str(ROOT), NLSTM_CACHE_DIR=str(tmp_path),
               NLSTM_COMPILE_NOTICE="0")
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _FIRST_RUN], capture_output=True,
                             text=True, timeout=900, cwd=ROOT, env=env)
        assert out.returncode == 0, out.stderr
        digest, compiled = out.stdout.split()
        runs.append((digest, int(compiled)))
    assert runs[0][1] > 0 and runs[1][1] == 0, runs  # compiled, then loaded
    assert runs[0][0] == runs[1][0]
