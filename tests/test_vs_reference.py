"""Forward and every gradient of every cell against the float64 oracle, over random
configurations (layers, directions, layouts, lengths with zeros, given/omitted state)."""
import numpy as np
import pytest

import nlstm

import reference as R
from cases import (ALL_KINDS, KINDS, TOL, VARIANTS, answer_arrays, make_case, run_nlstm, state3,
                   time_major, tolerance)


def run_reference(case, forward_only=False, params=None):
    """The oracle's answer in float64, with the model's weights or ``params``."""
    m = case["model"]
    params = m.params if params is None else params
    T, B, LD = case["T"], case["B"], case["L"] * case["D"]
    x = time_major(case, case["x"]).astype(np.float64)
    if case["state"] is None:
        init = [np.zeros((LD, B, n)) for n in m._state_sizes()]
    else:
        init = [state3(case, s).astype(np.float64) for s in case["state"]]
    lengths = np.full(B, T) if case["lengths"] is None else case["lengths"]
    y, final, cache = R.forward(case["ref_cell"], params, x, init, lengths, case["L"],
                                m.bidirectional)
    if forward_only:
        return dict(y=y, final=final)
    dx, dinit, grads = R.backward(cache, time_major(case, case["dy"]).astype(np.float64),
                                  [state3(case, g).astype(np.float64) for g in case["dfinal"]])
    return dict(y=y, final=final, dx=dx, dinit=dinit, grads=grads)


def rounding_spread(case, want, forward_only=False, trials=4):
    """For a LayerNorm cell in float32, each array of ``want`` (by ``answer_arrays``'s
    names): the largest change in the oracle's answer over ``trials`` runs with every
    weight moved by up to one float32 ulp, seeded; how far float32 rounding alone can move
    the answer (see ``cases.tolerance``). 0 for everything else."""
    m = case["model"]
    names = answer_arrays(want)
    spread = dict.fromkeys(names, 0.0)
    if m.dtype != np.float32 or not case["kind"].startswith("lnlstm"):
        return spread
    rng = np.random.default_rng(0)
    for _ in range(trials):
        params = {k: p.astype(np.float64) * (1 + rng.uniform(-2.0**-24, 2.0**-24, p.shape))
                  for k, p in m.params.items()}
        moved = answer_arrays(run_reference(case, forward_only, params))
        for k, a in names.items():
            spread[k] = max(spread[k], float(np.abs(moved[k] - a).max(initial=0)))
    return spread


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("kind", list(KINDS))
def test_matches_reference(kind, seed, dtype):
    case = make_case(seed, dtype, kind)
    got, want = run_nlstm(case), run_reference(case)
    spread = rounding_spread(case, want)
    tol = lambda name, w: tolerance(kind, dtype, w, spread[name])
    for name in ("y", "dx"):
        assert got[name].dtype == dtype, name
        np.testing.assert_allclose(time_major(case, got[name]), want[name], err_msg=name,
                                   **tol(name, want[name]))
    for name in ("final", "dinit"):
        assert len(got[name]) == len(want[name])
        for i, (g, w) in enumerate(zip(got[name], want[name])):
            assert g.dtype == dtype
            np.testing.assert_allclose(state3(case, g), w, err_msg=f"{name}[{i}]",
                                       **tol(f"{name}[{i}]", w))
    assert set(got["grads"]) == set(want["grads"])
    for k, g in want["grads"].items():
        np.testing.assert_allclose(got["grads"][k], g, err_msg=k, **tol(k, g))


@pytest.mark.parametrize("kind", list(KINDS))
def test_zero_length_rows_keep_initial_state_and_output_zero(kind, rng):
    cls, extra, _ = KINDS[kind]
    m = cls(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=1, **extra)
    B, T = 3, 4
    x = rng.standard_normal((T, B, 3))
    init = [rng.standard_normal((4, B, 4)) for _ in m._state_labels]
    y, final = m(x, init[0] if len(init) == 1 else tuple(init), lengths=[0, 4, 0])
    final = list(final) if isinstance(final, tuple) else [final]
    assert np.all(y[:, [0, 2]] == 0)
    for f, s in zip(final, init):
        np.testing.assert_array_equal(f[:, [0, 2]], s[:, [0, 2]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("kind", list(VARIANTS))
def test_variant_forward_matches_reference(kind, seed, dtype):
    case = make_case(seed, dtype, kind)
    m = case["model"]
    for k in m.params:  # weights large enough that clipping really happens
        m.params[k] *= 3
    got, want = run_nlstm(case), run_reference(case, forward_only=True)
    spread = rounding_spread(case, want, forward_only=True)
    np.testing.assert_allclose(time_major(case, got["y"]), want["y"], err_msg="y",
                               **tolerance(kind, dtype, want["y"], spread["y"]))
    for i, (g, w) in enumerate(zip(got["final"], want["final"])):
        np.testing.assert_allclose(state3(case, g), w, err_msg=f"final[{i}]",
                                   **tolerance(kind, dtype, w, spread[f"final[{i}]"]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", list(VARIANTS))
def test_variant_gradients_match_reference(kind, seed, dtype):
    case = make_case(seed, dtype, kind)
    got, want = run_nlstm(case), run_reference(case)
    spread = rounding_spread(case, want)
    tol = lambda name, w: tolerance(kind, dtype, w, spread[name])
    np.testing.assert_allclose(time_major(case, got["dx"]), want["dx"], err_msg="dx",
                               **tol("dx", want["dx"]))
    for i, (g, w) in enumerate(zip(got["dinit"], want["dinit"])):
        np.testing.assert_allclose(state3(case, g), w, err_msg=f"dinit[{i}]",
                                   **tol(f"dinit[{i}]", w))
    assert set(got["grads"]) == set(want["grads"])
    for k, g in want["grads"].items():
        np.testing.assert_allclose(got["grads"][k], g, err_msg=k, **tol(k, g))


@pytest.mark.parametrize("B,full,D", [(9, 6, 1), (40, 34, 2)])
@pytest.mark.parametrize("kind", list(KINDS))
def test_large_weights(kind, B, full, D):
    """Big weights at an H off the vector width: the LSTMs' forward in the loops of
    blocks.py (four rows sharing each weight row), the GRU's and RNN's products and every
    carry on panels ending in a partial one, single rows (the ragged ends) on the one-row
    paths: ``full`` rows active at every step, the rest ragged; one direction or both;
    against the oracle."""
    import nlstm
    from nlstm.kernels import tiles
    cls, extra, make_cell = ALL_KINDS[kind]
    rng = np.random.default_rng(6)
    # H past what L1 holds of W_hh, none a multiple of the vector width's panels
    T, I, H = 3, 2, {nlstm.LSTM: 260, nlstm.LayerNormLSTM: 260, nlstm.GRU: 300,
                     nlstm.RNN: 510}[cls]
    m = cls(I, H, bidirectional=D == 2, dtype=np.float64, seed=4, **extra)
    assert H % tiles.panel_width(np.float64) and H % (tiles.panel_width(np.float64) // 4)
    x = rng.standard_normal((T, B, I))
    lengths = rng.integers(0, T + 1, B)
    lengths[:full] = T
    dy = rng.standard_normal((T, B, m.output_size))
    before = nlstm.get_num_threads()
    try:
        nlstm.set_num_threads(1)
        y, _ = m.forward(x, lengths=lengths)
        dx, _ = m.backward(dy)
    finally:
        nlstm.set_num_threads(before)
    init = [np.zeros((D, B, n)) for n in m._state_sizes()]
    ry, _, cache = R.forward(make_cell(), m.params, x, init, lengths, 1, D == 2)
    np.testing.assert_allclose(y, ry, rtol=1e-10, atol=1e-12, err_msg="y")
    rdx, _, rgrads = R.backward(cache, dy, [np.zeros_like(a) for a in init])
    np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-12, err_msg="dx")
    for k, g in rgrads.items():
        np.testing.assert_allclose(m.grads[k], g, rtol=1e-9, atol=1e-11, err_msg=k)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", list(KINDS) + ["lstm_proj", "lnlstm_proj"])
def test_large_batch_block_path(kind, threads):
    """Batches big enough for the block products per step (and, with 2 threads, row
    ranges per thread, and whole-sequence products split by rows and gate columns), with
    ragged lengths and both directions."""
    import nlstm
    from cases import ALL_KINDS
    cls, extra, make_cell = ALL_KINDS[kind]
    if extra.get("proj_size") == -1:
        extra = dict(extra, proj_size=3)
    rng = np.random.default_rng(5)
    T, B, I, H = 4, 70, 3, 5
    m = cls(I, H, bidirectional=True, dtype=np.float64, seed=3, **extra)
    x = rng.standard_normal((T, B, I))
    lengths = rng.integers(0, T + 1, B)
    lengths[:40] = T  # enough full rows that a block of ≥ 32 active rows runs each step
    dy = rng.standard_normal((T, B, 2 * m._out_size))
    before = nlstm.get_num_threads()
    # Every recurrence and every whole-sequence product splits over the threads, and the
    # input projection skips the padding (one product per batch row).
    from nlstm.kernels import tuning
    saved = (tuning.MIN_PARALLEL_WORK, tuning.SMALL_GEMM, tuning.PER_ROW_MIN_SAVING)
    tuning.MIN_PARALLEL_WORK = tuning.SMALL_GEMM = tuning.PER_ROW_MIN_SAVING = 0
    try:
        nlstm.set_num_threads(threads)
        y, _ = m.forward(x, lengths=lengths)
        dx, _ = m.backward(dy)
    finally:
        nlstm.set_num_threads(before)
        tuning.MIN_PARALLEL_WORK, tuning.SMALL_GEMM, tuning.PER_ROW_MIN_SAVING = saved
    init = [np.zeros((2, B, n)) for n in m._state_sizes()]
    ry, _, cache = R.forward(make_cell(), m.params, x, init, lengths, 1, True)
    np.testing.assert_allclose(y, ry, rtol=1e-10, atol=1e-12, err_msg="y")
    if getattr(make_cell(), "plain", True):
        rdx, _, rgrads = R.backward(cache, dy, [np.zeros_like(a) for a in init])
        np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-12, err_msg="dx")
        for k, g in rgrads.items():
            np.testing.assert_allclose(m.grads[k], g, rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("B,threads", [(1, 1), (2, 2), (3, 2)])
@pytest.mark.parametrize("kind", list(ALL_KINDS))
def test_one_row_ranges(kind, B, threads):
    """Row ranges of a single row take the one-row paths (LSTM forward and backward, RNN
    and PyTorch-form GRU forward; no active-row bookkeeping): a one-row batch, and with two
    threads ranges of one row at b0 = 1 or 2; rows shorter than T and of length 0, both
    directions, given final-state gradients, against the oracle."""
    import nlstm
    cls, extra, make_cell = ALL_KINDS[kind]
    if extra.get("proj_size") == -1:
        extra = dict(extra, proj_size=3)
    rng = np.random.default_rng(B)
    T, I, H = 6, 3, 5
    m = cls(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=2, **extra)
    x = rng.standard_normal((T, B, I))
    lengths = np.array([4, T, 0][:B])
    init = [rng.standard_normal((4, B, n)) for n in m._state_sizes()]
    from nlstm.kernels import tuning
    before, saved = nlstm.get_num_threads(), tuning.MIN_PARALLEL_WORK
    dy = rng.standard_normal((T, B, 2 * m._out_size))
    dfinal = [rng.standard_normal(a.shape) for a in init]
    tuning.MIN_PARALLEL_WORK = 0  # every recurrence splits its rows
    try:
        nlstm.set_num_threads(threads)
        y, final = m.forward(x, init[0] if len(init) == 1 else tuple(init), lengths=lengths)
        dx, dinit = m.backward(dy, *dfinal)
    finally:
        nlstm.set_num_threads(before)
        tuning.MIN_PARALLEL_WORK = saved
    ry, rfinal, cache = R.forward(make_cell(), m.params, x, init, lengths, 2, True)
    tol = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y, ry, err_msg="y", **tol)
    for i, (a, b) in enumerate(zip(final if isinstance(final, tuple) else [final], rfinal)):
        np.testing.assert_allclose(a, b, err_msg=f"final[{i}]", **tol)
    if getattr(make_cell(), "plain", True):  # the variants' gradients: finite differences
        rdx, rdinit, rgrads = R.backward(cache, dy, dfinal)
        np.testing.assert_allclose(dx, rdx, err_msg="dx", **tol)
        for i, (a, b) in enumerate(zip(dinit if isinstance(dinit, tuple) else [dinit], rdinit)):
            np.testing.assert_allclose(a, b, err_msg=f"dinit[{i}]", **tol)
        for k, g in rgrads.items():
            np.testing.assert_allclose(m.grads[k], g, err_msg=k, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_small_weights_carry(dtype):
    """The backward carry against small weights with more than 128 outputs (H = 160, not a
    whole number of panels in float32 with AVX-512: the carry's last panel partial, see
    tiles.panel_rows): an RNN over 6 rows, against the oracle."""
    import nlstm
    rng = np.random.default_rng(7)
    T, B, I, H = 3, 6, 4, 160
    m = nlstm.RNN(I, H, dtype=dtype, seed=1)
    x = rng.standard_normal((T, B, I))
    lengths = np.array([3, 3, 2, 3, 1, 3])
    dy = rng.standard_normal((T, B, H))
    y, _ = m.forward(x, lengths=lengths)
    dx, dh0 = m.backward(dy)
    init = [np.zeros((1, B, H))]
    ry, _, cache = R.forward(R.RNNCell("tanh"), m.params, x, init, lengths, 1, False)
    rdx, rdinit, rgrads = R.backward(cache, dy, [np.zeros((1, B, H))])
    tol = TOL[dtype]
    np.testing.assert_allclose(y, ry, err_msg="y", **tol)
    np.testing.assert_allclose(dx, rdx, err_msg="dx", **tol)
    np.testing.assert_allclose(dh0, rdinit[0], err_msg="dh0", **tol)
    for k, g in rgrads.items():
        np.testing.assert_allclose(m.grads[k], g, err_msg=k, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, K, G", [(37, 9, 20), (1, 5, 12), (6, 1, 8), (4, 3, 1), (9, 4, 150)])
def test_backward_products_in_parts(dtype, N, K, G):
    """The backward's whole-sequence products on the panel tiles, run as the threads'
    parts: the weight gradient by panels of columns (from column 2, adding into what is
    there, the last panel partial), dx by row ranges (written, then added to), at shapes
    with no whole panel or tile of rows: one row, one column, one input. Against the
    float64 product; nothing outside the columns written."""
    from nlstm.kernels import tiles
    no_rows = np.zeros(0, np.int64)
    rng = np.random.default_rng(N * 100 + K + G)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    S = tiles.panel_width(dtype)
    dg = rng.standard_normal((N, G + 3)).astype(dtype)
    a = rng.standard_normal((N, K)).astype(dtype)
    gw_t = rng.standard_normal((K, G + 3)).astype(dtype)  # as stored: gwᵀ, rows contiguous
    start = gw_t.astype(np.float64)
    none = np.zeros((N, 0), dtype)
    dgp = np.full((G + S) * tiles.grad_block(dg, a, none), np.nan, dtype)
    panels = -(-G // S)
    for p0, p1 in zip(range(panels), range(1, panels + 1)):  # columns 2:2+G, a part a panel
        tiles.weight_grad_panels(p0, p1, 2, 2 + G, dg, a, gw_t, none, np.zeros((0, G + 3), dtype),
                                 dg[0, :0], dgp, no_rows)
    want = start.copy()
    want[:, 2:2 + G] += a.T.astype(np.float64) @ dg[:, 2:2 + G].astype(np.float64)
    np.testing.assert_allclose(gw_t, want, **tol)
    np.testing.assert_array_equal(gw_t[:, :2], start[:, :2])
    np.testing.assert_array_equal(gw_t[:, 2 + G:], start[:, 2 + G:])
    w_t = rng.standard_normal((K, G + 3)).astype(dtype)  # W_ih as stored, (I, G)
    wp = np.empty(tiles.panels_size(w_t.T), dtype)
    tiles.pack_panels_of_transpose(wp, w_t)
    dx = np.full((N, K), np.nan, dtype)
    rows = sorted({0, N // 2, N})
    for first in (tiles.FROM_ZERO, tiles.FROM_OUT):  # the first direction writes, the second adds
        for r0, r1 in zip(rows, rows[1:]):
            tiles.project_panels(r0, r1, dg, wp, dx, np.zeros(0, dtype), no_rows, first)
    want = 2 * dg.astype(np.float64) @ w_t.T.astype(np.float64)
    np.testing.assert_allclose(dx, want, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 7])
def test_block_products(dtype, n):
    """blocks.matmul_nn over all columns (groups of four rows, then single rows) and a
    column range, and blocks.matmul_nt (the backward carry's dot products along W_hhᵀ's
    rows) over all columns and a column range, against NumPy: the per-step products where
    the tiles do not apply."""
    from nlstm.kernels import blocks
    rng = np.random.default_rng(n)
    K, G = 13, 4 * 13
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    w_t = rng.standard_normal((K, G)).astype(dtype)
    a = rng.standard_normal((n, K)).astype(dtype)
    out = np.full((n + 1, G), np.nan, dtype)
    blocks.matmul_nn(out, a, w_t, n, 0, G)
    np.testing.assert_allclose(out[:n], a @ w_t, **tol)
    assert np.isnan(out[n]).all()
    out[:] = 7
    blocks.matmul_nn(out, a, w_t, n, K, 3 * K)
    np.testing.assert_allclose(out[:n, K:3 * K], a @ w_t[:, K:3 * K], **tol)
    assert (out[:, :K] == 7).all() and (out[:, 3 * K:] == 7).all() and (out[n] == 7).all()
    dg = rng.standard_normal((n, G)).astype(dtype)
    for c0, c1 in ((0, G), (K, 3 * K)):
        carry = np.full((n + 1, K), np.nan, dtype)
        blocks.matmul_nt(carry, dg, w_t, n, c0, c1)
        np.testing.assert_allclose(carry[:n], dg[:, c0:c1] @ w_t[:, c0:c1].T, **tol)
        assert np.isnan(carry[n]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_loops(dtype):
    """The hand-blocked loops (four rows sharing each load of the weights, and one row),
    which run where the tiles do not, against NumPy."""
    from nlstm.kernels.blocks import _rows4_nn_add, row_nn_add
    rng = np.random.default_rng(10)
    K, G = 7, 37  # a remainder after the groups of four weight rows
    w = rng.standard_normal((K, G)).astype(dtype)
    a = rng.standard_normal((4, K)).astype(dtype)
    g = rng.standard_normal((4, G)).astype(dtype)
    want = g + a @ w
    _rows4_nn_add(g[0], g[1], g[2], g[3], a[0], a[1], a[2], a[3], w)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g, want, **tol)
    o = rng.standard_normal(G).astype(dtype)
    want = o.copy()
    want[5:30] += a[0] @ w[:, 5:30]
    row_nn_add(o, a[0], w, 5, 30)
    np.testing.assert_allclose(o, want, **tol)




def test_saturated_float32_gates_pass_no_gradient():
    """Past the rational tanh's clamp, float32 tanh and σ are exactly ±1 and 0/1, as float64's:
    at 0.9999997 a saturated unit kept a derivative floor that inputs of 1e4 turned into
    weight gradients of order one where the true ones are ~0."""
    import numba
    from nlstm.kernels.activations import sigmoid, tanh

    @numba.njit
    def acts(x):
        return tanh(x), sigmoid(x)
    for v, t, s in ((1e4, 1, 1), (-1e4, -1, 0), (20.0, 1, 1), (np.inf, 1, 1)):
        assert acts(np.float32(v)) == (t, s), v
    assert acts(np.float32(8.0))[0] == 1  # past the clamp (7.9053)
    assert all(np.isnan(acts(np.float32(np.nan))))
    rng = np.random.default_rng(7)
    x = rng.standard_normal((12, 3, 4)) * 3e4
    x[:, 0] = 1e4  # a row held where every unit saturates
    for cls in (nlstm.LSTM, nlstm.GRU, nlstm.RNN, nlstm.LayerNormLSTM):
        got = {}
        for dt in (np.float32, np.float64):
            m = cls(4, 6, seed=1, dtype=dt)
            y, _ = m.forward(x.astype(dt))
            dx, _ = m.backward(np.ones_like(y))
            got[dt] = (y, dx, *m.grads.values())
        for a, b in zip(got[np.float32], got[np.float64]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=cls.__name__)
