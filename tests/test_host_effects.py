"""nlstm is a good guest in the host process: its threads are Numba's, it pins no thread to
a CPU, every BLAS keeps the thread count it had before a call (errors included), and
calls from several Python threads at once finish on any threading layer."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest
from threadpoolctl import ThreadpoolController, threadpool_info, threadpool_limits

import nlstm

try:  # Numba imports SciPy, and so its BLAS, where it is installed: loaded before counting
    import scipy.linalg  # noqa: F401
except ImportError:
    pass

ROOT = Path(__file__).resolve().parents[1]


def _blas_counts() -> list:
    return sorted((i["filepath"], i["num_threads"]) for i in threadpool_info()
                  if i["user_api"] == "blas")


@pytest.fixture
def blas_set():
    """Every BLAS at a thread count that is neither 1 nor any of nlstm's, as a user might
    set it (nlstm once left BLAS at its own count after every call)."""
    n = numba.config.NUMBA_NUM_THREADS + 2
    with threadpool_limits(limits=n, user_api="blas"):
        counts = _blas_counts()
        assert counts and all(c == n for _, c in counts), counts
        yield counts


def _sequence_calls(rng):
    """(name, call) pairs through every public path that runs kernels; B = 64 rows over
    two threads, B = 1 on the calling thread."""
    m = nlstm.LSTM(8, 32, num_layers=2, seed=0)
    g = nlstm.GRU(8, 32, bidirectional=True, seed=0)
    x = rng.standard_normal((40, 64, 8)).astype(np.float32)
    model = nlstm.Sequential([nlstm.LSTM(8, 16, batch_first=True, seed=0), nlstm.Linear(16, 1, seed=1)])
    X, Y = x[:20].transpose(1, 0, 2).copy(), rng.standard_normal((64, 1)).astype(np.float32)

    def train(layer, x):
        y, _ = layer.forward(x)
        layer.backward(np.ones_like(y))

    stream = m.stream()
    return [("forward", lambda: m(x)), ("forward one row", lambda: m(x[:, :1])),
            ("forward and backward", lambda: train(m, x)), ("GRU", lambda: train(g, x)),
            ("step", lambda: m.step(x[0])), ("stream", lambda: stream(x[0, 0])),
            ("fit", lambda: model.fit(X, Y, epochs=1, batch_size=32, verbose=0, seed=0)),
            ("predict", lambda: model.predict(X))]


def test_blas_thread_counts_are_the_same_after_every_call(blas_set, rng):
    import threading
    before = nlstm.get_num_threads()
    nlstm.set_num_threads(2)
    try:
        for name, call in _sequence_calls(rng):
            call()
            assert _blas_counts() == blas_set, f"after {name}"
    finally:
        nlstm.set_num_threads(before)
    # From another Python thread that lives on: threadpoolctl lets one living thread at a
    # time set a pthreads OpenBLAS's count, so nlstm must give back the control it took.
    for c in ThreadpoolController().lib_controllers:
        if hasattr(type(c), "clear_controlling_thread"):
            type(c).clear_controlling_thread(force=True)
    called, finish = threading.Event(), threading.Event()

    def call_and_live_on():
        _sequence_calls(rng)[0][1]()
        called.set()
        finish.wait(60)

    other = threading.Thread(target=call_and_live_on)
    other.start()
    try:
        assert called.wait(120)
        assert _blas_counts() == blas_set
        with threadpool_limits(limits=1, user_api="blas"):
            assert all(n == 1 for _, n in _blas_counts()), "nlstm kept control of BLAS"
    finally:
        finish.set()
        other.join()


def test_blas_thread_counts_are_the_same_after_an_onnx_run(blas_set, rng, tmp_path):
    pytest.importorskip("onnx")
    import nlstm.onnx as nonnx
    model = nonnx.load(nonnx.save(nlstm.LSTM(8, 32, seed=0), tmp_path / "m.onnx", lengths=False))
    model.run(None, {"input": rng.standard_normal((40, 64, 8)).astype(np.float32)})
    assert _blas_counts() == blas_set


def test_blas_thread_counts_are_the_same_after_an_error(blas_set, rng, monkeypatch):
    m = nlstm.LSTM(8, 32, num_layers=2, seed=0)
    x = rng.standard_normal((40, 64, 8)).astype(np.float32)
    y, _ = m.forward(x)
    real = type(m)._backward_dir
    calls = []

    def fail(self, *args):
        if calls:  # the second layer down: kernels have run in this call already
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, *args)

    monkeypatch.setattr(type(m), "_backward_dir", fail)
    with pytest.raises(KeyboardInterrupt):
        m.backward(np.ones_like(y))
    assert calls and _blas_counts() == blas_set
    monkeypatch.setattr(type(m), "_run_forward", lambda *a: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError):
        m(x)
    assert _blas_counts() == blas_set


def _affinities() -> dict:
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    out[task.name] = line.split(":", 1)[1].strip()
        except OSError:  # the thread ended meanwhile
            pass
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
def test_no_thread_is_pinned(rng):
    """Every thread of the process may run on every CPU the process may, after nlstm ran
    on two threads (its threads once pinned themselves, one CPU each)."""
    process = Path("/proc/self/status").read_text().split("Cpus_allowed_list:")[1].split()[0]
    before = nlstm.get_num_threads()
    nlstm.set_num_threads(2)
    try:
        for _, call in _sequence_calls(rng):
            call()
    finally:
        nlstm.set_num_threads(before)
    narrowed = {t: cpus for t, cpus in _affinities().items() if cpus != process}
    assert not narrowed, f"threads pinned to fewer CPUs than the process's {process}: {narrowed}"


def test_nlstm_threads_are_numbas():
    before = numba.get_num_threads()
    try:
        nlstm.set_num_threads(1)
        assert numba.get_num_threads() == 1
        numba.set_num_threads(2)
        assert nlstm.get_num_threads() == 2
        assert nlstm.get_num_threads is numba.get_num_threads
        with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
            nlstm.set_num_threads(numba.config.NUMBA_NUM_THREADS + 1)
    finally:
        numba.set_num_threads(before)


# Several Python threads at once: each its own layer, all on one shared layer, and one-row
# layers whose hidden units split over threads; every answer checked against one computed
# first. Prints the threading layer the calls ran on.
_CONCURRENT_SCRIPT = textwrap.dedent("""
    import threading
    import numpy as np, numba
    import nlstm
    from nlstm import _threads
    from nlstm.kernels import tuning
    tuning.UNITS_MIN_WORK = 0
    _threads.cpus_available = lambda: 2  # the unit split even on one CPU
    split = []
    run_units = _threads.run_units
    _threads.run_units = lambda n, kernel, args: (split.append(n), run_units(n, kernel, args))[1]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 48, 8)).astype(np.float32)
    row = rng.standard_normal((200, 1, 8)).astype(np.float32)
    shared = nlstm.LSTM(8, 128, seed=0)
    own = [nlstm.GRU(8, 128, seed=i) for i in range(3)]
    want_shared, want_row = shared(x)[0], shared(row)[0]
    want_own = [m(x)[0] for m in own]
    bad = []

    def go(i):
        numba.set_num_threads(2)
        for _ in range(5):
            if not np.array_equal(shared(x)[0], want_shared):
                bad.append(("shared", i))
            if not np.array_equal(own[i](x)[0], want_own[i]):
                bad.append(("own", i))
            if not np.allclose(shared(row)[0], want_row, rtol=1e-5, atol=1e-6):
                bad.append(("row", i))

    ts = [threading.Thread(target=go, args=(i,)) for i in range(3)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert split, "the one-row unit split was not taken"
    print("layer", numba.threading_layer(), "bad", bad, flush=True)
""")


@pytest.mark.parametrize("layer", ["default", "workqueue"])
def test_concurrent_calls_finish_on_the_threading_layer(layer):
    """On the default layer (tbb or omp: thread-safe) and on workqueue, which aborts the
    process on concurrent parallel regions unless nlstm makes them take turns."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "NUMBA_NUM_THREADS": "2",
           "NUMBA_THREADING_LAYER": layer}
    if "NLSTM_CACHE_DIR" in os.environ:
        env["NLSTM_CACHE_DIR"] = os.environ["NLSTM_CACHE_DIR"]
    try:
        out = subprocess.run([sys.executable, "-c", _CONCURRENT_SCRIPT], capture_output=True,
                             text=True, timeout=400, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"concurrent calls on the {layer} layer hung")
    assert out.returncode == 0, out.stderr[-3000:]
    want = "workqueue" if layer == "workqueue" else ("tbb", "omp")
    words = out.stdout.split()
    assert words[:1] == ["layer"] and words[1] in want and words[2:] == ["bad", "[]"], out.stdout


def test_the_users_own_numba_functions_still_compile():
    """nlstm's compile notice listens to every Numba compile in the process; a user's
    function whose ``__module__`` is None (made by exec() without ``__name__`` in its
    globals) failed to compile once nlstm was imported (AttributeError in the listener)."""
    namespace: dict = {}
    exec("def twice(a):\n    return 2 * a\n", namespace)
    assert namespace["twice"].__module__ is None
    assert numba.njit(namespace["twice"])(21) == 42
    before = len(nlstm.kernels.config.compiled)
    numba.njit(lambda a: a + 1)(1)  # a function of the user's module: not reported as nlstm's
    assert len(nlstm.kernels.config.compiled) == before


def test_the_users_own_numba_functions_are_not_reported_as_nlstms(capfd):
    """A user's function that calls nlstm's overloaded float32 tanh compiles the overload's
    lambda inside it, uncached: that is not nlstm compiling (the notice once said so, and
    blamed an unwritable cache)."""
    from nlstm.kernels import activations

    before = len(nlstm.kernels.config.compiled)
    f = numba.njit(lambda a: activations.tanh(a[0]))
    assert f(np.array([0.5], np.float32)) == pytest.approx(np.tanh(0.5), rel=1e-6)
    assert nlstm.kernels.config.compiled[before:] == []
    assert "nlstm: compiling" not in capfd.readouterr().err
