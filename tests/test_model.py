"""nlstm.Sequential: whole-model gradients, fit, TBPTT, determinism, predict/evaluate, errors."""
import sys

import numpy as np
import pytest

import nlstm
from gradcheck import sampled_numeric_grad
from nlstm.data import adding_problem


def randomize_biases(model, rng):
    for k, v in model.params.items():
        if "bias" in k:
            v[:] = rng.uniform(-0.5, 0.5, v.shape)


def check_gradients(model, x, y, lengths, rtol=1e-5, atol=1e-8):
    """Backward of (model + loss) against central differences, at random elements of every
    parameter array and of x."""
    rng = np.random.default_rng(0)
    model.zero_grad()
    out, _ = model.forward(x, lengths, train=True)
    model.loss.forward(out, y, lengths)
    dx = model.backward(model.loss.backward())
    f = lambda: model.loss.forward(model(x, lengths), y, lengths)
    for name, analytic, a in [(k, model.grads[k], p) for k, p in model.params.items()] + [("dx", dx, x)]:
        for i, num in sampled_numeric_grad(f, a, rng).items():
            np.testing.assert_allclose(analytic[i], num, rtol=rtol, atol=atol, err_msg=f"{name}{list(i)}")
    assert all(np.abs(g).max() > 0 for g in model.grads.values()), "every gradient is exercised"


def test_gradients_last_step_bidirectional_with_lengths():
    rng = np.random.default_rng(0)
    B, T, I = 4, 5, 3
    model = nlstm.Sequential([
        nlstm.LSTM(I, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=np.float64, seed=1),
        nlstm.Linear(8, 2, dtype=np.float64, seed=2),
    ], output="last")
    randomize_biases(model, rng)
    x = rng.standard_normal((B, T, I))
    y = rng.standard_normal((B, 2))
    check_gradients(model, x, y, np.array([5, 2, 1, 3]))


def test_gradients_every_step_time_major_layers_and_cross_entropy():
    rng = np.random.default_rng(1)
    B, T, I, C = 3, 6, 2, 4
    layers = [nlstm.Linear(I, 3, dtype=np.float64, seed=0),
              nlstm.LSTM(3, 5, dtype=np.float64, seed=1)]             # time-major inside
    if hasattr(nlstm, "GRU"):
        layers.append(nlstm.GRU(5, 4, batch_first=True, dtype=np.float64, seed=2))
    else:
        layers.append(nlstm.LSTM(5, 4, batch_first=True, dtype=np.float64, seed=2))
    width = 4
    if "proj_size" in nlstm.LSTM(1, 2).get_config():  # an output narrower than hidden_size
        layers.append(nlstm.LSTM(4, 5, proj_size=3, batch_first=True, dtype=np.float64, seed=4))
        width = 3
    layers.append(nlstm.Linear(width, C, dtype=np.float64, seed=3))
    model = nlstm.Sequential(layers, output="sequence", loss="cross_entropy")
    randomize_biases(model, rng)
    x = rng.standard_normal((B, T, I))
    y = rng.integers(0, C, (B, T))
    check_gradients(model, x, y, np.array([6, 0, 4]))


def test_last_step_reads_each_directions_final_output():
    rng = np.random.default_rng(2)
    lstm = nlstm.LSTM(3, 4, bidirectional=True, batch_first=True, dtype=np.float64, seed=0)
    head = nlstm.Linear(8, 1, dtype=np.float64, seed=1)
    model = nlstm.Sequential([lstm, head])
    x = rng.standard_normal((3, 6, 3))
    lengths = np.array([6, 2, 4])
    _, (h_n, _) = lstm(x, lengths=lengths)
    want = head(np.concatenate([h_n[0], h_n[1]], axis=1))
    np.testing.assert_allclose(model(x, lengths), want, rtol=1e-12, err_msg="last-step head")


def test_fit_learns_the_adding_problem():
    X, Y = adding_problem(3000, 20, seed=0)
    Xv, Yv = adding_problem(300, 20, seed=1)
    model = nlstm.Sequential([nlstm.LSTM(2, 16, batch_first=True, seed=1), nlstm.Linear(16, 1, seed=2)])
    hist = model.fit(X, Y, epochs=10, batch_size=32, lr=0.01, clip_norm=1.0, seed=1,
                     validation_data=(Xv, Yv), verbose=0)
    assert set(hist) == {"epoch", "loss", "val_loss", "lr", "time"}
    assert hist["epoch"] == list(range(1, 11)) and len(hist["val_loss"]) == 10
    mse = model.evaluate(Xv, Yv)
    assert mse == pytest.approx(hist["val_loss"][-1], rel=1e-6)
    assert mse < 0.02, f"test MSE {mse} is not well under the 0.167 of predicting the mean"


def small_model(seed=0, dropout=True):
    layers = [nlstm.LSTM(2, 6, num_layers=2, batch_first=True, seed=seed, dropout=0.3 if dropout else 0.0)]
    if dropout:
        layers.append(nlstm.Dropout(0.2, seed=seed))
    layers.append(nlstm.Linear(6, 1, seed=seed + 1))
    return nlstm.Sequential(layers)


def test_fit_is_deterministic_for_a_seed():
    X, Y = adding_problem(100, 8, seed=0)
    lengths = np.random.default_rng(0).integers(1, 9, 100)
    runs = []
    for seed in (3, 3, 4):
        m = small_model()
        m.fit(X, Y, lengths=lengths, epochs=2, batch_size=16, seed=seed, verbose=0)
        runs.append(m.state_dict())
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=k)
    assert any(not np.array_equal(runs[0][k], runs[2][k]) for k in runs[0]), "the seed matters"


def test_dropout_only_in_training():
    X, _ = adding_problem(20, 8, seed=0)
    m = small_model()
    np.testing.assert_array_equal(m.predict(X), m.predict(X))
    a, _ = m.forward(X, train=True)
    m._cache = None
    b, _ = m.forward(X, train=True)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("output", ["last", "sequence"])
def test_tbptt_matches_chunks_by_hand(output):
    rng = np.random.default_rng(5)
    N, T, k = 5, 7, 3
    X = rng.standard_normal((N, T, 2))
    lengths = np.array([7, 3, 5, 1, 6])
    Y = rng.standard_normal((N, 1) if output == "last" else (N, T, 1))

    def make():
        return nlstm.Sequential([nlstm.LSTM(2, 4, batch_first=True, dtype=np.float64, seed=0),
                                 nlstm.Linear(4, 1, dtype=np.float64, seed=1)], output=output)

    fitted = make()
    fitted.fit(X, Y, lengths=lengths, epochs=1, batch_size=N, shuffle=False, tbptt=k,
               optimizer=nlstm.SGD(fitted, lr=0.1), verbose=0)

    by_hand = make()
    opt = nlstm.SGD(by_hand, lr=0.1)
    state = None
    for t0 in range(0, T, k):
        t1 = min(T, t0 + k)
        lc = np.clip(lengths - t0, 0, t1 - t0)
        by_hand.zero_grad()
        out, state = by_hand.forward(X[:, t0:t1], lc, state=state)
        if output == "sequence":
            by_hand.loss.forward(out, Y[:, t0:t1], lc)
        else:
            ends_here = ((lengths - 1 >= t0) & (lengths - 1 < t1)).astype(int)
            by_hand.loss.forward(out, Y, ends_here)
        by_hand.backward(by_hand.loss.backward())
        opt.step()
    changed = False
    for key, v in by_hand.state_dict().items():
        np.testing.assert_allclose(fitted.params[key], v, rtol=1e-12, atol=1e-15, err_msg=key)
        changed |= not np.allclose(v, make().params[key])
    assert changed


def test_tbptt_any_batch_size_and_whole_chunk_equals_plain_fit():
    X, Y = adding_problem(7, 10, seed=0)
    runs = []
    for tbptt in (None, 10, 4):
        m = nlstm.Sequential([nlstm.LSTM(2, 4, batch_first=True, seed=0), nlstm.Linear(4, 1, seed=1)])
        hist = m.fit(X, Y, epochs=2, batch_size=3, seed=0, tbptt=tbptt, verbose=0)
        assert np.isfinite(hist["loss"]).all()
        runs.append(m.state_dict())
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=k)
    assert any(not np.array_equal(runs[0][k], runs[2][k]) for k in runs[0])
    bi = nlstm.Sequential([nlstm.LSTM(2, 4, bidirectional=True, batch_first=True), nlstm.Linear(8, 1)])
    with pytest.raises(ValueError, match="bidirectional"):
        bi.fit(X, Y, tbptt=3, verbose=0)


def test_predict_and_evaluate_honour_lengths():
    rng = np.random.default_rng(0)
    model = nlstm.Sequential([nlstm.LSTM(2, 3, batch_first=True, dtype=np.float64, seed=0),
                              nlstm.Linear(3, 2, dtype=np.float64, seed=1)], output="sequence")
    X = rng.standard_normal((5, 4, 2))
    lengths = np.array([4, 0, 2, 3, 1])
    Y = rng.standard_normal((5, 4, 2))
    pred = model.predict(X, lengths, batch_size=2)
    for b, n in enumerate(lengths):
        assert not pred[b, n:].any(), "steps past a row's length are zero"
    np.testing.assert_allclose(pred, model.predict(X, lengths), rtol=1e-12, err_msg="batch size")
    mask = np.arange(4)[None, :] < lengths[:, None]
    want = np.mean((pred - Y)[mask] ** 2)
    Y_pad = np.where(mask[..., None], Y, np.nan)
    assert model.evaluate(X, Y_pad, lengths, batch_size=3) == pytest.approx(want, rel=1e-12)


def test_early_stopping_restores_the_best_weights(capsys):
    X, Y = adding_problem(200, 10, seed=0)
    Xv, Yv = adding_problem(50, 10, seed=1)
    model = small_model(dropout=False)
    hist = model.fit(X, Y, epochs=6, batch_size=20, lr=0.05, validation_data=(Xv, Yv),
                     early_stopping=1, seed=0, verbose=0)
    assert model.evaluate(Xv, Yv) == pytest.approx(min(hist["val_loss"]), rel=1e-6)
    assert capsys.readouterr() == ("", "")  # quiet when asked
    calls = []
    model.fit(X, Y, epochs=5, verbose=2, callback=lambda e, logs: calls.append(logs) or e == 2)
    assert len(calls) == 2 and calls[0]["epoch"] == 1  # the callback stopped it
    out = capsys.readouterr().out
    assert out.count("epoch ") == 2 and "loss" in out
    model.fit(X, Y, epochs=1, verbose="auto")  # not a terminal here: no bar
    assert capsys.readouterr().err == ""


def test_state_dict_config_and_shared_arrays():
    model = small_model()
    assert model.params["0.weight_ih_l0"] is model.layers[0].params["weight_ih_l0"]
    assert model.grads["2.bias"] is model.layers[2].grads["bias"]
    again = nlstm.Sequential.from_config(model.get_config())
    again.load_state_dict(model.state_dict())
    X, _ = adding_problem(4, 5, seed=0)
    np.testing.assert_array_equal(again.predict(X), model.predict(X))
    before = model.state_dict()
    bad = dict(before)
    bad["2.weight"] = np.zeros((2, 6))
    with pytest.raises(ValueError, match="2.weight"):
        model.load_state_dict(bad)
    for k in before:
        np.testing.assert_array_equal(model.params[k], before[k], err_msg=k)


@pytest.mark.filterwarnings("ignore:overflow")
def test_diverging_loss_is_reported():
    model = small_model(dropout=False)
    model.layers[-1].params["weight"][:] = 3e38
    X, Y = adding_problem(8, 5, seed=0)
    with pytest.raises(FloatingPointError, match="not finite"):
        model.fit(X, Y, epochs=1, verbose=0)


def test_construction_and_fit_errors():
    L, Lin = nlstm.LSTM, nlstm.Linear
    for call, exc, msg in [
        (lambda: nlstm.Sequential([Lin(2, 3)]), ValueError, "recurrent"),
        (lambda: nlstm.Sequential([L(2, 3), Lin(4, 1)]), ValueError, "expects 4 input features"),
        (lambda: nlstm.Sequential([L(2, 3), Lin(3, 1, dtype=np.float64)]), TypeError, "dtype"),
        (lambda: nlstm.Sequential([L(2, 3)], output="first"), ValueError, "output"),
        (lambda: nlstm.Sequential([L(2, 3)], loss="mae"), ValueError, "loss"),
        (lambda: nlstm.Sequential(L(2, 3)), TypeError, "list"),
        (lambda: nlstm.Sequential([L(2, 3), "relu"]), TypeError, r"layers\[1\]"),
    ]:
        with pytest.raises(exc, match=msg):
            call()
    m = nlstm.Sequential([L(2, 3, batch_first=True, seed=0), Lin(3, 1, seed=0)])
    before = m.state_dict()
    X, Y = adding_problem(6, 4, seed=0)
    for kwargs, exc, msg in [
        (dict(X=X[0], Y=Y), ValueError, "X must be 3-D"),
        (dict(X=X[..., :1], Y=Y), ValueError, "Expected 2, got 1"),
        (dict(X=np.where(X > 0.5, np.nan, X), Y=Y), ValueError, "X contains NaN"),
        (dict(X=X, Y=Y[:5]), ValueError, r"Y must have shape \(6, 1\)"),
        (dict(X=X, Y=Y, lengths=[1] * 5), ValueError, "lengths must have shape"),
        (dict(X=X, Y=Y, lengths=[9] * 6), ValueError, "lengths must be in 0..4"),
        (dict(X=X, Y=Y, epochs=0), ValueError, "epochs"),
        (dict(X=X, Y=Y, batch_size=1.5), TypeError, "batch_size"),
        (dict(X=X, Y=Y, validation_data=X), TypeError, "validation_data"),
        (dict(X=X, Y=Y, validation_data=(X, Y[:2])), ValueError, "validation Y"),
        (dict(X=X, Y=Y, optimizer="adagrad"), ValueError, "optimizer"),
        (dict(X=X, Y=Y, optimizer=nlstm.Adam(L(2, 3))), ValueError, "this model"),
        (dict(X=X, Y=Y, schedule="linear"), ValueError, "schedule"),
        (dict(X=X, Y=Y, clip_norm=-1), ValueError, "clip_norm"),
        (dict(X=X, Y=Y, verbose=3), ValueError, "verbose"),
    ]:
        with pytest.raises(exc, match=msg):
            m.fit(verbose=0, **kwargs) if "verbose" not in kwargs else m.fit(**kwargs)
    for k in before:
        np.testing.assert_array_equal(m.params[k], before[k], err_msg=k)
    with pytest.raises(ValueError, match="forward"):
        m.backward(np.zeros((6, 1)))


def test_schedules_optimizers_and_quiet_fallback_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now fails
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    X, Y = adding_problem(40, 6, seed=0)
    m = nlstm.Sequential([nlstm.LSTM(2, 4, batch_first=True, seed=0), nlstm.Linear(4, 1, seed=1)])
    hist = m.fit(X, Y, epochs=3, batch_size=16, optimizer="sgd", lr=0.1, schedule="cosine", verbose=1)
    assert hist["lr"][0] == pytest.approx(0.1) and hist["lr"][1] == pytest.approx(0.075)
    assert capsys.readouterr() == ("", "")
    opt = nlstm.Adam(m, lr=0.01)
    hist = m.fit(X, Y, epochs=4, optimizer=opt, schedule=nlstm.StepLR(opt, 2, gamma=0.5), verbose=0)
    assert hist["lr"] == pytest.approx([0.01, 0.01, 0.005, 0.005])
