"""LayerNormLSTM and zoneout (LSTM, LayerNormLSTM, GRU): zoneout against the float64 oracle
with the same masks (training) and with the expectation (inference), every gradient by
finite differences, streaming, the seeded masks, saving and the bad arguments. The plain
LayerNormLSTM runs the whole reference suite through tests/cases.py."""
import re

import numpy as np
import pytest

import nlstm
import reference as R
from gradcheck import sampled_numeric_grad

# the LSTM's variants (proj_size aside), in nlstm's and the oracle's spelling
ACTS = dict(activations=("HardSigmoid", "Softsign", "Elu"), activation_alpha=[0.3, 0.8],
            activation_beta=[0.45])
REF_ACTS = [[("HardSigmoid", 0.3, 0.45), ("Softsign", 0, 0), ("Elu", 0.8, 0)]]
ONNX = dict(peephole=True, clip=1.5, input_forget=True)


def _with(cls, **kw):
    return lambda *a, **k: cls(*a, **kw, **k)


ZONEOUT_KINDS = {
    "lstm": (nlstm.LSTM, R.LSTMCell),
    "lnlstm": (nlstm.LayerNormLSTM, R.LayerNormLSTMCell),
    "gru": (nlstm.GRU, lambda: R.GRUCell(True)),
    "gru_lbr0": (lambda *a, **k: nlstm.GRU(*a, linear_before_reset=False, **k),
                 lambda: R.GRUCell(False)),
    "lstm_peephole": (_with(nlstm.LSTM, peephole=True), lambda: R.LSTMCell(peephole=True)),
    "lstm_clip": (_with(nlstm.LSTM, clip=0.9), lambda: R.LSTMCell(clip=0.9)),
    "lstm_input_forget": (_with(nlstm.LSTM, input_forget=True),
                          lambda: R.LSTMCell(input_forget=True)),
    "lstm_acts": (_with(nlstm.LSTM, **ACTS), lambda: R.LSTMCell(acts=REF_ACTS)),
    "lstm_all_onnx": (_with(nlstm.LSTM, **ONNX, **ACTS), lambda: R.LSTMCell(**ONNX, acts=REF_ACTS)),
    "lnlstm_all_onnx": (_with(nlstm.LayerNormLSTM, **ONNX, **ACTS),
                        lambda: R.LayerNormLSTMCell(**ONNX, acts=REF_ACTS)),
    "lstm_proj": (_with(nlstm.LSTM, proj_size=3, peephole=True), lambda: R.LSTMCell(proj=True, peephole=True)),
    "lnlstm_proj": (_with(nlstm.LayerNormLSTM, proj_size=2, **ACTS),
                    lambda: R.LayerNormLSTMCell(proj=True, acts=REF_ACTS)),
}


def _model(kind, p, seed=0, dtype=np.float64, I=3, H=4, **kw):
    cls, _ = ZONEOUT_KINDS[kind]
    m = cls(I, H, num_layers=2, bidirectional=True, dtype=dtype, seed=seed, zoneout=p, **kw)
    rng = np.random.default_rng(seed + 100)
    for name, a in m.params.items():
        if name.startswith("ln_"):  # away from the init's 1 and 0
            a[...] = rng.uniform(0.5, 1.5, a.shape) if "weight" in name else rng.uniform(-.5, .5, a.shape)
    return m


def _data(m, T=5, B=3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, m.input_size))
    LD = m.num_layers * m.num_directions
    init = [rng.standard_normal((LD, B, n)) for n in m._state_sizes()]
    lengths = np.array([T, 2, 0][:B] + [T] * max(0, B - 3))
    return x, init, lengths


def _masks(m, T, B, fill=None):
    """The workspace's zoneout masks as the oracle's {(k, d, b, t): [mask per state]}, or
    every mask ``fill``."""
    out = {}
    for k in range(m.num_layers):
        for d in range(m.num_directions):
            bufs = m._ws.extra[k][d]["zoneout"] if fill is None else None
            for b in range(B):
                for t in range(T):
                    if fill is None:
                        out[(k, d, b, t)] = [np.array(z[t, b], np.float64) for z in bufs]
                    else:
                        out[(k, d, b, t)] = [np.full(n, fill) for n in m._state_sizes()]
    return out


def _state(init):
    return init[0] if len(init) == 1 else tuple(init)


def _list(s):
    return list(s) if isinstance(s, tuple) else [s]


def _train(m, x, init, lengths, dtype, seed):
    """A training forward and backward in dtype, with random dy and final-state gradients
    (float64, from seed): (y, final, dx, dinit, dy, dfinal)."""
    rng = np.random.default_rng(seed)
    y, final = m.forward(x.astype(dtype), _state([a.astype(dtype) for a in init]), lengths)
    dy = rng.standard_normal(y.shape)
    dfinal = [rng.standard_normal(a.shape) for a in init]
    m.zero_grad()
    dx, dinit = m.backward(dy.astype(dtype), *[a.astype(dtype) for a in dfinal])
    return y, final, dx, dinit, dy, dfinal


def _assert_reference(m, kind, x, init, lengths, masks, run, tol):
    """``_train``'s results ``run`` against the oracle's with the same zoneout masks."""
    y, final, dx, dinit, dy, dfinal = run
    cell = R.Zoneout(ZONEOUT_KINDS[kind][1](), masks)
    ry, rfinal, cache = R.forward(cell, m.params, x, init, lengths, 2, True)
    rdx, rdinit, rgrads = R.backward(cache, dy, dfinal)
    np.testing.assert_allclose(y, ry, err_msg="y", **tol)
    np.testing.assert_allclose(dx, rdx, err_msg="dx", **tol)
    for i, (g, w) in enumerate(zip(_list(final), rfinal)):
        np.testing.assert_allclose(g, w, err_msg=f"final[{i}]", **tol)
    for i, (g, w) in enumerate(zip(_list(dinit), rdinit)):
        np.testing.assert_allclose(g, w, err_msg=f"dinit[{i}]", **tol)
    assert set(rgrads) == set(m.grads)
    for k, g in rgrads.items():
        np.testing.assert_allclose(m.grads[k], g, err_msg=k, **tol)


@pytest.mark.parametrize("kind", list(ZONEOUT_KINDS))
def test_zoneout_inference_is_the_expectation(kind):
    m = _model(kind, 0.3)
    x, init, lengths = _data(m)
    y, final = m(x, _state(init), lengths)
    cell = R.Zoneout(ZONEOUT_KINDS[kind][1](), _masks(m, *x.shape[:2], fill=0.3))
    ry, rfinal, _ = R.forward(cell, m.params, x, init, lengths, 2, True)
    np.testing.assert_allclose(y, ry, rtol=1e-10, atol=1e-12, err_msg="y")
    for g, w in zip(_list(final), rfinal):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg="final")
    # and not the plain cell's output
    plain, _, _ = R.forward(ZONEOUT_KINDS[kind][1](), m.params, x, init, lengths, 2, True)
    assert np.abs(y - plain).max() > 1e-3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", list(ZONEOUT_KINDS))
def test_zoneout_training_matches_reference_with_same_masks(kind, dtype):
    m = _model(kind, 0.4, dtype=dtype)
    x, init, lengths = _data(m)
    run = _train(m, x, init, lengths, dtype, 5)
    masks = _masks(m, *x.shape[:2])
    vals = np.concatenate([np.concatenate(v) for v in masks.values()])
    assert set(np.unique(vals)) == {0.0, 1.0}  # the masks really are sampled
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-3, atol=2e-4)
    _assert_reference(m, kind, x, init, lengths, masks, run, tol)


@pytest.mark.parametrize("p", [0.0, 0.35])
@pytest.mark.parametrize("kind", list(ZONEOUT_KINDS))
def test_every_gradient_by_finite_differences(kind, p):
    """float64; with zoneout, every forward draws the same masks (the stream reset)."""
    m = _model(kind, p, seed=3)
    x, init, lengths = _data(m, seed=4)
    rng = np.random.default_rng(7)
    y, _ = m.forward(x, _state(init), lengths)
    dy = rng.standard_normal(y.shape)
    dfinal = [rng.standard_normal(a.shape) for a in init]
    _assert_numeric(m, x, init, lengths, dy, dfinal, list(m.params), rng, 6, inits=True)


def _assert_numeric(m, x, init, lengths, dy, dfinal, names, rng, n, inits=False):
    """The gradients of x (and of the initial states), and of the parameters ``names``, by
    central differences at n sampled entries each (float64; every forward draws the same
    zoneout masks: the stream reset)."""
    def loss():
        m._dropout_rng = np.random.default_rng(11)
        y, final = m.forward(x, _state(init), lengths)
        return float((y * dy).sum() + sum((f * g).sum() for f, g in zip(_list(final), dfinal)))

    loss()
    m.zero_grad()
    dx, dinit = m.backward(dy, *dfinal)
    grads = {k: v.copy() for k, v in m.grads.items()}
    checks = [("x", x, dx)]
    if inits:
        checks += [(f"init[{i}]", a, g) for i, (a, g) in enumerate(zip(init, _list(dinit)))]
    checks += [(k, m.params[k], grads[k]) for k in names]
    for name, a, g in checks:
        for index, num in sampled_numeric_grad(loss, a, rng, n=n).items():
            assert abs(g[index] - num) <= 1e-6 + 1e-5 * abs(num), (name, index, g[index], num)


@pytest.mark.parametrize("kind", list(ZONEOUT_KINDS))
def test_stream_matches_inference(kind):
    cls, _ = ZONEOUT_KINDS[kind]
    m = cls(3, 5, num_layers=2, dtype=np.float64, seed=2, zoneout=0.25)
    x, init, _ = _data(m, T=6, B=2)
    init = [a[:2] for a in init]
    y, final = m(x, _state(init))
    state = _state(init)
    for t in range(x.shape[0]):
        yt, state = m.step(x[t], state)
        np.testing.assert_allclose(yt, y[t], rtol=1e-12, atol=1e-13, err_msg=f"y[{t}]")
    for g, w in zip(_list(state), _list(final)):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13)
    m32 = cls(3, 5, num_layers=2, seed=2, zoneout=0.25)
    s = m32.stream()
    y32, _ = m32(x[:, :1].astype(np.float32))
    for t in range(x.shape[0]):
        np.testing.assert_allclose(s(x[t, 0].astype(np.float32)), y32[t, 0], rtol=1e-5, atol=1e-6)


def test_layernorm_lstm_stream_without_zoneout():
    m = nlstm.LayerNormLSTM(3, 4, dtype=np.float64, seed=1)
    x = np.random.default_rng(0).standard_normal((4, 3))
    y, _ = m(x)
    s = m.stream()
    np.testing.assert_allclose(np.stack([s(v) for v in x]), y, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind", list(ZONEOUT_KINDS))
def test_masks_come_from_the_seed(kind):
    x = np.random.default_rng(0).standard_normal((30, 8, 3))
    a, b, c = (_model(kind, 0.5, seed=s) for s in (1, 1, 2))
    ya, _ = a.forward(x)
    yb, _ = b.forward(x)
    np.testing.assert_array_equal(ya, yb)
    fraction = np.mean(a._ws.extra[0][0]["zoneout"][0])
    assert 0.4 < fraction < 0.6, fraction
    ya2, _ = a.forward(x)  # the stream goes on: new masks
    assert np.abs(ya2 - ya).max() > 0
    c.load_state_dict(a.state_dict())
    yc, _ = c.forward(x)
    assert np.abs(yc - ya).max() > 0


def test_zoneout_zero_is_the_plain_cell():
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    for cls in (nlstm.LSTM, nlstm.GRU):
        y0, _ = cls(3, 4, seed=1)(x)
        y1, _ = cls(3, 4, seed=1, zoneout=0.0)(x)
        np.testing.assert_array_equal(y0, y1)


def test_layernorm_lstm_parameters():
    m = nlstm.LayerNormLSTM(3, 4, num_layers=2, bidirectional=True, forget_bias=1.0)
    sd = m.state_dict()
    for sfx in ("", "_reverse"):
        for k in range(2):
            assert sd[f"ln_weight_ih_l{k}{sfx}"].shape == (16,)
            assert sd[f"ln_weight_hh_l{k}{sfx}"].shape == (16,)
            np.testing.assert_array_equal(sd[f"ln_weight_c_l{k}{sfx}"], np.ones(4))
            np.testing.assert_array_equal(sd[f"ln_bias_c_l{k}{sfx}"], np.zeros(4))
    assert "ln_bias_c_l0" not in nlstm.LayerNormLSTM(3, 4, bias=False).state_dict()
    assert repr(nlstm.LayerNormLSTM(3, 4, zoneout=0.1)) == \
        "LayerNormLSTM(3, 4, zoneout=0.1, dtype=float32)"


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, True, "0.1", None])
@pytest.mark.parametrize("cls", [nlstm.LSTM, nlstm.LayerNormLSTM, nlstm.GRU])
def test_bad_zoneout(cls, bad):
    with pytest.raises(ValueError, match="zoneout"):
        cls(3, 4, zoneout=bad)


@pytest.mark.parametrize("variant", [dict(peephole=True), dict(clip=1.0), dict(input_forget=True),
                                     dict(activations=("HardSigmoid", "Tanh", "Tanh"))])
def test_layernorm_lstm_variants_change_the_output(variant):
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    plain = _model("lnlstm", 0.0, seed=4)
    m = nlstm.LayerNormLSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=4,
                            **variant)
    for k, a in plain.params.items():
        m.params[k][...] = a
    if "peephole" in variant:
        for k in m.params:
            if k.startswith("peephole"):
                m.params[k][...] = 0.5
    if "clip" in variant:
        for k in m.params:
            if k.startswith("weight") or k.startswith("ln_weight"):
                m.params[k] *= 3
        plain.load_state_dict(m.state_dict())
    assert np.abs(m(x)[0] - plain(x)[0]).max() > 1e-3


@pytest.mark.parametrize("cls", [nlstm.LayerNormLSTM, nlstm.LSTM, nlstm.GRU])
def test_save_load_round_trip(cls, tmp_path):
    m = cls(3, 4, num_layers=2, bidirectional=True, seed=3, zoneout=0.2)
    for a in m.params.values():
        a += np.random.default_rng(1).uniform(-0.1, 0.1, a.shape).astype(a.dtype)
    path = nlstm.save(m, tmp_path / "m.npz")
    m2 = nlstm.load(path)
    assert type(m2) is cls and m2.get_config() == m.get_config() and m2.zoneout == 0.2
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(m(x)[0], m2(x)[0])


def test_sequential_fit_and_save(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 10, 2)).astype(np.float32)
    Y = X[:, -3:, :1].sum(axis=1)
    model = nlstm.Sequential([nlstm.LayerNormLSTM(2, 16, batch_first=True, seed=0, zoneout=0.1),
                              nlstm.Linear(16, 1, seed=1)], output="last", loss="mse")
    before = float(np.mean((model.predict(X) - Y) ** 2))
    model.fit(X, Y, epochs=15, batch_size=16, seed=0, lr=0.01, verbose=0)
    after = float(np.mean((model.predict(X) - Y) ** 2))
    assert after < 0.7 * before, (before, after)
    path = model.save(tmp_path / "seq.npz")
    np.testing.assert_array_equal(nlstm.load(path).predict(X), model.predict(X))


@pytest.mark.parametrize("cell,cls", [("layernorm-lstm", "LayerNormLSTM"), ("gru", "GRU")])
def test_cli_train_cell_and_zoneout(tmp_path, cell, cls):
    from test_cli import assert_ok, run
    rng = np.random.default_rng(0)
    v = np.sin(np.arange(120) / 4) + 0.1 * rng.standard_normal(120)
    (tmp_path / "s.csv").write_text("v\n" + "\n".join(f"{a:.4f}" for a in v) + "\n")
    p = run(["train", "--csv", "s.csv", "--target", "v", "--window", 8, "--epochs", 2,
             "--hidden", 6, "--cell", cell, "--zoneout", 0.1, "--out", "m.npz"], tmp_path)
    assert_ok(p)
    rec = nlstm.load(tmp_path / "m.npz").layers[0]
    assert type(rec).__name__ == cls and rec.zoneout == 0.1
    # the report names the layer it trained
    assert re.search(rf"^  {cls} +RMSE", p.stdout, re.M) and "LSTM " not in p.stdout.replace(
        "LayerNormLSTM ", ""), p.stdout
    p = run(["inspect", "--model", "m.npz", "--csv", "s.csv", "--out", "i.png"], tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("nlstm: error:") \
        and "zoneout" in lines[0], p.stderr
    for bad in (["--zoneout", "1"], ["--zoneout", "x"], ["--cell", "rnn2"]):
        p = run(["train", "--csv", "s.csv", "--target", "v", "--window", 8, *bad], tmp_path)
        assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("nlstm: error"), p.stderr


def test_no_torch_or_onnx_export(tmp_path):
    for layer in (nlstm.LayerNormLSTM(3, 4), nlstm.LSTM(3, 4, zoneout=0.1), nlstm.GRU(3, 4, zoneout=0.1)):
        pytest.importorskip("torch")
        with pytest.raises(ValueError, match="no PyTorch equivalent"):
            nlstm.to_torch(layer)
    for layer in (nlstm.LSTM(3, 4, zoneout=0.1), nlstm.GRU(3, 4, zoneout=0.1)):
        pytest.importorskip("onnx")
        with pytest.raises(ValueError, match="zoneout"):
            nlstm.onnx.save(layer, tmp_path / "m.onnx")
    with pytest.raises(TypeError):
        pytest.importorskip("onnx")
        nlstm.onnx.save(nlstm.LayerNormLSTM(3, 4), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_inspect_refuses_what_it_cannot_read():
    x = np.zeros((3, 2, 3), np.float32)
    with pytest.raises(ValueError, match="LayerNormLSTM"):
        nlstm.inspect(nlstm.LayerNormLSTM(3, 4), x, dy=np.ones((3, 2, 4), np.float32))
    with pytest.raises(ValueError, match="zoneout"):
        nlstm.inspect(nlstm.LSTM(3, 4, zoneout=0.1), x, dy=np.ones((3, 2, 4), np.float32))


@pytest.mark.parametrize("cls", [nlstm.LayerNormLSTM, nlstm.LSTM])
def test_variants_with_zoneout_save_load_and_state_dict(cls, tmp_path):
    m = cls(3, 4, num_layers=2, bidirectional=True, seed=3, zoneout=0.2, proj_size=2, **ONNX,
            **ACTS)
    names = set(m.state_dict())
    assert {"peephole_l0", "peephole_l1_reverse", "weight_hr_l1_reverse"} <= names
    assert ("ln_weight_c_l1_reverse" in names) == (cls is nlstm.LayerNormLSTM)
    m2 = nlstm.load(nlstm.save(m, tmp_path / "m.npz"))
    assert type(m2) is cls and m2.get_config() == m.get_config()
    assert m2.clip == 1.5 and m2.peephole and m2.input_forget and m2.zoneout == 0.2
    assert m2.proj_size == 2 and m2(np.zeros((1, 3), np.float32))[0].shape == (1, 4)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(m(x)[0], m2(x)[0])


# ---- the per-step products on nlstm's micro-kernels (nlstm.kernels.tiles) ----------------
# H a multiple of the vector width puts W_hh h on the tiles; of 4 vector widths, the backward
# carry on the panels too (float64: 8 and 32 with AVX-512, 4 and 16 with AVX2). H = 4 above
# runs neither.
TILED = ["lstm", "lnlstm", "lnlstm_all_onnx", "lstm_proj"]
TOL = {np.float64: dict(rtol=1e-9, atol=1e-10), np.float32: dict(rtol=3e-3, atol=3e-4)}


@pytest.mark.parametrize("dtype,H,threads", [(np.float64, 32, 1), (np.float64, 128, 1),
                                              (np.float32, 64, 1), (np.float64, 32, 2)])
@pytest.mark.parametrize("kind", TILED)
def test_tiled_products_match_reference(kind, dtype, H, threads, monkeypatch):
    """Two layers, both directions, B = 7 with ragged lengths (6 then 5 active rows: both
    tails of the 4-row tiles); H = 128 in float64 runs the tiles' depth chunks; with two
    threads each runs a range of rows (4 and 3)."""
    from nlstm.kernels import simd, tuning
    if H % simd.width(dtype) or kind == "lstm_proj" and H < 64:
        pytest.skip("H off this machine's tiles")
    monkeypatch.setattr(tuning, "MIN_PARALLEL_WORK", 0)  # every recurrence splits its rows
    before = nlstm.get_num_threads()
    nlstm.set_num_threads(threads)
    try:
        _tiled_case(kind, dtype, H)
    finally:
        nlstm.set_num_threads(before)


def _tiled_case(kind, dtype, H):
    from nlstm.kernels import tiles
    m = _model(kind, 0.4, dtype=dtype, I=5, H=H)
    x, init, lengths = _data(m, T=6, B=7)
    run = _train(m, x, init, lengths, dtype, 3)
    assert any(len(key) == 2 for key in m._pack_bufs), "the forward's tiles did not run"
    carry = any(key[-1] == "carry" for key in m._pack_bufs)
    assert carry == tiles.packable_panels(m._w("weight_hh", 0, 0).T), "the carry's panels"
    _assert_reference(m, kind, x, init, lengths, _masks(m, *x.shape[:2]), run, TOL[dtype])


# ---- a one-row batch's hidden units split over threads (nlstm.kernels.lnlstm_units) -------
@pytest.fixture
def unit_split(monkeypatch):
    """Split every one-row forward that can be, however small; count the parts run."""
    from nlstm import _threads
    from nlstm.kernels import parallel, tuning
    monkeypatch.setattr(tuning, "UNITS_MIN_STEP", 0)
    monkeypatch.setattr(tuning, "UNITS_MIN_WORK", 0)
    cpus = max(2, _threads.cpus_available())
    monkeypatch.setattr(_threads, "cpus_available", lambda: cpus)
    calls = []

    def counting(name):
        split = getattr(parallel, name)

        def call(parts, args):
            calls.append((name.split("_")[1], parts))
            return split.parallel(parts, args)
        return parallel.Split(split.serial, call)

    for name in ("lnlstm_forward_units", "lnlstm_backward_units"):
        monkeypatch.setattr(parallel, name, counting(name))
    before = nlstm.get_num_threads()
    nlstm.set_num_threads(2)
    yield calls
    nlstm.set_num_threads(before)


@pytest.mark.parametrize("dtype,H", [(np.float64, 32), (np.float64, 48), (np.float32, 48)])
@pytest.mark.parametrize("kind,p", [("lnlstm", 0.0), ("lnlstm", 0.4), ("lstm", 0.4)])
@pytest.mark.parametrize("length", [6, 4, 0])
def test_unit_split_matches_reference(unit_split, kind, p, dtype, H, length):
    """Two layers, both directions, B = 1 of length T, shorter, or 0; H = 48 splits unevenly
    (parts of 32 and 16 units). Training forward (sampled masks) and backward against the
    oracle; in float64 a few gradients by finite differences too."""
    from nlstm.kernels import simd
    if H % simd.width(dtype):
        pytest.skip("H off this machine's tiles")
    m = _model(kind, p, dtype=dtype, I=5, H=H)
    _assert_one_row_batch(m, kind, p, dtype, length, ["ln_weight_hh_l0", "ln_weight_c_l1"],
                          lambda: unit_split == [("forward", 2)] * 4 + [("backward", 2)] * 4)


@pytest.mark.parametrize("H", [48, 128])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_unit_split_gives_the_one_row_kernels_bits(unit_split, p, H):
    """The LayerNorm cell split over two threads runs the whole cell in every part with
    the one-row kernel's functions: its forward has that kernel's bits (outputs and final
    state, inference and training); its backward, float32 rounding (its moments' sums run
    in another order). H = 48 splits unevenly."""
    from nlstm.kernels import simd
    if H % simd.width(np.float32):
        pytest.skip("H off this machine's tiles")
    rng = np.random.default_rng(4)
    T = 40
    x = rng.standard_normal((T, 1, 5)).astype(np.float32)
    dy = rng.standard_normal((T, 1, 2 * H)).astype(np.float32)
    runs = []
    for threads in (2, 1):
        nlstm.set_num_threads(threads)  # (the fixture restores the count)
        m = _model("lnlstm", p, dtype=np.float32, I=5, H=H)
        y, (h, c) = m(x)
        yt, (ht, ct) = m.forward(x)
        dx, (dh, dc) = m.backward(dy)
        runs.append(([y, h, c, yt, ht, ct], [dx, dh, dc, *m.grads.values()]))
    assert unit_split == [("forward", 2)] * 8 + [("backward", 2)] * 4
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(runs[0][1], runs[1][1]):  # (through LayerNorm: scaled to the largest)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(b).max()))


def _assert_one_row_batch(m, kind, p, dtype, length, ln_names, ran):
    """A one-row batch (T = 6, rows of ``length``) of layer m: training forward (sampled
    masks) and backward against the oracle, inference against the expectation, and in
    float64 a few gradients by finite differences (of ``ln_names`` too for the LayerNorm
    cell). ``ran()``: whether the kernels under test ran, asked after training."""
    T = 6
    x, init, _ = _data(m, T=T, B=1)
    lengths = np.array([length])
    run = _train(m, x, init, lengths, dtype, 3)
    assert ran(), "the kernels under test did not run"
    masks = _masks(m, T, 1) if p else _masks(m, T, 1, fill=0.0)
    tol = TOL[dtype]
    _assert_reference(m, kind, x, init, lengths, masks, run, tol)
    _, _, _, _, dy, dfinal = run
    cast = [a.astype(dtype) for a in init]
    # inference: the expectation
    y, _ = m(x.astype(dtype), _state(cast), lengths)
    cell = R.Zoneout(ZONEOUT_KINDS[kind][1](), _masks(m, T, 1, fill=p))
    ry, _, _ = R.forward(cell, m.params, x, init, lengths, 2, True)
    np.testing.assert_allclose(y, ry, err_msg="y (inference)", **tol)
    if dtype == np.float64:
        names = ["weight_hh_l0", "bias_hh_l1_reverse"]
        if kind == "lnlstm":
            names += ln_names
        _assert_numeric(m, x, init, lengths, dy, dfinal, names, np.random.default_rng(7), 4,
                        inits=True)


# ---- a one-row batch on the one-row tile (nlstm.kernels.lnlstm_row) -----------------------
@pytest.fixture
def one_row(monkeypatch):
    """Count the one-row kernels' calls."""
    from nlstm.kernels import lnlstm_row
    calls = []
    for name in ("lnlstm_forward_row", "lnlstm_backward_row"):
        kernel = getattr(lnlstm_row, name)

        def call(*args, _kernel=kernel, _name=name):
            calls.append(_name.split("_")[1])
            return _kernel(*args)
        monkeypatch.setattr(lnlstm_row, name, call)
    return calls


def _row_H(dtype):
    """An H on the one-row tile and the carry's panels (4 vector widths) of this machine."""
    from nlstm.kernels import simd
    return 4 * simd.width(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind,p", [("lnlstm", 0.0), ("lnlstm", 0.4), ("lstm", 0.4)])
@pytest.mark.parametrize("length", [6, 4, 0])
def test_one_row_matches_reference(one_row, kind, p, dtype, length):
    """Two layers, both directions, B = 1 of length T, shorter, or 0: training forward
    (sampled masks) and backward, and inference (the expectation), against the oracle; in
    float64 a few gradients by finite differences too."""
    m = _model(kind, p, dtype=dtype, I=5, H=_row_H(dtype))
    _assert_one_row_batch(m, kind, p, dtype, length,
                          ["ln_weight_hh_l0", "ln_weight_c_l1", "ln_weight_ih_l1_reverse"],
                          lambda: one_row == ["forward"] * 4 + ["backward"] * 4)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind,p", [("lnlstm", 0.0), ("lnlstm", 0.4), ("lstm", 0.4)])
def test_one_row_alone_as_in_a_batch(one_row, kind, p, threads, monkeypatch):
    """A row run alone (the one-row kernels) gives what it gives in a batch of 5 (the
    batched kernels' tiles and panels; with two threads, each thread a range of rows):
    the outputs and final states bit for bit; the gate gradients and the carried state
    gradients to float32 rounding (issue 15 asks the same of 1 and 2 threads). float32,
    one layer, both directions, the row's zoneout masks copied into the batch's.

    The gradients were asserted bit for bit too, and once (a clean-clone CI run on an
    AVX-512 machine) all six cases read dh0 up to 2.3e-5 apart (relative) in one process
    while every other run passed; memory filled with garbage or NaN, inputs laid out
    side by side (LLVM's run-time overlap checks) and thousands of repeats did not bring
    it back, so the cause is not known (see issue 15's notes). A wrong row, mask or gate
    is off by far more than the tolerance."""
    from nlstm.kernels import tuning
    monkeypatch.setattr(tuning, "MIN_PARALLEL_WORK", 0)  # the batch splits its rows
    before = nlstm.get_num_threads()
    nlstm.set_num_threads(threads)
    try:
        H, T, B, row = _row_H(np.float32), 7, 5, 3
        cls, _ = ZONEOUT_KINDS[kind]
        rng = np.random.default_rng(5)
        x = rng.standard_normal((T, B, 6)).astype(np.float32)
        dy = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
        dh = rng.standard_normal((2, B, H)).astype(np.float32)
        dc = rng.standard_normal((2, B, H)).astype(np.float32)
        runs = []
        for sl in (slice(row, row + 1), slice(None)):
            m = cls(6, H, bidirectional=True, seed=4, zoneout=p)
            if kind == "lnlstm":
                gains = np.random.default_rng(6)
                for name, a in m.params.items():
                    if name.startswith("ln_"):
                        a[...] = gains.uniform(0.5, 1.5, a.shape)
            y, (h_n, c_n) = m.forward(x[:, sl], train=True)
            if p and sl.stop is None:  # the row's masks from the lone run, then again
                ws = m._ws
                for d in range(2):
                    for zb, za in zip(ws.extra[0][d]["zoneout"], runs[0][-1][d]):
                        zb[:, row] = za[:, 0]
                y, (h_n, c_n) = _forward_with_masks(m, x, ws)
            masks = [[z.copy() for z in m._ws.extra[0][d]["zoneout"]] for d in range(2)]
            dx, (dh0, dc0) = m.backward(dy[:, sl], dh[:, sl], dc[:, sl])
            dz = [m._ws.gates[0][d].copy() for d in range(2)]
            runs.append((y, h_n, c_n, dh0, dc0, *dz, masks))
        assert one_row == ["forward", "forward", "backward", "backward"]
        names = ["y", "h_n", "c_n", "dh0", "dc0", "dz", "dz_reverse"]
        for name, alone, batch in zip(names, runs[0][:-1], runs[1][:-1]):
            if name in ("y", "h_n", "c_n"):
                np.testing.assert_array_equal(alone[:, 0], batch[:, row], err_msg=name)
            else:
                b = batch[:, row]
                np.testing.assert_allclose(alone[:, 0], b, rtol=1e-4,
                                           atol=1e-6 * float(np.abs(b).max()), err_msg=name)
    finally:
        nlstm.set_num_threads(before)


@pytest.mark.parametrize("path", ["batch", "one row", "unit split"])
def test_inference_keeps_one_row_of_what_only_backward_reads(path, unit_split, one_row):
    """An inference forward writes LN(W_hh h) and LN(c̃), which only backward reads, into
    the first time row of their buffers at every step (``kernels.slots.saved_at``), or,
    split over the units, not at all (``kernels.lnlstm_units``): on each forward path the
    other rows keep what they held (NaN here, which y would show had the step read them),
    the first is written unless split, and y is what it was before and a training
    forward's (which keeps every step's, as the gradient tests check) to rounding."""
    B = 3 if path == "batch" else 1
    nlstm.set_num_threads(2 if path == "unit split" else 1)  # (the fixture restores it)
    m = _model("lnlstm", 0.0, dtype=np.float32, I=5, H=_row_H(np.float32))
    x = np.random.default_rng(2).standard_normal((6, B, 5)).astype(np.float32)
    y_train, _ = m.forward(x, train=True)
    y_before, _ = m(x)
    saved = [m._ws.extra[k][d][name] for k in range(2) for d in range(2)
             for name in ("rhat", "chat")]
    for a in saved:
        a[...] = np.nan
    y, _ = m(x)
    np.testing.assert_array_equal(y, y_before)
    np.testing.assert_allclose(y, y_train, **TOL[np.float32])
    for a in saved:
        first = np.isnan(a[0]).all() if path == "unit split" else np.isfinite(a[0]).all()
        assert first and np.isnan(a[1:]).all()
    ran = {"batch": not one_row and not unit_split, "one row": one_row == ["forward"] * 12,
           "unit split": unit_split == [("forward", 2)] * 12}
    assert ran[path], "the kernels under test did not run"


def _forward_with_masks(m, x, ws):
    """Rerun a training forward with the workspace's zoneout masks as they are (the layer's
    forward draws new ones)."""
    draw = m._zoneout_masks
    m._zoneout_masks = lambda *a: None
    try:
        return m.forward(x, train=True)
    finally:
        m._zoneout_masks = draw


@pytest.mark.parametrize("kind", ["lstm", "lnlstm", "gru"])
def test_inference_masks_after_training(kind):
    """Inference keeps its masks (p everywhere) from one call to the next, and a training
    forward in between (sampled masks) does not leak into the next inference."""
    m = _model(kind, 0.3)
    x, init, lengths = _data(m)
    y1, _ = m(x, _state(init), lengths)
    y2, _ = m(x, _state(init), lengths)
    m.forward(x, _state(init), lengths)
    y3, _ = m(x, _state(init), lengths)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(y1, y3)
    assert all(np.all(z == m.dtype.type(0.3)) for z in m._ws.extra[0][0]["zoneout"])
