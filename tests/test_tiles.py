"""nlstm's own micro-kernels (nlstm.kernels.tiles) and the LSTM paths that use them.

The random configurations of the reference suite have a handful of hidden units, below
the vector width, so they never reach the tiles; these tests use hidden sizes that do,
with ragged batches whose active rows leave every tail (n mod 4) of the tiles.
"""
import re

import numba
import numpy as np
import pytest

import nlstm
import nlstm.recurrent as R
from nlstm.kernels import config, simd, tiles

import reference

DTYPES = [np.float32, np.float64]


def _tol(dtype):
    return dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_gates_layout(dtype):
    W = simd.width(dtype)
    K, H, G = 5, 2 * W, 4
    w_t = np.arange(K * G * H, dtype=dtype).reshape(K, G * H)
    wp = np.full(w_t.size, np.nan, dtype)
    assert tiles.packable(w_t, G) and not tiles.packable(w_t[:, :G * (H - 1)], G)
    tiles.pack_gates(wp, w_t, G)
    want = w_t.reshape(K, G, H // W, W).transpose(2, 0, 1, 3).ravel()
    np.testing.assert_array_equal(wp, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_cols_layout(dtype):
    S = 4 * simd.width(dtype)
    K, G = 2 * S, 7
    w_t = np.arange(K * G, dtype=dtype).reshape(K, G)
    wp = np.full(w_t.size, np.nan, dtype)
    assert tiles.packable_cols(w_t) and not tiles.packable_cols(w_t[:S - 1])
    tiles.pack_cols(wp, w_t)
    want = w_t.reshape(K // S, S, G).transpose(0, 2, 1).ravel()
    np.testing.assert_array_equal(wp, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 3, 4, 5, 9])
@pytest.mark.parametrize("K", [1, 6, 7])  # odd K: the one-row tile's last, unpaired k
def test_carry_rows_matches_numpy(dtype, n, K):
    rng = np.random.default_rng(n * 10 + K)
    S = 4 * simd.width(dtype)
    B, P, G = 12, 2 * S, 4 * K
    w_t = rng.standard_normal((P, G)).astype(dtype)
    a = rng.standard_normal((n, G)).astype(dtype)
    rows = rng.permutation(B)[:n].astype(np.int64)
    out = rng.standard_normal((B, P)).astype(dtype)
    want = out.copy()
    want[rows] = a.astype(np.float64) @ w_t.T.astype(np.float64)
    wp = np.empty(w_t.size, dtype)
    tiles.pack_cols(wp, w_t)
    tiles.carry_rows(out, a, np.concatenate([rows, np.zeros(B - n, np.int64)]), n, wp)
    np.testing.assert_allclose(out, want, **_tol(dtype))


def _layer(dtype, H, bi=False, layers=2, I=24, seed=0):
    return nlstm.LSTM(I, H, num_layers=layers, bidirectional=bi, dtype=dtype, seed=seed)


def _use_tiles(monkeypatch, on):
    """Switch the micro-kernels on (as shipped) or off (the loops and BLAS of blocks.py)."""
    if not on:
        monkeypatch.setattr(R.RecurrentLayer, "_packed_gates", lambda self, *a: self._no_pack)
        monkeypatch.setattr(R.RecurrentLayer, "_packed_carry", lambda self, k, d: self._no_pack)


def _run(m, x, lengths, dy, threads):
    before = nlstm.get_num_threads()
    nlstm.set_num_threads(threads)
    try:
        y, (h, c) = m.forward(x, lengths=lengths, train=True)
        m.zero_grad()
        dx, (dh0, dc0) = m.backward(dy)
    finally:
        nlstm.set_num_threads(before)
    return [y, h, c, dx, dh0, dc0] + [m.grads[k].copy() for k in sorted(m.grads)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,B,bi", [(64, 1, False), (64, 9, True), (32, 6, False), (48, 5, True)])
@pytest.mark.parametrize("threads", [1, 2])
def test_lstm_with_tiles_matches_the_oracle(dtype, H, B, bi, threads):
    """Forward and every gradient against the float64 oracle, ragged (tails of 1-3 rows
    as rows run out), on 1 and 2 threads; H = 48 (float32) packs the gates but not the
    carry, H = 32 takes the carry tiles only in float64."""
    rng = np.random.default_rng(H + B)
    T, I, L = 11, 24, 2
    W = simd.width(dtype)
    m = _layer(dtype, H, bi, L, I)
    assert tiles.packable(m._w("weight_hh", 0, 0), 4) == (H % W == 0)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    D = 2 if bi else 1
    dy = rng.standard_normal((T, B, D * H)).astype(dtype)
    got = _run(m, x, lengths, dy, threads)
    zeros = np.zeros((L * D, B, H))
    params = {k: np.asarray(v, np.float64) for k, v in m.params.items()}
    y, h, c, cache = reference.lstm_forward(params, x.astype(np.float64), zeros, zeros, lengths,
                                            L, bi)
    dx, dh0, dc0, grads = reference.lstm_backward(cache, dy.astype(np.float64), zeros, zeros)
    want = [y, h, c, dx, dh0, dc0] + [grads[k] for k in sorted(m.grads)]
    tol = dict(rtol=2e-3, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-11)
    for name, a, b in zip(["y", "h", "c", "dx", "dh0", "dc0"] + sorted(m.grads), got, want):
        np.testing.assert_allclose(a, b, err_msg=name, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiles_agree_with_the_loops(monkeypatch, dtype):
    """The same layer with and without the micro-kernels: equal to float rounding."""
    rng = np.random.default_rng(5)
    T, B, I, H = 9, 7, 16, 64
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = np.array([9, 3, 9, 1, 5, 8, 2])
    dy = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    used = []
    real = R.RecurrentLayer._packed_gates
    monkeypatch.setattr(R.RecurrentLayer, "_packed_gates",
                        lambda self, *a: used.append(1) or real(self, *a))
    with_tiles = _run(_layer(dtype, H, True, 1, I), x, lengths, dy, 1)
    assert used, "the micro-kernels did not run"
    _use_tiles(monkeypatch, False)
    without = _run(_layer(dtype, H, True, 1, I), x, lengths, dy, 1)
    for a, b in zip(with_tiles, without):
        np.testing.assert_allclose(a, b, **_tol(dtype))


def test_vector_width_follows_the_target():
    """512-bit vectors exactly when the target Numba compiles for has AVX-512, and the
    vectorised loops of the kernels really use them: LLVM's tuning for several Intel CPUs
    prefers 256-bit vectors unless a function asks otherwise (``simd.wide``)."""
    from numba.core.registry import cpu_target
    features = cpu_target.target_context.codegen()._tm_features.split(",")
    bits = 512 if "+avx512f" in features else 256
    assert simd.target_vector_bits() == bits
    assert simd.width(np.float32) == bits // 32 and simd.width(np.float64) == bits // 64
    if bits != 512:
        pytest.skip("no AVX-512 on this target")
    from nlstm.kernels import lstm as K
    # compiled afresh (Numba cannot show the assembly of code loaded from its cache)
    cell = numba.njit(**config.options())(K._cell_units.py_func)
    g, c0, c1, m = np.zeros(4 * 64, np.float32), *(np.zeros(64, np.float32) for _ in range(3))
    cell(g, c0, c1, m, 0, 64)
    asm = cell.inspect_asm(cell.signatures[0])
    assert re.search(r"vdivps[^\n]*%zmm", asm), "the gate loop is not vectorised at 512 bits"
