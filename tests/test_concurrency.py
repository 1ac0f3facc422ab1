"""Shared objects used from several Python threads at once: every caller gets the right
answer or a clear RuntimeError naming the object; nothing hangs.

Every test is bounded: threads are joined with a timeout (a test fails, never hangs), and
the one-row unit split, whose spin barriers wedged both workers before the fix, runs in a
subprocess with a timeout.
"""
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import nlstm

ROOT = Path(__file__).resolve().parents[1]
CELLS = [nlstm.LSTM, nlstm.GRU, nlstm.RNN]


def run_threads(fn, n=2, timeout=120.0):
    """Run fn(i) on n daemon threads at once; fail (not hang) if one does not finish. Each
    runs nlstm at the caller's thread count: Numba's count is per thread and a new thread
    starts at the ceiling (3 here, conftest.py), and the count may change a result's last
    bit (rows split over threads make BLAS products of other row counts; seen on Zen 5 for
    H whose gate width is no multiple of the 64-column panels)."""
    errors, start, count = [], threading.Barrier(n), nlstm.get_num_threads()

    def body(i):
        try:
            nlstm.set_num_threads(count)
            start.wait(timeout)
            fn(i)
        except BaseException as e:  # noqa: B036 - reported below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), f"a thread did not finish in {timeout} s"
    if errors:
        raise errors[0]


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setattr(nlstm._threads, "cpus_available", lambda: 2)
    before = nlstm.get_num_threads()
    nlstm.set_num_threads(2)
    yield
    nlstm.set_num_threads(before)


def _data(rng, T, B, I, dtype=np.float32):
    return rng.standard_normal((T, B, I)).astype(dtype)


@pytest.mark.parametrize("cls", CELLS)
def test_shared_layer_inference_from_two_threads_is_right(cls, rng, two_threads):
    """B=16 rows over the workers, the workspace shared: 79 of 80 outputs were wrong."""
    layer = cls(5, 32, num_layers=2, seed=1)
    xs = [_data(rng, 50, 16, 5) for _ in range(2)]
    want = [layer(x) for x in xs]
    bad = []

    def call(i):
        for _ in range(15):
            y, s = layer(xs[i])
            if not np.array_equal(y, want[i][0]):
                bad.append(i)

    run_threads(call)
    assert not bad, f"{len(bad)} of 30 outputs were wrong"


@pytest.mark.parametrize("cls", CELLS)
def test_shared_layer_step_from_two_threads(cls, rng, two_threads):
    layer = cls(4, 96, num_layers=2, seed=2)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    state = layer.step(x)[1]
    want = layer.step(x, state)
    bad = []

    def call(i):
        for _ in range(300):
            y, s = layer.step(x, state)
            if not np.array_equal(y, want[0]):
                bad.append(i)

    run_threads(call)
    assert not bad, f"{len(bad)} of 600 steps were wrong"


@pytest.mark.parametrize("cls", CELLS)
def test_shared_stream_from_two_threads(cls, rng):
    layer = cls(4, 96, num_layers=2, seed=2)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    # One stream fed the same x from two threads: the calls take turns, so the outputs are
    # the first 2n outputs of a stream fed alone, in some order, and the state is the 2n-th.
    n = 300
    alone = layer.stream(batch_size=8)
    ys = [alone(x).tobytes() for _ in range(2 * n)]
    shared = layer.stream(batch_size=8)
    got = []
    run_threads(lambda i: got.extend(shared(x).tobytes() for _ in range(n)))
    assert sorted(got) == sorted(ys)
    for a, b in zip(np.atleast_1d(shared.state), np.atleast_1d(alone.state)):
        np.testing.assert_array_equal(a, b)


def test_shared_sequential_from_two_threads(rng, two_threads):
    model = nlstm.Sequential([nlstm.LSTM(3, 24, num_layers=2, batch_first=True, seed=0),
                              nlstm.Linear(24, 2, seed=1)])
    xs = [rng.standard_normal((16, 40, 3)).astype(np.float32) for _ in range(2)]
    want = [model.predict(x) for x in xs]
    bad = []

    def call(i):
        for _ in range(15):
            if not np.array_equal(model.predict(xs[i]), want[i]):
                bad.append(i)

    run_threads(call)
    assert not bad


@pytest.mark.parametrize("kind", ["layer", "model"])
def test_backward_from_another_threads_forward_is_refused(rng, kind):
    """A training forward and its backward are two calls: a shared object keeps one. When
    another thread's training forward replaced this thread's, backward says so instead of
    returning the other batch's gradients."""
    if kind == "layer":
        obj = nlstm.GRU(3, 8, seed=0)
        x = _data(rng, 5, 2, 3)
        fwd = lambda: obj.forward(x, train=True)[0]
        back = lambda y: obj.backward(np.ones_like(y))
    else:
        obj = nlstm.Sequential([nlstm.GRU(3, 8, batch_first=True, seed=0), nlstm.Linear(8, 1, seed=1)])
        x = rng.standard_normal((2, 5, 3)).astype(np.float32)
        fwd = lambda: obj.forward(x, train=True)[0]
        back = lambda y: obj.backward(np.ones_like(y))
    y = fwd()
    grads = {k: g.copy() for k, g in obj.grads.items()}
    run_threads(lambda i: fwd(), n=1)  # another thread's training forward
    with pytest.raises(RuntimeError, match=r"(?s)^(GRU|Sequential).*another thread"):
        back(y)
    for k, g in obj.grads.items():
        np.testing.assert_array_equal(g, grads[k], err_msg=k)
    y = fwd()  # this thread's own forward backpropagates as usual
    back(y)


def test_onnx_model_runs_concurrently_with_right_answers(rng, two_threads):
    pytest.importorskip("onnx")
    import nlstm.onnx as nonnx

    layer = nlstm.LSTM(4, 20, num_layers=2, seed=3)
    path = nonnx.save(layer, Path(_tmp()) / "m.onnx", lengths=False)
    model = nonnx.load(path)
    xs = [_data(rng, 30, 16, 4) for _ in range(2)]
    want = [model.run(None, {"input": x}) for x in xs]
    bad = []

    def call(i):
        for _ in range(20):
            got = model.run(None, {"input": xs[i]})
            if not all(np.array_equal(a, b) for a, b in zip(got, want[i])):
                bad.append(i)

    run_threads(call)
    assert not bad, f"{len(bad)} of 40 runs were wrong"
    # The weights are shared: an update reaches every concurrent call's layers.
    model.layers[next(iter(model.layers))].params["bias_ih_l0"][...] += 0.5
    after = [None, None]
    run_threads(lambda i: after.__setitem__(i, model.run(None, {"input": xs[i]})))
    for i in range(2):
        assert not np.array_equal(after[i][0], want[i][0])
        np.testing.assert_array_equal(after[i][0], model.run(None, {"input": xs[i]})[0])


def test_onnx_model_run_uses_the_calls_own_layers(rng):
    """Model.run hands each call a lane of layers; a call that overlaps another gets
    siblings (own workspaces) and must run on them, not on the model's shared layers."""
    pytest.importorskip("onnx")
    import nlstm.onnx as nonnx

    path = nonnx.save(nlstm.GRU(3, 8, seed=1), Path(_tmp()) / "g.onnx", lengths=False)
    model = nonnx.load(path)
    (label, own), = model.layers.items()
    twin = own._sibling()
    model.__dict__["_free_lanes"] = [{label: twin}]  # as if another call held the own lane
    x = _data(rng, 5, 2, 3)
    y = model.run(None, {"input": x})[0]
    assert twin._ws is not None and own._ws is None
    np.testing.assert_array_equal(y, own(x)[0])


def _tmp():
    import tempfile

    return tempfile.mkdtemp(prefix="nlstm-test-")


# The reported hang: one LSTM whose one-row batch splits its hidden units over 2 threads
# (spin barriers), called from two Python threads. Before the fix both workers spun at a
# barrier forever, and so did every later call that needed them.
_HANG_SCRIPT = textwrap.dedent("""
    import sys, threading
    import numpy as np
    import nlstm
    from nlstm import _threads
    _threads.cpus_available = lambda: 2
    nlstm.set_num_threads(2)
    split = []
    run_units = _threads.run_units
    _threads.run_units = lambda n, kernel, args: (split.append(n), run_units(n, kernel, args))[1]
    layer = nlstm.LSTM(8, 128, seed=0)
    x = np.random.default_rng(0).standard_normal((1500, 1, 8)).astype(np.float32)
    want = layer(x)[0]
    assert split, "the one-row unit split was not taken"
    models = [("layer", layer, lambda: layer(x)[0])]
    if sys.argv[1] == "onnx":
        import nlstm.onnx as nonnx, tempfile, os
        path = nonnx.save(layer, os.path.join(tempfile.mkdtemp(), "m.onnx"), lengths=False)
        model = nonnx.load(path)
        models.append(("onnx", model, lambda: model.run(["output"], {"input": x})[0]))
    for name, obj, call in models:
        bad = [0]
        def go():
            for _ in range(6):
                if not np.array_equal(call(), want):
                    bad[0] += 1
        ts = [threading.Thread(target=go, daemon=True) for _ in range(2)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        print(name, "wrong", bad[0], flush=True)
""")


@pytest.mark.skipif(not nlstm._threads.UNIT_SPLIT, reason="the unit split runs on x86-64 Linux only")
def test_shared_layer_with_unit_split_does_not_hang():
    try:
        import onnx  # noqa: F401
        which = "onnx"
    except ImportError:
        which = "layer"
    env = _child_env()
    try:
        out = subprocess.run([sys.executable, "-c", _HANG_SCRIPT, which], capture_output=True,
                             text=True, timeout=240, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail("two threads calling one unit-split LSTM hung")
    assert out.returncode == 0, out.stderr
    assert "layer wrong 0" in out.stdout, out.stdout
    if which == "onnx":
        assert "onnx wrong 0" in out.stdout, out.stdout


def _child_env(**extra) -> dict:
    """A small environment for a child Python: this tree, two Numba threads even on one
    CPU, the kernel cache in use."""
    import os
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "NUMBA_NUM_THREADS": "2", **extra}
    if "NLSTM_CACHE_DIR" in os.environ:
        env["NLSTM_CACHE_DIR"] = os.environ["NLSTM_CACHE_DIR"]
    return env


def _call_in_child(layer, model, x, q):
    layer(x)
    model.predict(x.transpose(1, 0, 2))
    q.put("ok")


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_a_forked_child_does_not_inherit_a_held_lock(rng):
    """A fork while another thread is inside a call copies its held lock; the child gets
    fresh locks, so its own calls run instead of waiting forever."""
    import multiprocessing

    layer = nlstm.GRU(3, 8, seed=0)
    model = nlstm.Sequential([nlstm.GRU(3, 8, batch_first=True, seed=0), nlstm.Linear(8, 1, seed=1)])
    x = _data(rng, 5, 2, 3)
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    with layer._lock, model._lock:  # as if another thread were mid-call at the fork
        child = ctx.Process(target=_call_in_child, args=(layer, model, x, q))
        child.start()
    child.join(120)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "the child waited for a lock held by a thread of its parent"
    assert child.exitcode == 0 and q.get(timeout=5) == "ok"


def test_onnx_stream_from_two_threads_takes_turns(rng):
    pytest.importorskip("onnx")
    import nlstm.onnx as nonnx

    path = nonnx.save(nlstm.GRU(3, 64, seed=4), Path(_tmp()) / "g.onnx", lengths=False)
    model = nonnx.load(path)
    x = _data(rng, 30, 8, 3)
    alone, shared = model.stream(), model.stream()
    want = [alone.run(["output"], {"input": x})[0].tobytes() for _ in range(40)]
    got = []
    run_threads(lambda i: got.extend(shared.run(["output"], {"input": x})[0].tobytes()
                                     for _ in range(20)))
    assert sorted(got) == sorted(want)
    for k, v in alone.states.items():
        for a, b in zip(shared.states[k], v):
            np.testing.assert_array_equal(a, b, err_msg=k)
