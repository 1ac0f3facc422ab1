"""nlstm.dask against a real dask.distributed cluster: 2 worker processes, one thread each.

The cluster starts once for the module (its start is most of this file's time); tests that
kill a worker wait for its nanny to bring the cluster back to 2 workers afterwards.
"""
import os
import signal
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

import nlstm  # noqa: E402
import nlstm.dask as nd  # noqa: E402

N_WORKERS = 2


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=N_WORKERS, processes=True, threads_per_worker=1,
                                  dashboard_address=None, worker_dashboard_address=None) as c:
        yield c


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster) as c:
        _wait_for_exactly(c, N_WORKERS)
        yield c
        _wait_for_exactly(c, N_WORKERS)  # after a kill: the nanny starts a new worker


def _data(seed=0, N=37, T=6, F=3, O=2, per_step=False):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, T, F)).astype(np.float32)
    Y = rng.standard_normal((N, T, O) if per_step else (N, O)).astype(np.float32)
    lengths = rng.integers(1, T + 1, N)
    return X, Y, lengths


def _model(output="last", F=3, H=5, O=2, cell="LSTM"):
    rec = getattr(nlstm, cell)(F, H, batch_first=True, seed=1)
    return nlstm.Sequential([rec, nlstm.Linear(H, O, seed=2)], output=output)


def _wait_for_exactly(client, n, timeout=60):
    deadline = time.monotonic() + timeout
    while len(client.scheduler_info()["workers"]) != n:
        assert time.monotonic() < deadline, f"the cluster did not get back to {n} workers"
        time.sleep(0.1)


def _kill_one(client, which=0):
    """SIGKILL one worker process (not its nanny, which starts a new one)."""
    pids = client.run(os.getpid)
    addr = sorted(pids)[which]
    os.kill(pids[addr], signal.SIGKILL)
    return addr


def _assert_weights(a, b, rtol=2e-5, atol=2e-6):
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=rtol, atol=atol, err_msg=k)


# ---- predict ------------------------------------------------------------------------------
@pytest.mark.parametrize("output", ["last", "sequence"])
def test_predict_equals_one_process(client, output):
    X, _, lengths = _data()
    m = _model(output)
    # Bit for bit when the chunks are multiples of the batch size (the BLAS rounds
    # differently for other batch sizes, in Sequential.predict as well).
    want = m.predict(X, lengths, batch_size=10)
    Xd = da.from_array(X, chunks=(10, -1, -1))
    got = nd.predict(client, m, Xd, lengths, batch_size=10)
    assert isinstance(got, da.Array) and got.chunks[0] == Xd.chunks[0]
    np.testing.assert_array_equal(got.compute(), want, err_msg=f"predict, output={output}")
    # NumPy input (chunked here, as batches), no lengths, Dask lengths
    np.testing.assert_array_equal(nd.predict(client, m, X).compute(), m.predict(X))
    got = nd.predict(client, m, X, da.from_array(lengths, chunks=7), batch_size=4).compute()
    np.testing.assert_array_equal(got, m.predict(X, lengths, batch_size=4))


def test_predict_single_layer(client):
    X, _, lengths = _data(1)
    layer = nlstm.GRU(3, 4, bidirectional=True, seed=3)  # time-major: the result is batch-first
    want = layer.forward(X.transpose(1, 0, 2), lengths=lengths, train=False)[0].transpose(1, 0, 2)
    got = nd.predict(client, layer, X, lengths).compute()
    np.testing.assert_array_equal(got, want, err_msg="bidirectional GRU y")


def test_predict_survives_a_killed_worker(client):
    X, _, lengths = _data(2, N=3000, T=20)
    m = _model()
    want = m.predict(X, lengths, batch_size=100)
    result = nd.predict(client, m, da.from_array(X, chunks=(100, -1, -1)), lengths, batch_size=100)
    future = client.compute(result)
    _kill_one(client)
    np.testing.assert_array_equal(future.result(timeout=120), want)


def test_predict_survives_losing_every_worker(client):
    # The model must come from the graph: a scattered copy lost with every worker that held
    # it cannot be recomputed, and everything reading it is cancelled.
    X, _, lengths = _data(3, N=600, T=20)
    m = _model()
    want = m.predict(X, lengths, batch_size=100)
    result = nd.predict(client, m, da.from_array(X, chunks=(100, -1, -1)), lengths, batch_size=100)
    client.wait_for_workers(N_WORKERS, timeout=60)
    pids = client.run(os.getpid)
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    _wait_for_exactly(client, 0)
    _wait_for_exactly(client, N_WORKERS)
    np.testing.assert_array_equal(client.compute(result).result(timeout=120), want)


# ---- fit ----------------------------------------------------------------------------------
FIT = dict(epochs=2, batch_size=8, seed=5, verbose=0)


def test_fit_equals_sequential_fit_on_1_2_3_workers(client, cluster):
    X, Y, lengths = _data()
    ref = _model()
    want = ref.fit(X, Y, lengths, **FIT)
    Xd = client.persist(da.from_array(X, chunks=(7, -1, -1)))  # the caller's persisted data

    one = _model()
    hist = nd.fit(client, one, Xd, Y, lengths, workers=sorted(client.scheduler_info()["workers"])[:1], **FIT)
    two = _model()
    stats = {}
    hist2 = nd.fit(client, two, Xd, Y, lengths, stats=stats, **FIT)
    assert stats["shards"] == 2 and stats["steps"] == 2 * 5
    P = sum(p.size for p in two.params.values())
    assert stats["bytes_per_step"] == 2 * 2 * 4 * P  # weights out, gradient back, two workers
    cluster.scale(3)
    try:
        client.wait_for_workers(3, timeout=60)
        three = _model()
        stats3 = {}
        hist3 = nd.fit(client, three, Xd, Y, lengths, stats=stats3, **FIT)
        assert stats3["shards"] == 3
    finally:
        cluster.scale(N_WORKERS)
        _wait_for_exactly(client, N_WORKERS)
    for name, m, h in (("1 worker", one, hist), ("2 workers", two, hist2), ("3 workers", three, hist3)):
        _assert_weights(ref, m)
        assert set(h) == set(want), name
        assert h["epoch"] == want["epoch"] and h["lr"] == want["lr"], name
        np.testing.assert_allclose(h["loss"], want["loss"], rtol=1e-5, err_msg=name)
    np.testing.assert_array_equal(Xd.compute(), X, err_msg="fit released the caller's data")
    # the weights moved: a test that cannot fail is a defect
    assert not np.allclose(_model().params["1.weight"], ref.params["1.weight"])


def test_fit_options_match(client):
    """Sequence output, TBPTT, clipping, SGD with a schedule, validation and early stopping."""
    X, Y, lengths = _data(3, N=30, T=8, per_step=True)
    Xv, Yv, lv = _data(4, N=9, T=8, per_step=True)
    kw = dict(epochs=3, batch_size=7, seed=1, verbose=0, tbptt=3, clip_norm=0.05,
              optimizer="sgd", lr=0.5, schedule="cosine", early_stopping=2,
              validation_data=(Xv, Yv, lv))
    ref = _model("sequence", cell="GRU")
    want = ref.fit(X, Y, lengths, **kw)
    got_m = _model("sequence", cell="GRU")
    got = nd.fit(client, got_m, X, Y, lengths, **kw)
    _assert_weights(ref, got_m)
    np.testing.assert_allclose(got["val_loss"], want["val_loss"], rtol=1e-5)
    assert got["lr"] == want["lr"]


def test_fit_and_predict_with_workers_in_one_process():
    """Workers in one process (processes=False; or one worker process running tasks in
    several threads) each use a copy of the model of their own: two tasks at once on one
    copy broke the run (a training forward and its backward on different threads)."""
    X, Y, lengths = _data(6, N=200, T=20)
    kw = dict(FIT, batch_size=40)
    ref = _model(cell="GRU")
    want = ref.fit(X, Y, lengths, **kw)
    with distributed.LocalCluster(n_workers=2, processes=False, threads_per_worker=1,
                                  dashboard_address=None, worker_dashboard_address=None) as cl, \
            distributed.Client(cl) as c:
        got_m = _model(cell="GRU")
        Xd = da.from_array(X, chunks=(50, -1, -1))
        got = nd.fit(c, got_m, Xd, Y, lengths, **kw)
        pred = nd.predict(c, got_m, Xd, lengths).compute()
    _assert_weights(ref, got_m)
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    np.testing.assert_allclose(pred, ref.predict(X, lengths), rtol=1e-5, atol=1e-6)


def test_fit_survives_a_killed_worker(client):
    X, Y, lengths = _data(6)
    ref = _model()
    ref.fit(X, Y, lengths, **FIT)
    m = _model()
    killed = []

    def kill_after_first(epoch, logs):
        if epoch == 1:
            killed.append(_kill_one(client, 1))

    stats = {}
    hist = nd.fit(client, m, da.from_array(X, chunks=(10, -1, -1)), Y, lengths,
                  callback=kill_after_first, stats=stats, **FIT)
    assert killed and stats["workers_lost"] >= 1
    assert len(hist["loss"]) == 2
    _assert_weights(ref, m)  # the lost rows moved; the run went on from the last step


def test_fit_killed_mid_step_checkpoint_and_resume(client, tmp_path):
    """Training on one worker that dies during a step: with no worker left, fit writes a
    checkpoint and says so; resume continues from it to Sequential.fit's weights."""
    X, Y, lengths = _data(7, N=200, T=30)
    kw = dict(epochs=3, batch_size=50, seed=2, verbose=0)
    ref = _model()
    ref.fit(X, Y, lengths, **kw)
    m = _model()
    ckpt = str(tmp_path / "run.npz")
    addr = sorted(client.scheduler_info()["workers"])[0]
    pid = client.run(os.getpid, workers=[addr])[addr]

    def kill_in_epoch_2(epoch, logs):
        if epoch == 1:  # kill while epoch 2's steps run
            threading.Timer(0.05, os.kill, (pid, signal.SIGKILL)).start()

    with pytest.raises(RuntimeError, match="resume="):
        nd.fit(client, m, X, Y, lengths, workers=[addr], checkpoint=ckpt, worker_timeout=1,
               callback=kill_in_epoch_2, **kw)
    assert os.path.exists(ckpt)
    client.wait_for_workers(N_WORKERS, timeout=60)
    hist = nd.fit(client, m, X, Y, lengths, resume=ckpt, **kw)
    assert hist["epoch"] == [1, 2, 3]
    _assert_weights(ref, m)


# ---- bad input ----------------------------------------------------------------------------
def test_bad_input_clear_errors_nothing_changed(client, cluster):
    X, Y, lengths = _data()
    m = _model()
    before = m.state_dict()

    with distributed.Client(cluster) as other:
        pass
    with pytest.raises(ValueError, match="client"):
        nd.predict(other, m, X)
    with pytest.raises(ValueError, match="client"):
        nd.fit(other, m, X, Y)
    with pytest.raises(TypeError, match="client"):
        nd.predict("tcp://localhost:8786", m, X)

    chunked_t = da.from_array(X, chunks=(10, 2, -1))
    with pytest.raises(ValueError, match="first axis"):
        nd.predict(client, m, chunked_t)
    with pytest.raises(ValueError, match="first axis"):
        nd.fit(client, m, chunked_t, Y)

    with pytest.raises(ValueError, match="lengths"):
        nd.predict(client, m, X, lengths[:-1])
    with pytest.raises(ValueError, match="lengths"):
        nd.fit(client, m, X, Y, lengths[:-1])
    with pytest.raises(ValueError, match="Y"):
        nd.fit(client, m, X, Y[:-1])

    unsaveable = _model()
    unsaveable.metadata = {"not json": {1, 2}}
    with pytest.raises(ValueError, match="JSON"):
        nd.predict(client, unsaveable, X)
    with pytest.raises(ValueError, match="JSON"):
        nd.fit(client, unsaveable, X, Y)

    bad = X.copy()
    bad[3, 2, 1] = np.nan  # found on the worker, before any step
    with pytest.raises(ValueError, match="NaN"):
        nd.fit(client, m, bad, Y, **FIT)
    with pytest.raises(ValueError, match="X.shape\\[2\\]"):
        nd.fit(client, m, X[:, :, :2], Y)
    with pytest.raises(TypeError, match="Sequential"):
        nd.fit(client, nlstm.LSTM(3, 4), X, Y)
    with pytest.raises(ValueError, match="resume="):
        nd.fit(client, m, X, Y, resume=os.path.join(os.path.dirname(__file__), "conftest.py"))
    for k, v in before.items():
        np.testing.assert_array_equal(m.params[k], v, err_msg=k)


# ---- command line -------------------------------------------------------------------------
def test_cli_train_and_predict_on_the_cluster(cluster, client, tmp_path, capsys):
    from nlstm.cli import main

    rng = np.random.default_rng(0)
    t = np.arange(150)
    series = np.sin(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(len(t))
    csv_path = tmp_path / "s.csv"
    csv_path.write_text("y\n" + "\n".join(f"{v:.5f}" for v in series) + "\n")
    common = ["--csv", csv_path, "--target", "y", "--window", 8, "--epochs", 2, "--hidden", 4]
    common = list(map(str, common))
    assert main(["train", *common, "--out", str(tmp_path / "local.npz")]) == 0
    assert main(["train", *common, "--out", str(tmp_path / "dask.npz"),
                 "--scheduler", cluster.scheduler_address]) == 0
    local, remote = nlstm.load(tmp_path / "local.npz"), nlstm.load(tmp_path / "dask.npz")
    _assert_weights(local, remote)
    assert main(["predict", "--model", str(tmp_path / "local.npz"), "--csv", str(csv_path),
                 "--out", str(tmp_path / "a.csv")]) == 0
    assert main(["predict", "--model", str(tmp_path / "local.npz"), "--csv", str(csv_path),
                 "--out", str(tmp_path / "b.csv"), "--workers", "1"]) == 0
    a = np.loadtxt(tmp_path / "a.csv", delimiter=",", skiprows=1)
    b = np.loadtxt(tmp_path / "b.csv", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(a, b)
    capsys.readouterr()
    assert main(["predict", "--model", str(tmp_path / "local.npz"), "--csv", str(csv_path),
                 "--out", str(tmp_path / "c.csv"), "--workers", "1", "--scheduler", "tcp://x:1"]) == 2
    assert "not allowed with" in capsys.readouterr().err


def test_attribute_without_import():
    """``nlstm.dask`` without ``import nlstm.dask`` is this module (it was once nlstm.onnx)."""
    import subprocess
    import sys

    code = "import nlstm; print(nlstm.dask.__name__, nlstm.onnx.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["nlstm.dask", "nlstm.onnx"]
