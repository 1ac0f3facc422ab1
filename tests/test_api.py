"""The layer's API: shapes, dtypes, gradients accumulating, state dict, threads."""
import numpy as np
import pytest

import nlstm


def test_shapes_and_dtypes():
    for dtype in (np.float32, np.float64):
        m = nlstm.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=dtype)
        y, (h, c) = m(np.zeros((5, 7, 3)))
        assert y.shape == (5, 7, 8) and h.shape == c.shape == (4, 5, 4)
        assert y.dtype == h.dtype == c.dtype == dtype
        assert all(p.dtype == dtype for p in m.params.values())
        y, (h, c) = m(np.zeros((7, 3)))
        assert y.shape == (7, 8) and h.shape == (4, 4)


def test_state_dict_names_and_init():
    m = nlstm.LSTM(3, 16, num_layers=2, bidirectional=True, seed=5)
    sd = m.state_dict()
    assert list(sd)[:4] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert sd["weight_ih_l0"].shape == (64, 3) and sd["weight_ih_l1_reverse"].shape == (64, 32)
    assert max(abs(v).max() for v in sd.values()) <= 0.25
    assert all(abs(v).max() > 0.2 for v in sd.values())  # really uniform over ±1/√H
    same = nlstm.LSTM(3, 16, num_layers=2, bidirectional=True, seed=5).state_dict()
    assert all(np.array_equal(sd[k], same[k]) for k in sd)
    other = nlstm.LSTM(3, 16, num_layers=2, bidirectional=True, seed=6).state_dict()
    assert not np.array_equal(sd["weight_ih_l0"], other["weight_ih_l0"])
    sd["weight_ih_l0"][:] = 0  # a copy: the layer is untouched
    assert m.params["weight_ih_l0"].any()
    assert "bias_ih_l0" not in nlstm.LSTM(3, 4, bias=False).state_dict()


def test_gradients_accumulate_until_zero_grad():
    rng = np.random.default_rng(0)
    m = nlstm.LSTM(3, 4, dtype=np.float64, seed=0)
    x, dy = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 4))
    m.forward(x)
    m.backward(dy)
    once = {k: v.copy() for k, v in m.grads.items()}
    assert all(v.any() for v in once.values())
    m.forward(x)
    m.backward(dy)
    for k in once:
        np.testing.assert_allclose(m.grads[k], 2 * once[k], rtol=1e-12, err_msg=k)
    m.zero_grad()
    assert not any(v.any() for v in m.grads.values())


# 1 and 2 threads may take different block-product paths (one 32-row BLAS product per step,
# or two 16-row loop products), so they agree to the rounding of the dtype, not bitwise.
@pytest.mark.parametrize("dtype,tol", [(np.float32, dict(rtol=1e-4, atol=1e-5)),
                                       (np.float64, dict(rtol=1e-12, atol=1e-13))])
def test_one_and_two_threads_agree(dtype, tol):
    rng = np.random.default_rng(0)
    m = nlstm.LSTM(16, 64, num_layers=2, bidirectional=True, seed=0, dtype=dtype)
    x = rng.standard_normal((30, 32, 16)).astype(dtype)
    lengths = rng.integers(0, 31, 32)
    dy = rng.standard_normal((30, 32, 128)).astype(dtype)
    results = []
    before = nlstm.get_num_threads()
    try:
        for n in (1, 2):
            nlstm.set_num_threads(n)
            m.zero_grad()
            y, (h, c) = m.forward(x, lengths=lengths)
            dx, _ = m.backward(dy)
            results.append((y, h, c, dx, {k: v.copy() for k, v in m.grads.items()}))
    finally:
        nlstm.set_num_threads(before)
    (y1, h1, c1, dx1, g1), (y2, h2, c2, dx2, g2) = results
    for name, a, b in [("y", y1, y2), ("h", h1, h2), ("c", c1, c2), ("dx", dx1, dx2)] + \
            [(k, g1[k], g2[k]) for k in g1]:
        np.testing.assert_allclose(a, b, err_msg=name, **tol)


def test_set_num_threads_rejects_bad_values():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            nlstm.set_num_threads(bad)


@pytest.mark.parametrize("copied", [None, "pickle", "deepcopy"])
@pytest.mark.parametrize("cls", [nlstm.LSTM, nlstm.GRU, nlstm.RNN, nlstm.LayerNormLSTM])
def test_in_place_parameter_updates_reach_every_path(cls, copied):
    """Kernels read weights in a transposed internal layout; updating ``params`` in place
    (as optimizers do) or loading a state dict must be seen by forward, backward and step.
    The batch has more rows than threads, so the backward carry uses W_hh packed as
    panels, which must be repacked after the update. A pickled or deep-copied layer
    (``best = copy.deepcopy(model)``) too: pickle copies params' views of the stored
    weights apart from them; an optimizer copied with the layer must still reach it."""
    import copy
    import pickle

    rng = np.random.default_rng(0)
    B = nlstm.get_num_threads() + 3
    m = cls(3, 4, num_layers=2, dtype=np.float64, seed=0)
    x = rng.standard_normal((5, B, 3))
    dy = np.ones((5, B, 4))
    m.forward(x)
    m.backward(dy)  # a backward with the old weights first
    m.step(x[0])  # and a step: the copy must not keep the step's arrays
    opt = nlstm.optim.SGD(m, lr=0.5)
    if copied == "pickle":
        m, opt = pickle.loads(pickle.dumps((m, opt)))
    elif copied == "deepcopy":
        m, opt = copy.deepcopy((m, opt))
    fresh = cls(3, 4, num_layers=2, dtype=np.float64, seed=1)
    for k, v in fresh.params.items():
        m.params[k][...] = v  # in place, like an optimizer step
    np.testing.assert_array_equal(m(x)[0], fresh(x)[0])
    np.testing.assert_array_equal(m.step(x[0])[0], fresh.step(x[0])[0])
    m.forward(x)
    fresh.forward(x)
    np.testing.assert_array_equal(m.backward(dy)[0], fresh.backward(dy)[0])
    m.load_state_dict(cls(3, 4, num_layers=2, dtype=np.float64, seed=2).state_dict())
    np.testing.assert_array_equal(m(x)[0], cls(3, 4, num_layers=2, dtype=np.float64, seed=2)(x)[0])
    assert all(m.grads[k].shape == p.shape for k, p in m.params.items())
    # the optimizer's arrays are the layer's: its step reaches the kernels
    want = {k: v - 0.5 * m.grads[k] for k, v in m.params.items()}
    assert all(abs(g).max() > 0 for g in m.grads.values())
    opt.step()
    for k, v in want.items():
        np.testing.assert_allclose(m.params[k], v, rtol=1e-12, atol=0)
    fresh.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(m(x)[0], fresh(x)[0])


@pytest.mark.parametrize("cost,want", [
    (None, [(0, 4), (4, 8)]),                        # by count
    ([5] * 8, [(0, 4), (4, 8)]),                     # equal lengths: the same
    ([10, 1, 1, 1, 1, 1, 1, 1, 1, 1], [(0, 1), (1, 10)]),  # one long row alone
    ([1, 1, 1, 1, 1, 1, 1, 1, 8], [(0, 8), (8, 9)]),  # eight short rows against one long
    ([0] * 6, [(0, 3), (3, 6)]),                     # no cost at all: by count
])
def test_row_ranges_balance_the_rows_cost(cost, want):
    from nlstm import _threads

    B = len(cost) if cost is not None else 8
    bounds = _threads.row_bounds(B, 2, None if cost is None else np.array(cost))
    assert list(zip(bounds[:-1], bounds[1:])) == want


def test_even_row_ranges_are_kept_and_a_cost_never_changes_them():
    from nlstm import _threads

    even = _threads.row_bounds(10, 2).tolist()
    assert even == [0, 5, 10]
    assert _threads.row_bounds(10, 2, np.array([10] + [1] * 9)).tolist() == [0, 1, 10]
    assert _threads.row_bounds(10, 2).tolist() == even
    assert _threads.row_bounds(10, 3).tolist() == [0, 3, 6, 10]


def test_parallel_calls_work_in_a_forked_child(monkeypatch):
    """Threads do not survive fork(), and Numba's GNU OpenMP layer terminates a forked child
    that starts a parallel region: the child runs its calls on its own thread instead."""
    import multiprocessing as mp

    before = nlstm.get_num_threads()
    nlstm.set_num_threads(2)
    try:
        m = nlstm.LSTM(8, 64, seed=0)
        x = np.random.default_rng(0).standard_normal((50, 64, 8)).astype(np.float32)
        want = m(x)[0]  # starts the threads in this process
        ctx = mp.get_context("fork")
        with ctx.Pool(1) as pool:
            got = pool.apply_async(_forward_in_child, (m, x)).get(timeout=30)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # Numba's threads started by someone else (numba.get_num_threads starts them) count too
        monkeypatch.setattr(nlstm._threads, "_layer", None, raising=False)
        with ctx.Pool(1) as pool:
            got = pool.apply_async(_forward_in_child, (m, x)).get(timeout=30)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    finally:
        nlstm.set_num_threads(before)


def _forward_in_child(m, x):
    return m(x)[0]


@pytest.mark.parametrize("cls", [nlstm.LSTM, nlstm.GRU, nlstm.RNN])
def test_weights_and_buffers_start_on_a_cache_line(cls):
    """The kernels stream the weights and workspace buffers with vector loads; a start
    off a 64-byte boundary made every load straddle two cache lines (S inference 21%
    slower). Shapes chosen so that NumPy's own 16-byte alignment would often miss."""
    from nlstm.kernels.tuning import ALIGN_BYTES as ALIGN
    B = nlstm.get_num_threads() + 3
    m = cls(5, 12, num_layers=2, bidirectional=True, seed=0)
    m.forward(np.ones((7, B, 5), np.float32))
    m.backward(np.ones((7, B, m.output_size), np.float32))
    ws = m._ws
    arrays = list(m._wt.values()) + [m._step_work, ws.x]
    arrays += list(m._pack_bufs.values())
    # The last layer's y and dx are fresh output arrays for the caller (see _output_buffer).
    arrays += [g for layer in ws.gates for g in layer] + ws.y[:-1]
    # the backward carry's weights, packed as panels (2 layers × 2 directions)
    carry = [key for key in m._pack_bufs if key[-1] == "carry"]
    assert len(carry) == 4
    for a in arrays:
        assert a.ctypes.data % ALIGN == 0 and a.flags.c_contiguous


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("unbatched", [False, True])
def test_dx_is_a_fresh_array_each_backward(batch_first, unbatched):
    """backward hands dx over (no copy) in a new array each call: a dx kept from one call
    is not changed by the next, in every layout."""
    rng = np.random.default_rng(4)
    m = nlstm.LSTM(5, 12, seed=0, batch_first=batch_first)
    shape = (7, 5) if unbatched else ((3, 7, 5) if batch_first else (7, 3, 5))
    x1, x2 = rng.standard_normal(shape), rng.standard_normal(shape)
    dy = np.ones(shape[:-1] + (12,), np.float32)
    m.forward(x1)
    dx1 = m.backward(dy)[0]
    kept = dx1.copy()
    m.forward(x2)
    dx2 = m.backward(dy)[0]
    assert dx1.shape == dx2.shape == shape and dx2.flags.c_contiguous
    np.testing.assert_array_equal(dx1, kept)
    assert not np.shares_memory(dx1, dx2) and not np.array_equal(dx1, dx2)


@pytest.mark.parametrize("cls", [nlstm.LSTM, nlstm.GRU, nlstm.RNN])
def test_inference_reads_a_conforming_input_in_place(cls):
    """Inference reads a C-contiguous input of the layer's dtype where it is, without the
    copy into the workspace: same outputs as from inputs that are copied (float64,
    batch-first, read-only, ragged), and the input is left as it was."""
    rng = np.random.default_rng(3)
    m = cls(6, 8, num_layers=2, bidirectional=True, seed=0)
    x = rng.standard_normal((9, 4, 6)).astype(np.float32)
    lengths = np.array([9, 3, 0, 7])
    kept = x.copy()
    x.flags.writeable = False
    for lens in (None, lengths):
        y, _ = m(x, lengths=lens)
        np.testing.assert_array_equal(y, m(x.astype(np.float64), lengths=lens)[0])
        m_bf = cls(6, 8, num_layers=2, bidirectional=True, seed=0, batch_first=True)
        np.testing.assert_array_equal(y, m_bf(x.transpose(1, 0, 2), lengths=lens)[0].transpose(1, 0, 2))
    np.testing.assert_array_equal(x, kept)


@pytest.mark.parametrize("cls", [nlstm.LSTM, nlstm.GRU, nlstm.RNN])
def test_backward_reads_a_conforming_dy_in_place(cls):
    """Backward reads a C-contiguous dy of the layer's dtype where it is: the gradients
    equal those from a dy that is converted first (float64), through three layers (whose
    own output gradients take turns in the workspace), and dy is left as it was."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 5, 3)).astype(np.float32)
    dy = rng.standard_normal((6, 5, 8)).astype(np.float32)
    kept = dy.copy()
    results = []
    for g in (dy, dy.astype(np.float64)):
        m = cls(3, 4, num_layers=3, bidirectional=True, dropout=0.3, seed=0)
        m.forward(x)
        dx, d0 = m.backward(g)
        results.append((dx, d0, {k: v.copy() for k, v in m.grads.items()}))
    np.testing.assert_array_equal(dy, kept)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    for k in results[0][2]:
        np.testing.assert_array_equal(results[0][2][k], results[1][2][k], err_msg=k)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cls", [nlstm.LSTM, nlstm.GRU, nlstm.RNN])
def test_outputs_handed_out_are_never_written_again(cls, batch_first):
    """y and the final state are handed over without a copy (the kernels write fresh arrays
    each call), so a later call of the same shape, inference or training and backward,
    must leave an earlier y and final state as they were."""
    rng = np.random.default_rng(5)
    m = cls(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first, seed=0)
    x1, x2 = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    as_list = lambda s: list(s) if isinstance(s, tuple) else [s]
    y1, s1 = m(x1)
    kept = [a.copy() for a in [y1] + as_list(s1)]
    y2, s2 = m(x2)
    m.forward(x2)
    m.backward(np.ones_like(y2))
    for a, k in zip([y1] + as_list(s1), kept):
        np.testing.assert_array_equal(a, k)
    assert not np.array_equal(y1, y2)
    assert not np.array_equal(as_list(s1)[0], as_list(s2)[0])
    u1, t1 = m(x1[0])  # unbatched
    kept = [a.copy() for a in [u1] + as_list(t1)]
    m(x2[0])
    for a, k in zip([u1] + as_list(t1), kept):
        np.testing.assert_array_equal(a, k)
