"""Streaming: step by step equals the whole sequence in one call."""
import numpy as np
import pytest

import nlstm
from cases import KINDS


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("L,B", [(1, 1), (3, 4)])
def test_step_equals_sequence(dtype, L, B):
    rng = np.random.default_rng(L)
    m = nlstm.LSTM(3, 5, num_layers=L, dtype=dtype, seed=L)
    x = rng.standard_normal((7, B, 3)).astype(dtype)
    h0, c0 = rng.standard_normal((2, L, B, 5)).astype(dtype)
    y, (h, c) = m(x, (h0, c0))
    state = (h0, c0)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    for t in range(7):
        y_t, state = m.step(x[t], state)
        assert y_t.dtype == dtype and y_t.shape == (B, 5)
        np.testing.assert_allclose(y_t, y[t], err_msg=f"y[{t}]", **tol)
    np.testing.assert_allclose(state[0], h, err_msg="h", **tol)
    np.testing.assert_allclose(state[1], c, err_msg="c", **tol)


def test_step_unbatched_and_default_state():
    m = nlstm.LSTM(3, 4, num_layers=2, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((6, 3))
    y, (h, c) = m(x)
    state = None
    for t in range(6):
        y_t, state = m.step(x[t], state)
    assert y_t.shape == (4,) and state[0].shape == (2, 4)
    np.testing.assert_allclose(y_t, y[-1], rtol=1e-12)
    np.testing.assert_allclose(state[1], c, rtol=1e-12)


def test_step_does_not_modify_given_state():
    m = nlstm.LSTM(3, 4, seed=0)
    h0 = np.ones((1, 2, 4), np.float32)
    c0 = np.ones((1, 2, 4), np.float32)
    m.step(np.ones((2, 3)), (h0, c0))
    assert (h0 == 1).all() and (c0 == 1).all()


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_cell_steps_like_its_sequence(kind, dtype):
    cls, extra, _ = KINDS[kind]
    rng = np.random.default_rng(3)
    m = cls(3, 5, num_layers=2, dtype=dtype, seed=4, **extra)
    x = rng.standard_normal((6, 2, 3)).astype(dtype)
    y, final = m(x)
    state = None
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    if kind.startswith("lnlstm") and dtype == np.float32:
        # a step's row products against the sequence's BLAS projection, scaled by 1/σ of 4H
        # = 20 values (as test_stream allows)
        tol = dict(rtol=1e-5, atol=2e-5)
    for t in range(6):
        y_t, state = m.step(x[t], state)
        np.testing.assert_allclose(y_t, y[t], err_msg=f"y[{t}]", **tol)
    for a, b in zip(state if isinstance(state, tuple) else [state],
                    final if isinstance(final, tuple) else [final]):
        np.testing.assert_allclose(a, b, **tol)
    if kind != "lstm":
        with pytest.raises(ValueError, match="unidirectional"):
            cls(3, 5, bidirectional=True, **extra).step(x[0])


@pytest.mark.parametrize("cls", [nlstm.LSTM, nlstm.GRU, nlstm.RNN])
def test_step_accepts_huge_finite_inputs(cls):
    """The kernels' finiteness check must not add values up (3e38 + 3e38 overflows to Inf):
    the largest finite inputs pass, in the step and in a stream."""
    m = cls(4, 3, seed=0)
    x = np.full((2, 4), np.finfo(np.float32).max, np.float32)
    y, _ = m.step(x)
    assert np.isfinite(y).all()
    assert np.isfinite(m.stream(batch_size=2)(x)).all()


def _unaligned(a):
    """A C-contiguous, writeable copy of a that starts one byte past an address NumPy
    calls aligned (a multiple of the itemsize): ``flags.aligned`` is False."""
    raw = np.empty(a.nbytes + 1, np.uint8)
    b = raw[1:].view(a.dtype).reshape(a.shape)
    b[...] = a
    assert not b.flags.aligned
    return b


@pytest.mark.parametrize("cls", [nlstm.LSTM, nlstm.GRU, nlstm.RNN])
def test_step_after_the_fast_path_takes_every_array_kind(cls):
    """After a first step through the fast path, later steps call the kernel's compiled
    entry point without Numba's typing of the arguments: any array that is not exactly its
    type (read-only, unaligned, strided, another dtype) must go the checked way and give the
    same result, never be misread."""
    rng = np.random.default_rng(0)
    m = cls(3, 4, num_layers=2, seed=1)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    y0, s0 = m.step(x)  # creates the entry point
    y1, s1 = m.step(x, s0)
    assert m._step_entry not in (None, m._step_plan()[0])  # this Numba exposes entry points
    states = list(s0) if isinstance(s0, tuple) else [s0]

    def pack(arrays):
        return tuple(arrays) if len(arrays) > 1 else arrays[0]

    readonly = x.copy()
    readonly.flags.writeable = False
    strided = np.repeat(x, 2, axis=1)[:, ::2]
    for name, xv in [("read-only", readonly), ("unaligned", _unaligned(x)), ("strided", strided),
                     ("float64", x.astype(np.float64)), ("list", x.tolist())]:
        y, s = m.step(xv, s0)
        np.testing.assert_array_equal(y, y1, err_msg=f"x {name}")
    for name, conv in [("read-only", lambda a: np.require(a, requirements="C").copy()),
                       ("unaligned", _unaligned), ("float64", lambda a: a.astype(np.float64))]:
        given = [conv(a) for a in states]
        if name == "read-only":
            for a in given:
                a.flags.writeable = False
        y, s = m.step(x, pack(given))
        np.testing.assert_array_equal(y, y1, err_msg=f"state {name}")
    # and bad input still gets its error, in the same layer after the entry point exists
    with pytest.raises(ValueError, match="x_t contains"):
        m.step(np.full((2, 3), np.nan, np.float32), s0)
    with pytest.raises(ValueError, match="Expected 3, got 4"):
        m.step(np.zeros((2, 4), np.float32), s0)
    with pytest.raises(ValueError, match="state"):
        m.step(x, pack([a[:, :1] for a in states]))
    # unbatched through the same entry point
    y, _ = m.step(x[0])
    np.testing.assert_array_equal(y, m.step(x[:1])[0][0])


def test_a_layer_pickles_after_its_fast_step():
    """The compiled entry point the fast path keeps is this process's alone: not pickled."""
    import pickle
    m = nlstm.LSTM(3, 4, seed=0)
    x = np.ones(3, np.float32)
    y, s = m.step(x)
    twin = pickle.loads(pickle.dumps(m))
    assert twin._step_entry is None
    np.testing.assert_array_equal(twin.step(x)[0], y)
    np.testing.assert_array_equal(twin.step(x, s)[0], m.step(x, s)[0])
