"""Streams: the state kept between calls, equal to the whole sequence; bad input changes
nothing."""
import numpy as np
import pytest

import nlstm
from cases import ALL_KINDS

TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


def _arrays(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("kind", list(ALL_KINDS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [None, 3])
@pytest.mark.parametrize("layers", [1, 2])  # one layer: Stream's own fast path
def test_stream_equals_sequence(kind, dtype, batch, layers):
    cls, extra, _ = ALL_KINDS[kind]
    if extra.get("proj_size") == -1:
        extra = dict(extra, proj_size=3)
    rng = np.random.default_rng(5)
    m = cls(4, 5, num_layers=layers, dtype=dtype, seed=6, **extra)
    shape = (7, 4) if batch is None else (7, batch, 4)
    x = rng.standard_normal(shape).astype(dtype)
    y, final = m(x)
    s = m.stream(batch_size=batch)
    tol = TOL[dtype]
    if kind.startswith("lnlstm") and dtype == np.float32:
        # the step's W·x is a row product, the sequence's one GEMM: their float32 rounding
        # differs, and the normalisations scale it by 1/σ (seen: 7e-6)
        tol = dict(tol, atol=2e-5)
    for t in range(7):
        y_t = s(x[t])
        assert y_t.dtype == dtype and y_t.shape == y[t].shape
        np.testing.assert_allclose(y_t, y[t], err_msg=f"y[{t}]", **tol)
    for a, b in zip(_arrays(s.state), _arrays(final)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, **tol)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_stream_from_a_state_and_reset(kind):
    cls, extra, _ = ALL_KINDS[kind]
    rng = np.random.default_rng(1)
    m = cls(3, 4, num_layers=2, dtype=np.float64, seed=2, **extra)
    x = rng.standard_normal((6, 2, 3))
    _, first = m(x[:2])
    y, final = m(x[2:], first)
    s = m.stream(batch_size=2, state=first)
    ys = [s(x_t) for x_t in x[2:]]
    np.testing.assert_allclose(np.stack(ys), y, rtol=1e-12)
    s.reset(first)  # from the same state again
    np.testing.assert_allclose(s(x[2]), y[0], rtol=1e-12)
    s.reset()  # from zeros
    y0, _ = m(x[:1])
    np.testing.assert_allclose(s(x[0]), y0[0], rtol=1e-12)


def test_stream_writes_into_out_and_sees_parameter_updates():
    m = nlstm.LSTM(3, 4, seed=0)
    x = np.ones(3, np.float32)
    s, s2 = m.stream(), m.stream()
    out = np.empty(4, np.float32)
    assert s(x, out=out) is out
    np.testing.assert_array_equal(out, s2(x))
    m.params["bias_ih_l0"][:] += 1  # in place, as the optimizers update
    y, _ = m(np.stack([x, x]))
    s.reset()
    s(x)
    np.testing.assert_allclose(s(x), y[1], rtol=1e-6)


def test_stream_takes_lists_and_other_dtypes():
    m = nlstm.LSTM(3, 4, dtype=np.float64, seed=0)
    s = m.stream(batch_size=1)
    y = s([[1, 2, 3]])  # ints, a list: converted once checked
    np.testing.assert_allclose(y, m.step(np.array([[1.0, 2.0, 3.0]]))[0], rtol=1e-12)


def _snapshot(s):
    return [a.copy() for a in _arrays(s.state)]


@pytest.mark.parametrize("cls", [nlstm.LSTM, nlstm.GRU, nlstm.RNN])
@pytest.mark.parametrize("x_t,exc,match", [
    (np.zeros((1, 3), np.float32), ValueError, r"x_t must have shape \(2, 3\)"),
    (np.zeros((2, 4), np.float32), ValueError, "x_t must have shape"),
    (np.zeros(6, np.float32), ValueError, "x_t must have shape"),
    (np.zeros((2, 3), complex), TypeError, "x_t"),
    (np.full((2, 3), np.nan, np.float32), ValueError, "x_t contains NaN"),
    (np.array([[0, 0, 0], [0, np.inf, 0]], np.float32), ValueError, "x_t contains"),
    (np.array([[0, 0, 0], [0, -np.inf, 0]]), ValueError, "x_t contains"),  # float64: converted
])
@pytest.mark.parametrize("layers", [1, 2])
def test_stream_rejects_bad_x_and_keeps_its_state(cls, x_t, exc, match, layers):
    m = cls(3, 4, num_layers=layers, seed=0)
    s = m.stream(batch_size=2)
    s(np.ones((2, 3), np.float32))
    before = _snapshot(s)
    with pytest.raises(exc, match=match):
        s(x_t)
    for a, b in zip(_arrays(s.state), before):
        np.testing.assert_array_equal(a, b)


def test_stream_rejects_bad_out_state_and_layers():
    m = nlstm.LSTM(3, 4, num_layers=2, seed=0)
    s = m.stream()
    s(np.ones(3, np.float32))
    before = _snapshot(s)
    x = np.ones(3, np.float32)
    for out, exc in [(np.empty((1, 4), np.float32), ValueError), (np.empty(4), TypeError),
                     ([0.0] * 4, TypeError)]:
        with pytest.raises(exc, match="out must"):
            s(x, out=out)
    ro = np.empty(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        s(x, out=ro)
    for bad in [(np.zeros((2, 4)), np.zeros((2, 5))), np.zeros((2, 4)),
                (np.zeros((2, 4)), np.full((2, 4), np.nan))]:
        with pytest.raises((TypeError, ValueError), match="state"):
            s.reset(bad)
    for a, b in zip(_arrays(s.state), before):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="unidirectional"):
        nlstm.GRU(3, 4, bidirectional=True).stream()
    for bad_size, exc in [(0, ValueError), (1.5, TypeError), (True, TypeError)]:
        with pytest.raises(exc, match="batch_size"):
            m.stream(batch_size=bad_size)


@pytest.mark.parametrize("layers", [1, 2])
def test_stream_non_finite_state_is_reported(layers):
    """A state gone non-finite (here from a NaN parameter, which layer checks cannot see
    between calls) makes the next call raise and leaves that state alone."""
    m = nlstm.LSTM(3, 4, num_layers=layers, seed=0)
    s = m.stream()
    x = np.ones(3, np.float32)
    s(x)
    m.params[f"weight_hh_l{layers - 1}"][0, 0] = np.nan
    s(x)  # the last layer's new h is NaN now; its inputs were finite
    before = _snapshot(s)
    with pytest.raises(ValueError, match="state or a layer's output"):
        s(x)
    with pytest.raises(ValueError, match="state or a layer's output"):
        s(x)  # the same state again: nothing moved on
    for a, b in zip(_arrays(s.state), before):
        np.testing.assert_array_equal(a, b)


def test_stream_state_is_a_copy():
    m = nlstm.GRU(3, 4, seed=0)
    s = m.stream(batch_size=1)
    y = s(np.ones((1, 3), np.float32))
    h = s.state
    h[:] = 7
    np.testing.assert_array_equal(s.state[0, 0], y[0])
    assert "batch_size=1" in repr(s)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_stream_inputs_of_every_layout_after_the_first(kind):
    """After its first call a stream calls the kernel's compiled entry point, which does not
    check argument types: read-only, unaligned, strided and other-dtype inputs must be
    converted to the one compiled type first. Every step still equals the sequence."""
    cls, extra, _ = ALL_KINDS[kind]
    m = cls(4, 5, num_layers=2, seed=6, **extra)
    x = np.random.default_rng(5).standard_normal((6, 4)).astype(np.float32)
    y, _ = m(x)
    readonly = x[2].copy()
    readonly.flags.writeable = False
    unaligned = np.ndarray(4, np.float32, buffer=np.zeros(17, np.uint8), offset=1)
    unaligned[:] = x[3]
    strided = np.stack([x[4], x[4]], axis=1)[:, 0]
    inputs = [x[0], x[1], readonly, unaligned, strided, x[5].astype(np.float64)]
    assert not unaligned.flags.aligned and not strided.flags.c_contiguous
    s = m.stream()
    for t, x_t in enumerate(inputs):
        np.testing.assert_allclose(s(x_t), y[t], rtol=1e-5, atol=1e-6, err_msg=f"y[{t}]")
        if t == 0:
            compiled = len(s._kernel.signatures)
    assert s._entry is not s._kernel  # the compiled entry point was found, and used
    assert len(s._kernel.signatures) == compiled  # no input needed another signature


def test_stream_keeps_the_dispatcher_when_layers_differ_in_type():
    """One entry point serves every layer only if all their arguments have the same types;
    else the stream must keep calling the dispatcher, which types each call."""
    from nlstm.stream import _entry_point
    m = nlstm.LSTM(3, 4, seed=0)
    s = m.stream()
    s(np.ones(3, np.float32))
    k, rest = s._calls[0][0]
    x = np.ones((1, 3), np.float32)
    same = [(0, True, x, *rest), (1, True, x, *rest)]
    assert _entry_point(s._kernel, same) is not None
    assert _entry_point(s._kernel, same + [(0, True, x.astype(np.float64), *rest)]) is None


@pytest.mark.parametrize("make", [
    lambda dt: nlstm.RNN(4, 5, num_layers=2, dtype=dt, seed=1),
    lambda dt: nlstm.RNN(4, 5, nonlinearity="relu", bias=False, dtype=dt, seed=1),
    lambda dt: nlstm.GRU(4, 5, num_layers=2, dtype=dt, seed=1),
    lambda dt: nlstm.GRU(4, 5, zoneout=0.3, linear_before_reset=False, dtype=dt, seed=1),
    lambda dt: nlstm.LSTM(4, 5, num_layers=2, bias=False, dtype=dt, seed=1),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_plain_cells_stream_takes_its_arguments_as_one_table(make, dtype):
    """A plain cell's stream hands its step kernel one table of addresses (kernels.table)
    instead of eight to ten arrays: every row must come back as the array, flag or number
    it was, so the stream gives ``layer.step``'s bits (which passes the arrays)."""
    m = make(dtype)
    s = m.stream(batch_size=3)
    assert s._kernel.py_func.__name__.endswith("_step_table")
    x = np.random.default_rng(2).standard_normal((6, 3, 4)).astype(dtype)
    state = None
    for t in range(6):
        y, state = m.step(x[t], state)
        np.testing.assert_array_equal(s(x[t]), y)
    for a, b in zip(_arrays(s.state), _arrays(state)):
        np.testing.assert_array_equal(a, b)


def test_a_stream_is_never_copied():
    """A copy would point into the original's buffers (its table holds their addresses)."""
    import copy
    import pickle
    s = nlstm.RNN(4, 5, seed=1).stream()
    s(np.ones(4, np.float32))
    for how in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="layer.stream"):
            how(s)
