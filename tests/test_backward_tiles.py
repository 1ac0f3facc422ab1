"""The backward's whole-sequence products on the panel tiles (nlstm.kernels.tiles): the
weight gradients (``weight_grad_panels``) and dx (``project_panels`` with W_ih packed from
its (G·H, I) view, the second direction adding), against the float64 product and NumPy's,
on whole and partial panels, and the layers that use them against the NumPy path, the
oracle and themselves on 1 and 2 threads.

The layers take these paths only from ``tuning.SMALL_GEMM`` multiply-adds on (below it,
one NumPy product on the calling thread); the layer tests lower it to 0 so that small
shapes (ragged tails, sizes of one) reach them, and raise it past every product for the
NumPy path.
"""
import numpy as np
import pytest

import nlstm
import nlstm.recurrent as R
from nlstm import _threads
from nlstm.kernels import tiles, tuning
from nlstm.kernels import parallel as P

import reference

DTYPES = [np.float32, np.float64]
NO_ROWS = np.zeros(0, np.int64)


def _close(a, b, dtype, msg):
    """a equals b to the dtype's rounding of sums of terms as large as b's largest (layer
    norm's gradients reach hundreds where others are near zero)."""
    eps = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(a, b, rtol=10 * eps, atol=eps * max(1.0, np.abs(b).max()),
                               err_msg=msg)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, K, K2", [(1, 3, 0), (37, 5, 0), (250, 700, 0), (203, 1, 0),
                                      (4, 4, 0), (37, 5, 6), (250, 700, 64), (203, 1, 1)])
@pytest.mark.parametrize("cols", ["panels", "partial"])
def test_weight_grad_panels_matches_float64_and_numpy(dtype, N, K, K2, cols):
    """gwᵀ[:, c0:c1] += aᵀ·dg[:, c0:c1] (and, with K2 > 0, gvᵀ[:, c0:c1] += bᵀ·dg[:, c0:c1]
    from the same packing of dg), and db[c0:c1] += Σ dg[:, c0:c1] over the rows (the bias
    gradient, summed as dg is packed), on a column slice of 4S columns, as two threads'
    parts, adding into what is there; nothing outside the slice written. The slice whole panels
    (S:3S), or starting and ending inside panels (S+3:3S-5: the second part's panel
    partial, read and written through masks). One row, N not a multiple of 4 nor of the
    depth chunk, K = 700 (depth blocks of one chunk, the last one partial), K = 1 (no
    tile of 4 rows)."""
    S = tiles.panel_width(dtype)
    c0, c1 = (S, 3 * S) if cols == "panels" else (S + 3, 3 * S - 5)
    rng = np.random.default_rng(N + K + K2)
    dg = rng.standard_normal((N, 4 * S)).astype(dtype)
    got, ref, want, ins = [], [], [], []
    for k in (K, K2):
        a = rng.standard_normal((N, k)).astype(dtype)
        gw_t = rng.standard_normal((k, 4 * S)).astype(dtype)
        got.append(gw_t)
        ref.append(gw_t.copy())
        ref[-1][:, c0:c1] += a.T @ dg[:, c0:c1]
        want.append(gw_t.astype(np.float64))
        want[-1][:, c0:c1] += a.T.astype(np.float64) @ dg[:, c0:c1].astype(np.float64)
        ins.append(a)
    dgp = np.full((c1 - c0 + S) * tiles.grad_block(dg, *ins), np.nan, dtype)
    db = rng.standard_normal(4 * S).astype(dtype)
    db_start = db.copy()
    for p0, p1 in ((0, 1), (1, 2)):  # panels counted from column c0
        tiles.weight_grad_panels(p0, p1, c0, c1, dg, ins[0], got[0], ins[1], got[1], db, dgp,
                                 NO_ROWS)
    scale = max(1.0, np.sqrt(N))  # sums of N products of order 1
    tol = dict(rtol=1e-4, atol=1e-5 * scale) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12 * scale)
    for i, (g, r, w) in enumerate(zip(got, ref, want)):
        np.testing.assert_allclose(g, w, err_msg=f"{i}: against float64", **tol)
        np.testing.assert_allclose(g, r, err_msg=f"{i}: against NumPy", **tol)
        np.testing.assert_array_equal(g[:, :c0], r[:, :c0])  # outside the slice: as it was
        np.testing.assert_array_equal(g[:, c1:], r[:, c1:])
    db_want = db_start.astype(np.float64)
    db_want[c0:c1] += dg[:, c0:c1].astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(db, db_want, err_msg="the bias sum against float64", **tol)
    np.testing.assert_array_equal(db[:c0], db_start[:c0])
    np.testing.assert_array_equal(db[c1:], db_start[c1:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, G", [(1, 12), (37, 200), (150, 1030)])
@pytest.mark.parametrize("wide", [2, 1.25, 0.25])
def test_input_grad_on_panels_matches_float64_and_numpy(dtype, N, G, wide):
    """dx = dg·W_ih through ``project_panels`` with W_ih packed from the (G, I) view of its
    stored transpose, as row ranges of two threads: the first direction writes dx, the
    second adds (FROM_OUT). I whole panels (2S), or not (1.25S, 0.25S: the last panel
    partial, padded with zeros in the packing and written through masks, the next row's
    first columns untouched). One row, depth G not a multiple of 4 or of the chunk,
    several row blocks (G = 1030)."""
    S = tiles.panel_width(dtype)
    I = int(wide * S)
    rng = np.random.default_rng(N + G)
    dg = rng.standard_normal((N, G)).astype(dtype)
    w_t = rng.standard_normal((I, G)).astype(dtype)  # W_ih as stored, (I, G)
    wp = np.full(tiles.panels_size(w_t.T), np.nan, dtype)
    tiles.pack_panels(wp, w_t.T)
    packed = np.full_like(wp, np.nan)
    tiles.pack_panels_of_transpose(packed, w_t)
    np.testing.assert_array_equal(packed, wp)  # the padding zero in both
    dx = np.full((N + 1, I), np.nan, dtype)[:N]  # a row of NaN after: never read or written
    cuts = sorted({0, N // 2, N})
    for first in (tiles.FROM_ZERO, tiles.FROM_OUT):
        for r0, r1 in zip(cuts, cuts[1:]):
            tiles.project_panels(r0, r1, dg, wp, dx, np.zeros(0, dtype), NO_ROWS, first)
    assert np.isnan(dx.base[N]).all()
    want = 2 * dg.astype(np.float64) @ w_t.T.astype(np.float64)
    scale = max(1.0, np.sqrt(G))
    tol = dict(rtol=1e-4, atol=1e-5 * scale) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12 * scale)
    np.testing.assert_allclose(dx, want, err_msg="against float64", **tol)
    np.testing.assert_allclose(dx, 2 * (dg @ w_t.T), err_msg="against NumPy", **tol)


CELLS = {
    "lstm": (nlstm.LSTM, {}, lambda: reference.LSTMCell()),
    "gru": (nlstm.GRU, {}, lambda: reference.GRUCell(True)),
    "gru_lbr0": (nlstm.GRU, dict(linear_before_reset=False), lambda: reference.GRUCell(False)),
    "rnn": (nlstm.RNN, {}, lambda: reference.RNNCell("tanh")),
}


def _spy(monkeypatch):
    """Count the backward's tile products' runs: the weight gradients' parts (by their
    Split) and dx's packing of W_ih."""
    used = {"weight_grad_panels": 0, "dx": 0}
    real_rows, real_pack = _threads.run_rows, R.RecurrentLayer._packed_panels

    def run_rows(B, work, split, *rest, **kw):
        used["weight_grad_panels"] += split is P.weight_grad_panels
        return real_rows(B, work, split, *rest, **kw)

    def packed_panels(self, k, d, w, use, vectors=4):
        used["dx"] += use == "dx"
        return real_pack(self, k, d, w, use, vectors)

    monkeypatch.setattr(_threads, "run_rows", run_rows)
    monkeypatch.setattr(R.RecurrentLayer, "_packed_panels", packed_panels)
    return used


def _grads(m, x, lengths, dy, threads):
    before = nlstm.get_num_threads()
    nlstm.set_num_threads(threads)
    try:
        m.zero_grad()
        m.forward(x, lengths=lengths, train=True)
        dx, dstate = m.backward(dy)
    finally:
        nlstm.set_num_threads(before)
    states = list(dstate) if isinstance(dstate, tuple) else [dstate]
    return [dx, *states] + [m.grads[k].copy() for k in sorted(m.grads)]


def _tiles_against_numpy(monkeypatch, m, x, lengths, dy) -> list:
    """m's gradients with the tiles (SMALL_GEMM 0) on 1 and 2 threads (bitwise equal) and
    with every whole-sequence product by NumPy (equal to rounding); returns the tiles'
    (``_grads``)."""
    one = _grads(m, x, lengths, dy, 1)
    two = _grads(m, x, lengths, dy, 2)
    for i, (a, b) in enumerate(zip(one, two)):
        np.testing.assert_array_equal(a, b, err_msg=f"array {i}: 1 and 2 threads")
    small = tuning.SMALL_GEMM
    monkeypatch.setattr(tuning, "SMALL_GEMM", 10 ** 15)
    ref = _grads(m, x, lengths, dy, 1)
    monkeypatch.setattr(tuning, "SMALL_GEMM", small)
    for i, (a, b) in enumerate(zip(one, ref)):
        _close(a, b, m.dtype, f"array {i}: tiles and NumPy")
    return one


def _layer_case(kind, dtype, bi=True):
    cls, extra, _ = CELLS[kind]
    S = tiles.panel_width(dtype)
    # H = S: every gate block a whole panel; I = S: dx on the panels; layer 1's input 2S
    m = cls(S, S, num_layers=2, bidirectional=bi, dtype=dtype, seed=3, **extra)
    rng = np.random.default_rng(7)
    T, B = 9, 6
    x = rng.standard_normal((T, B, S)).astype(dtype)
    lengths = np.array([9, 3, 9, 1, 0, 8])  # ragged, one empty row
    dy = rng.standard_normal((T, B, m.output_size)).astype(dtype)
    return m, x, lengths, dy


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_on_backward_tiles_match_the_oracle_and_numpy(monkeypatch, kind, dtype):
    """Every gradient of a 2-layer bidirectional ragged layer with the backward's products
    on the tiles: against NumPy's (to rounding), the float64 oracle, and bitwise the same
    at 1 and 2 threads."""
    monkeypatch.setattr(tuning, "SMALL_GEMM", 0)
    monkeypatch.setattr(_threads, "cpus_available", lambda: 2)
    used = _spy(monkeypatch)
    m, x, lengths, dy = _layer_case(kind, dtype)
    one = _tiles_against_numpy(monkeypatch, m, x, lengths, dy)
    assert used["weight_grad_panels"] > 0 and used["dx"] > 0, used
    if dtype != np.float64:
        return
    L, D = 2, 2
    init = [np.zeros((L * D, x.shape[1], m.hidden_size)) for _ in m._state_sizes()]
    params = {k: np.asarray(v, np.float64) for k, v in m.params.items()}
    _, _, cache = reference.forward(CELLS[kind][2](), params, x, init, lengths, L, True)
    dx, dinit, grads = reference.backward(cache, dy.astype(np.float64), init)
    want = [dx, *dinit] + [grads[k] for k in sorted(m.grads)]
    for i, (a, b) in enumerate(zip(one, want)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11, err_msg=f"array {i}: oracle")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extra", [dict(peephole=True), dict(proj_size=8), dict(layer_norm=True)],
                         ids=["peephole", "proj", "layernorm"])
def test_lstm_variants_on_backward_tiles(monkeypatch, dtype, extra):
    """The LSTM's variants: peepholes, a projection (W_hh's depth and layer 1's input are
    then proj_size, less than a panel: dx of layer 1 on a partial panel), and layer norm
    (its backward runs through lnlstm.backward_dir, the products from its own gradient
    buffers): the tiles' gradients equal NumPy's to rounding, bitwise at 1 and 2
    threads."""
    monkeypatch.setattr(tuning, "SMALL_GEMM", 0)
    monkeypatch.setattr(_threads, "cpus_available", lambda: 2)
    used = _spy(monkeypatch)
    S = tiles.panel_width(dtype)
    cls = nlstm.LayerNormLSTM if extra.get("layer_norm") else nlstm.LSTM
    kw = {k: v for k, v in extra.items() if k != "layer_norm"}
    m = cls(S, S, num_layers=2, bidirectional=True, dtype=dtype, seed=5, **kw)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((7, 5, S)).astype(dtype)
    lengths = np.array([7, 2, 7, 1, 5])
    dy = rng.standard_normal((7, 5, m.output_size)).astype(dtype)
    _tiles_against_numpy(monkeypatch, m, x, lengths, dy)
    assert used["weight_grad_panels"] > 0, used


def test_rule_takes_the_tiles_at_any_shape_from_small_gemm(monkeypatch):
    """I not a multiple of the panel width: dx takes the tiles too (a partial panel), the
    weight gradients of W_ih and W_hh in one run; below SMALL_GEMM neither runs (NumPy on
    the calling thread), and the gradients agree to rounding."""
    S = tiles.panel_width(np.float32)
    used = _spy(monkeypatch)
    monkeypatch.setattr(tuning, "SMALL_GEMM", 0)
    m = nlstm.LSTM(S - 3, S, dtype=np.float32, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 4, S - 3)).astype(np.float32)
    y, _ = m.forward(x)
    dx, _ = m.backward(np.ones_like(y))
    grads = {k: v.copy() for k, v in m.grads.items()}
    assert used["dx"] == 1 and used["weight_grad_panels"] == 1  # W_ih's and W_hh's at once
    monkeypatch.setattr(tuning, "SMALL_GEMM", 10 ** 12)
    used.update(dx=0, weight_grad_panels=0)
    m.zero_grad()
    y, _ = m.forward(x)
    dx2, _ = m.backward(np.ones_like(y))
    assert used == {"dx": 0, "weight_grad_panels": 0}
    _close(dx, dx2, np.float32, "dx")
    for k in grads:
        _close(grads[k], m.grads[k], np.float32, k)
