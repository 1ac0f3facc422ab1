"""Every bad input raises before any kernel runs, and leaves the layer as it was."""
import numpy as np
import pytest

import nlstm

T, B, I, H, L = 5, 3, 4, 6, 2


def arrays_in(obj):
    """Every ndarray held by a workspace, in a fixed order."""
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [a for o in obj for a in arrays_in(o)]
    if isinstance(obj, dict):
        return [a for k in sorted(obj) for a in arrays_in(obj[k])]
    return arrays_in(vars(obj)) if hasattr(obj, "__dict__") else []


def snapshot(m):
    bufs = [] if m._ws is None else arrays_in(m._ws)
    assert m._ws is None or len(bufs) > 10
    return ({k: v.copy() for k, v in m.params.items()}, {k: v.copy() for k, v in m.grads.items()},
            [b.copy() for b in bufs], m._trained, m._ws)


def assert_unchanged(m, snap):
    params, grads, bufs, trained, ws = snap
    assert m._ws is ws and m._trained == trained
    for k in params:
        np.testing.assert_array_equal(m.params[k], params[k], err_msg=k)
        np.testing.assert_array_equal(m.grads[k], grads[k], err_msg=k)
    now = snapshot(m)[2]
    for a, b in zip(now, bufs):
        np.testing.assert_array_equal(a, b)


@pytest.fixture
def trained():
    """A layer with a training forward, one backward's gradients, and a second forward pending."""
    rng = np.random.default_rng(0)
    m = nlstm.LSTM(I, H, num_layers=L, seed=0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    m.forward(x)
    m.backward(np.ones((T, B, H), np.float32))
    m.forward(x, lengths=[5, 2, 0])
    return m, x


good_state = lambda: (np.zeros((L, B, H), np.float32), np.zeros((L, B, H), np.float32))

FORWARD_CASES = [
    ("ndim", lambda x: dict(x=x[None]), ValueError, "2-D"),
    ("ndim1", lambda x: dict(x=x[0, 0]), ValueError, "2-D"),
    ("feature size", lambda x: dict(x=x[..., :3]), ValueError, "Expected 4, got 3"),
    ("empty", lambda x: dict(x=x[:0]), ValueError, "at least one"),
    ("complex", lambda x: dict(x=x.astype(np.complex64)), TypeError, "real numeric"),
    ("strings", lambda x: dict(x=np.full(x.shape, "a")), TypeError, "real numeric"),
    ("bool", lambda x: dict(x=x > 0), TypeError, "real numeric"),
    ("nan x", lambda x: dict(x=np.where(x > 1, np.nan, x)), ValueError, "NaN"),
    ("inf x", lambda x: dict(x=np.where(x > 1, np.inf, x)), ValueError, "NaN or Inf"),
    ("state pair", lambda x: dict(x=x, state=np.zeros((L, B, H))), TypeError, "pair"),
    ("state shape", lambda x: dict(x=x, state=(np.zeros((L, B, H)), np.zeros((1, B, H)))),
     ValueError, r"state c0 must have shape \(2, 3, 6\)"),
    ("state batch", lambda x: dict(x=x, state=(np.zeros((L, 2, H)),) * 2), ValueError, "state h0"),
    ("state nan", lambda x: dict(x=x, state=(np.full((L, B, H), np.nan),) * 2), ValueError, "NaN"),
    ("state complex", lambda x: dict(x=x, state=(np.zeros((L, B, H), complex),) * 2), TypeError,
     "state h0"),
    ("lengths shape", lambda x: dict(x=x, lengths=[1, 2]), ValueError, r"lengths must have shape \(3,\)"),
    ("lengths float", lambda x: dict(x=x, lengths=[1.0, 2.0, 3.0]), TypeError, "integer"),
    ("lengths negative", lambda x: dict(x=x, lengths=[1, -1, 3]), ValueError, "0..5"),
    ("lengths too long", lambda x: dict(x=x, lengths=[1, 6, 3]), ValueError, "0..5"),
    ("lengths unbatched", lambda x: dict(x=x[:, 0], lengths=[3]), ValueError, "batched"),
]


@pytest.mark.parametrize("name,make,exc,match", FORWARD_CASES, ids=[c[0] for c in FORWARD_CASES])
@pytest.mark.parametrize("train", [False, True])
def test_forward_rejects(trained, name, make, exc, match, train):
    m, x = trained
    snap = snapshot(m)
    with pytest.raises(exc, match=match):
        m.forward(**make(x), train=train)
    assert_unchanged(m, snap)


BACKWARD_CASES = [
    ("dy shape", dict(dy=np.ones((T, B, H + 1))), ValueError, r"dy must have shape \(5, 3, 6\)"),
    ("dy complex", dict(dy=np.ones((T, B, H), complex)), TypeError, "dy"),
    ("dy nan", dict(dy=np.full((T, B, H), np.nan)), ValueError, "dy contains NaN"),
    ("dh_n shape", dict(dy=np.ones((T, B, H)), dh_n=np.ones((L, B))), ValueError, "dh_n"),
    ("dc_n shape", dict(dy=np.ones((T, B, H)), dc_n=np.ones((1, B, H))), ValueError, "dc_n"),
]


@pytest.mark.parametrize("name,kw,exc,match", BACKWARD_CASES, ids=[c[0] for c in BACKWARD_CASES])
def test_backward_rejects(trained, name, kw, exc, match):
    m, _ = trained
    snap = snapshot(m)
    with pytest.raises(exc, match=match):
        m.backward(**kw)
    assert_unchanged(m, snap)
    m.backward(np.ones((T, B, H)))  # the pending training forward is still usable


def test_backward_needs_training_forward(trained):
    m, x = trained
    m(x)  # inference overwrites the buffers
    snap = snapshot(m)
    with pytest.raises(ValueError, match="train=True"):
        m.backward(np.ones((T, B, H)))
    assert_unchanged(m, snap)
    m.forward(x)
    m.backward(np.ones((T, B, H)))
    with pytest.raises(ValueError, match="once"):  # the gate buffers now hold gradients
        m.backward(np.ones((T, B, H)))


def test_check_finite_off_lets_nan_through():
    m = nlstm.LSTM(I, H, check_finite=False, seed=0)
    y, _ = m(np.full((T, B, I), np.nan))
    assert np.isnan(y).all()


def test_other_real_dtypes_and_strides_are_converted():
    rng = np.random.default_rng(1)
    m = nlstm.LSTM(I, H, seed=0, dtype=np.float64)
    x = rng.standard_normal((T, 2 * B, I))
    want, _ = m(x[:, ::2].copy())
    got, _ = m(x[:, ::2])  # non-contiguous
    np.testing.assert_array_equal(got, want)
    xi = rng.integers(-3, 3, (T, B, I))
    np.testing.assert_array_equal(m(xi)[0], m(xi.astype(np.float64))[0])
    x16 = x[:, :B].astype(np.float16)
    np.testing.assert_array_equal(m(x16)[0], m(x16.astype(np.float64))[0])
    assert m(x[:, :B].tolist())[0].shape == (T, B, H)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(input_size=0, hidden_size=3), ValueError, "input_size"),
    (dict(input_size=2, hidden_size=2.5), TypeError, "hidden_size"),
    (dict(input_size=2, hidden_size=3, num_layers=0), ValueError, "num_layers"),
    (dict(input_size=2, hidden_size=3, dtype=np.int32), TypeError, "dtype"),
    (dict(input_size=2, hidden_size=3, dtype=np.float16), TypeError, "dtype"),
])
def test_constructor_rejects(kw, exc, match):
    with pytest.raises(exc, match=match):
        nlstm.LSTM(**kw)


def test_numpy_scalars_are_numbers_and_bools_are_not(tmp_path):
    """np.float32(0.25) is a number wherever a float is asked for (an optimizer's lr always
    took it); True is not. clip=inf clips nothing: the same as None, and it saves."""
    f = np.float32
    made = [nlstm.LSTM(I, H, num_layers=2, dropout=f(0.25), zoneout=f(0.25), clip=f(2.0),
                       forget_bias=f(1.0)),
            nlstm.GRU(I, H, zoneout=np.float64(0.5)), nlstm.RNN(I, H, clip=np.int64(3)),
            nlstm.Dropout(f(0.25))]
    assert [type(v) for v in (made[0].dropout, made[0].zoneout, made[0].clip, made[3].p)] == [float] * 4
    for bad in (dict(dropout=True), dict(zoneout=np.bool_(False)), dict(clip=True),
                dict(forget_bias=True), dict(dropout="0.1")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            nlstm.LSTM(I, H, num_layers=2, **bad)
    with pytest.raises(ValueError, match="p must"):
        nlstm.Dropout(True)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    inf, none = nlstm.LSTM(I, H, clip=float("inf"), seed=0), nlstm.LSTM(I, H, seed=0)
    assert inf.clip is None
    np.testing.assert_array_equal(inf(x)[0], none(x)[0])
    back = nlstm.load(nlstm.save(inf, tmp_path / "inf.npz"))
    np.testing.assert_array_equal(back(x)[0], none(x)[0])


def test_numpy_integer_seeds_save(tmp_path):
    """seed=np.int64(3) (from rng.integers or np.arange) is an int: the layer saves (its
    config is JSON); anything but None or an integer is refused at once."""
    made = [nlstm.LSTM(I, H, seed=np.int64(3)), nlstm.GRU(H, H, seed=np.uint8(2)),
            nlstm.Dropout(0.1, seed=np.int64(4)), nlstm.Linear(H, 2, seed=np.int32(1))]
    model = nlstm.Sequential(made)
    assert all(type(l.seed) is int for l in made)
    back = nlstm.load(nlstm.save(model, tmp_path / "m.npz"))
    assert [l.seed for l in back.layers] == [3, 2, 4, 1]
    np.testing.assert_array_equal(made[0].params["weight_hh_l0"], nlstm.LSTM(I, H, seed=3).params["weight_hh_l0"])
    for bad in (1.5, True, "3"):
        with pytest.raises(TypeError, match="seed"):
            nlstm.LSTM(I, H, seed=bad)


def test_load_state_dict_rejects_and_keeps_weights():
    m = nlstm.LSTM(I, H, num_layers=2, seed=0)
    good = m.state_dict()
    before = m.state_dict()
    bad_key = dict(good)
    bad_key["weight_ih_l2"] = bad_key.pop("weight_ih_l1")
    bad_shape = dict(good, weight_hh_l1=np.zeros((4 * H, H + 1)))
    bad_value = dict(good, bias_ih_l0=np.full(4 * H, np.nan))
    half = {k: (np.zeros_like(v) if k.endswith("l0") else v) for k, v in good.items()}
    half["bias_hh_l1"] = np.zeros(3)  # a later bad entry must not let earlier ones load
    for d, exc, match in [(bad_key, ValueError, "missing.*weight_ih_l1.*unexpected.*weight_ih_l2"),
                          (bad_shape, ValueError, "weight_hh_l1"),
                          (bad_value, ValueError, "bias_ih_l0"),
                          (half, ValueError, "bias_hh_l1"),
                          ([1, 2], TypeError, "mapping")]:
        with pytest.raises(exc, match=match):
            m.load_state_dict(d)
        for k in before:
            np.testing.assert_array_equal(m.params[k], before[k], err_msg=k)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(x_t=np.zeros((B, I + 1))), ValueError, "Expected 4, got 5"),
    (dict(x_t=np.zeros((1, B, I))), ValueError, "x_t must be 1-D"),
    (dict(x_t=np.zeros((B, I)), state=(np.zeros((L, B, H)), np.zeros((L, B + 1, H)))), ValueError,
     "state c0"),
    (dict(x_t=np.full((B, I), np.inf)), ValueError, "x_t contains"),
    (dict(x_t=np.zeros((B, I), complex)), TypeError, "x_t"),
])
def test_step_rejects(kw, exc, match):
    m = nlstm.LSTM(I, H, num_layers=L, seed=0)
    with pytest.raises(exc, match=match):
        m.step(**kw)


@pytest.mark.parametrize("cls", [nlstm.LSTM, nlstm.GRU, nlstm.RNN])
@pytest.mark.parametrize("where", ["x", "layer 0 h", "layer 1 state"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_step_fast_path_rejects_non_finite(cls, where, bad):
    """Inputs already in the layer's dtype and layout take the fast path, where the step
    kernels check finiteness themselves: a NaN or Inf anywhere still raises and changes
    nothing."""
    m = cls(I, H, num_layers=L, seed=0)
    x = np.ones((B, I), np.float32)
    _, state = m.step(x)
    states = list(state) if isinstance(state, tuple) else [state]
    if where == "x":
        x[1, 2] = bad
    elif where == "layer 0 h":
        states[0][0, B - 1, H - 1] = bad
    else:
        states[-1][L - 1, 1, 0] = bad
    given = [a.copy() for a in states]
    with pytest.raises(ValueError, match="x_t contains" if where == "x" else "state .*contains"):
        m.step(x, states[0] if len(states) == 1 else tuple(states))
    for a, b in zip(states, given):
        np.testing.assert_array_equal(a, b)


def test_step_refuses_bidirectional():
    m = nlstm.LSTM(I, H, bidirectional=True)
    with pytest.raises(ValueError, match="unidirectional"):
        m.step(np.zeros(I))


def test_rnn_rejects_unknown_nonlinearity():
    with pytest.raises(ValueError, match="nonlinearity"):
        nlstm.RNN(3, 4, nonlinearity="sigmoid")


@pytest.mark.parametrize("cls", [nlstm.GRU, nlstm.RNN])
def test_single_state_cells_reject_bad_state_and_gradients(cls):
    m = cls(I, H, num_layers=L, seed=0)
    x = np.zeros((T, B, I), np.float32)
    with pytest.raises(ValueError, match=r"state h0 must have shape \(2, 3, 6\)"):
        m(x, np.zeros((L, B, H + 1)))
    m.forward(x)
    snap = snapshot(m)
    with pytest.raises(ValueError, match="dh_n"):
        m.backward(np.ones((T, B, H)), np.ones((L, B)))
    assert_unchanged(m, snap)
    with pytest.raises(TypeError):
        m.backward(np.ones((T, B, H)), np.ones((L, B, H)), np.ones((L, B, H)))  # no dc_n


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", ["one", "split"])
def test_the_compiled_finiteness_check_finds_every_position(monkeypatch, dtype, threads):
    """The check large arrays get (``kernels.checks``, by chunks, on one thread or split):
    a NaN or an Inf at either end of any chunk is found, a finite array passes (huge values
    too: a·0 is 0 for them)."""
    from nlstm import _validate
    from nlstm.kernels import tuning
    monkeypatch.setattr(tuning, "NUMBA_CHECK", 0)
    monkeypatch.setattr(tuning, "PARALLEL_CHECK", 0 if threads == "split" else 1 << 62)
    C = tuning.CHECK_CHUNK
    a = np.random.default_rng(1).standard_normal((3, C + 5)).astype(dtype)
    a[0, 0] = np.finfo(dtype).max
    assert _validate.all_finite(a)
    for i in (0, 1, C - 1, C, 2 * C - 1, 2 * C, a.size - 1):
        for bad in (np.nan, np.inf, -np.inf):
            b = a.copy()
            b.flat[i] = bad
            assert not _validate.all_finite(b), (i, bad)


def test_a_large_bad_dy_raises_and_changes_nothing(monkeypatch):
    """dy large enough for the compiled check, with one Inf at its end: the same ValueError
    as NumPy's check gives, and the gradients and the pending forward are kept."""
    from nlstm.kernels import tuning
    monkeypatch.setattr(tuning, "NUMBA_CHECK", 0)
    monkeypatch.setattr(tuning, "PARALLEL_CHECK", 0)
    m = nlstm.LSTM(I, H, seed=0)
    x = np.ones((T, B, I), np.float32)
    m.forward(x)
    dy = np.ones((T, B, H), np.float32)
    dy[-1, -1, -1] = np.inf
    grads = {k: g.copy() for k, g in m.grads.items()}
    with pytest.raises(ValueError, match="dy contains NaN or Inf"):
        m.backward(dy)
    for k, g in m.grads.items():
        np.testing.assert_array_equal(g, grads[k])
    dy[-1, -1, -1] = 0
    m.backward(dy)  # the training forward is still there to backpropagate
