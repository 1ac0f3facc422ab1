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
from nlstm.kernels import config, parallel, simd, tiles

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
def test_pack_panels_layout(dtype):
    S = 4 * simd.width(dtype)
    D, N = 7, 2 * S
    w = np.arange(D * N, dtype=dtype).reshape(D, N)
    wp = np.full(w.size, np.nan, dtype)
    assert tiles.packable_panels(w) and tiles.panels_size(w) == w.size
    tiles.pack_panels(wp, w)
    np.testing.assert_array_equal(wp, w.reshape(D, N // S, S).transpose(1, 0, 2).ravel())
    tiles.pack_panels(wp, np.ascontiguousarray(w.T).T)  # any view
    np.testing.assert_array_equal(wp, w.reshape(D, N // S, S).transpose(1, 0, 2).ravel())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [1, 5, 70])
def test_pack_panels_pads_the_last_panel_with_zeros(dtype, N):
    """N not a multiple of the panel width: the last panel's columns past N are zero, from
    either pack kernel (the tiles multiply them and never store their sums)."""
    S = 4 * simd.width(dtype)
    D = 9
    w = np.arange(1, D * N + 1, dtype=dtype).reshape(D, N)
    n = -(-N // S) * S
    assert tiles.packable_panels(w) and tiles.panels_size(w) == D * n
    padded = np.zeros((D, n), dtype)
    padded[:, :N] = w
    want = padded.reshape(D, n // S, S).transpose(1, 0, 2).ravel()
    wp = np.full(tiles.panels_size(w), np.nan, dtype)
    tiles.pack_panels(wp, w)
    np.testing.assert_array_equal(wp, want)
    wp[:] = np.nan
    tiles.pack_panels_of_transpose(wp, np.ascontiguousarray(w.T))
    np.testing.assert_array_equal(wp, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [7, 200])
def test_pack_panels_of_transpose_layout(dtype, D):
    """The transpose of a C-contiguous array packs as ``pack_panels`` packs the transposed
    view, its depth in one block (7) or in several, the last one short (200 rows: 96-row
    blocks of float32, 192 of float64 on AVX-512, smaller ones with AVX2); the layers take
    it for such views."""
    S = 4 * simd.width(dtype)
    N = 2 * S
    w_t = np.arange(D * N, dtype=dtype).reshape(N, D)
    want = np.full(w_t.size, np.nan, dtype)
    tiles.pack_panels(want, w_t.T)
    wp = np.full(w_t.size, np.nan, dtype)
    tiles.pack_panels_of_transpose(wp, w_t)
    np.testing.assert_array_equal(wp, want)
    m = nlstm.LSTM(3, N, dtype=dtype, seed=0)
    w = m._w("weight_hh", 0, 0).T  # W_hh (4N, N): the backward carry's
    got = m._packed_panels(0, 0, w, "carry")
    want = np.full(w.size, np.nan, dtype)
    tiles.pack_panels(want, w)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 3, 4, 5, 9])
@pytest.mark.parametrize("D", [1, 6, 7, 301])  # odd: the one-row tile's unpaired k; 301: chunks
@pytest.mark.parametrize("scatter", [False, True])
def test_panel_rows_matches_numpy(dtype, n, D, scatter):
    rng = np.random.default_rng(n * 10 + D)
    S = 4 * simd.width(dtype)
    B, N = 12, 3 * S
    w = rng.standard_normal((D, N)).astype(dtype)
    a = rng.standard_normal((n, D)).astype(dtype)
    rows = np.concatenate([rng.permutation(B)[:n], np.zeros(B - n, np.int64)]).astype(np.int64)
    out = rng.standard_normal((B, N)).astype(dtype)
    want = out.copy()
    d0, d1, c0, c1 = D // 3, D, S, 3 * S  # a depth range and a column range of panels
    dst = rows[:n] if scatter else np.arange(n)
    want[dst, c0:c1] = a[:, d0:d1].astype(np.float64) @ w[d0:d1, c0:c1].astype(np.float64)
    wp = np.empty(w.size, dtype)
    tiles.pack_panels(wp, w)
    tiles.panel_rows(out, a, rows, n, wp, c0, c1, d0, d1, scatter)
    np.testing.assert_allclose(out, want, **_tol(dtype))


CELLS = {
    "lstm": (nlstm.LSTM, {}, lambda: reference.LSTMCell()),
    "gru": (nlstm.GRU, {}, lambda: reference.GRUCell(True)),
    "gru_lbr0": (nlstm.GRU, dict(linear_before_reset=False), lambda: reference.GRUCell(False)),
    "rnn_relu": (nlstm.RNN, dict(nonlinearity="relu"), lambda: reference.RNNCell("relu")),
    "gru_clip": (nlstm.GRU, dict(clip=0.7), lambda: reference.GRUCell(True, clip=0.7)),
}


def _layer(kind, dtype, H, bi=False, layers=2, I=24, seed=0):
    cls, extra, _ = CELLS[kind]
    return cls(I, H, num_layers=layers, bidirectional=bi, dtype=dtype, seed=seed, **extra)


def _use_tiles(monkeypatch, on):
    """Switch the per-step micro-kernels on (as shipped) or off (the loops of blocks.py):
    the gate tiles, and the panels of the per-step products and carries (the
    whole-sequence products keep theirs)."""
    if not on:
        real = R.RecurrentLayer._packed_panels
        monkeypatch.setattr(R.RecurrentLayer, "_packed_gates", lambda self, *a: self._no_pack)
        monkeypatch.setattr(R.RecurrentLayer, "_panels_fit", lambda self: False)
        monkeypatch.setattr(R.RecurrentLayer, "_packed_panels", lambda self, k, d, w, use: (
            self._no_pack if use in ("forward", "carry") else real(self, k, d, w, use)))


def _products_on_tiles(monkeypatch):
    """The whole-sequence products (input projection, dx, weight gradients) through the
    panel tiles at any size, not NumPy's small-product path: OpenBLAS's sgemm gives a row
    different bits in products of different row counts with its Haswell kernels (AVX2
    machines, and any machine under OPENBLAS_CORETYPE=Haswell; seen on a Zen 3), so only
    nlstm's own kernels can promise a row the same bits alone and in a batch."""
    from nlstm.kernels import tuning
    monkeypatch.setattr(tuning, "SMALL_GEMM", 0)


def _run(m, x, lengths, dy, threads):
    before = nlstm.get_num_threads()
    nlstm.set_num_threads(threads)
    try:
        y, state = m.forward(x, lengths=lengths, train=True)
        m.zero_grad()
        dx, dstate = m.backward(dy)
    finally:
        nlstm.set_num_threads(before)
    as_list = lambda s: list(s) if isinstance(s, tuple) else [s]
    return [y, *as_list(state), dx, *as_list(dstate)] + [m.grads[k].copy() for k in sorted(m.grads)]


def test_gathered_gate_rows_lie_apart_in_l1():
    """The LSTM's tiled forward gathers each step's gate rows into its scratch at
    ``tiles.padded_stride``: an odd number of cache lines (so that rows whose length is a
    multiple of 4 KB do not all fall in the same L1 sets), each row on a line's start, never
    shorter than a row; and the layer's scratch has the rows that takes for the batch."""
    for itemsize in (4, 8):
        for G in (16, 48, 64, 256, 1008, 1024, 2048, 4096):
            S = tiles.padded_stride(G, itemsize)
            assert S >= G and (S * itemsize) % 64 == 0 and (S * itemsize // 64) % 2 == 1, (G, S)
            for B in (1, 2, 3, 64, 129):
                assert tiles.padded_rows(B, G, itemsize) * G >= (B - 1) * S + G
    for dtype in (np.float32, np.float64):
        m = nlstm.LSTM(8, 256, dtype=dtype)
        sg = m._scratch(64, lambda *s: np.empty(s, dtype))[4]
        assert sg.shape == (tiles.padded_rows(64, 1024, sg.itemsize), 1024)
        assert sg.size >= 63 * tiles.padded_stride(1024, sg.itemsize) + 1024


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,B,bi", [(64, 1, False), (64, 9, True), (32, 6, False), (48, 5, True)])
@pytest.mark.parametrize("threads", [1, 2])
def test_cells_with_tiles_match_the_oracle(kind, dtype, H, B, bi, threads):
    """Forward and every gradient against the float64 oracle, ragged (tails of 1-3 rows
    as rows run out), on 1 and 2 threads. Which tiles run depends on H and the vector
    width W: the LSTM's gate tiles when W divides H, the panel tiles for every product of
    the GRU and RNN when 4W does, and for the LSTM's carry at any H (a partial last panel);
    H = 48 and 32 leave some products to the loops in float32 but not in float64."""
    rng = np.random.default_rng(H + B)
    T, I, L = 11, 24, 2
    m = _layer(kind, dtype, H, bi, L, I)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    D = 2 if bi else 1
    dy = rng.standard_normal((T, B, D * H)).astype(dtype)
    got = _run(m, x, lengths, dy, threads)
    S = len(m._state_sizes())
    init = [np.zeros((L * D, B, H)) for _ in range(S)]
    params = {k: np.asarray(v, np.float64) for k, v in m.params.items()}
    y, final, cache = reference.forward(CELLS[kind][2](), params, x, init, lengths, L, bi)
    dx, dinit, grads = reference.backward(cache, dy.astype(np.float64), init)
    want = [y, *final, dx, *dinit] + [grads[k] for k in sorted(m.grads)]
    names = ["y"] + [f"final{i}" for i in range(S)] + ["dx"] + [f"dinit{i}" for i in range(S)] \
        + sorted(m.grads)
    tol = dict(rtol=2e-3, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-11)
    for name, a, b in zip(names, got, want):
        np.testing.assert_allclose(a, b, err_msg=name, **tol)


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_tiles_agree_with_the_loops(monkeypatch, kind, dtype):
    """The same layer with and without the micro-kernels: equal to float rounding."""
    rng = np.random.default_rng(5)
    T, B, I, H = 9, 7, 16, 64
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = np.array([9, 3, 9, 1, 5, 8, 2])
    dy = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    used = []
    real = tiles.panel_rows
    for name in ("pack_panels", "pack_panels_of_transpose"):  # as the layers pack them
        split = getattr(parallel, name)
        monkeypatch.setattr(parallel, name, parallel.Split(
            lambda *a, _real=split.serial: used.append(1) or _real(*a), split.parallel))
    with_tiles = _run(_layer(kind, dtype, H, True, 1, I), x, lengths, dy, 1)
    assert used and real is tiles.panel_rows, "the micro-kernels did not run"
    _use_tiles(monkeypatch, False)
    without = _run(_layer(kind, dtype, H, True, 1, I), x, lengths, dy, 1)
    for a, b in zip(with_tiles, without):
        np.testing.assert_allclose(a, b, **_tol(dtype))


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_rows_are_bitwise_the_same_in_any_tile(kind, monkeypatch):
    """A row gives the same bits in any tile and alone (how many rows a thread gets decides
    which): in a batch of 6, rows 0-1 run as a tile of 4 with rows 2-3 (32 vector
    registers) or of 3 with row 2 (16), in batches of 2 and 4 as a pair and a tile of 4 (or
    of 3 and a row alone); forward and backward, the whole-sequence products on the panels
    too (``_products_on_tiles``)."""
    _products_on_tiles(monkeypatch)
    rng = np.random.default_rng(7)
    T, I, H = 6, 64, 64
    x = rng.standard_normal((T, 6, I)).astype(np.float32)
    dy = rng.standard_normal((T, 6, H)).astype(np.float32)
    whole = _run(_layer(kind, np.float32, H, layers=1, I=I), x, None, dy, 1)
    S = 2 if kind == "lstm" else 1  # state arrays
    for rows in (slice(0, 2), slice(2, 6)):
        part = _run(_layer(kind, np.float32, H, layers=1, I=I), x[:, rows], None, dy[:, rows], 1)
        np.testing.assert_array_equal(part[0], whole[0][:, rows])  # y
        np.testing.assert_array_equal(part[1 + S], whole[1 + S][:, rows])  # dx


def test_vector_width_follows_the_target():
    """512-bit vectors exactly when the target Numba compiles for has AVX-512 (256 with AVX,
    else 128), and the vectorised loops of the kernels really use them: LLVM's tuning for
    several Intel CPUs prefers 256-bit vectors unless a function asks otherwise
    (``simd.wide``)."""
    from numba.core.registry import cpu_target
    features = cpu_target.target_context.codegen()._tm_features.split(",")
    bits = 512 if "+avx512f" in features else 256 if "+avx" in features else 128
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


def _tile_loops_spill(asm: str) -> tuple:
    """(how many basic blocks of x86 assembly hold 8 or more FMAs, whether any of them
    moves a vector register to or from the stack): a tile's sum loop that does spills its
    accumulators."""
    blocks = re.split(r"\n\.?LBB\S*:", asm)
    hot = [b for b in blocks if b.count("vfmadd") >= 8]
    vector_stack = re.compile(r"%[xyz]mm\d+[^\n]*\(%rsp\)|\(%rsp\)[^\n]*%[xyz]mm\d+")
    return len(hot), any(vector_stack.search(b) for b in hot)


def _panel_rows_asm():
    fresh = numba.njit(**config.options())(tiles.panel_rows.py_func)
    S = tiles.panel_width(np.float32)
    out, a = np.zeros((8, S), np.float32), np.ones((8, 16), np.float32)
    wp = np.ones(16 * S, np.float32)
    fresh(out, a, np.empty(0, np.int64), 8, wp, 0, S, 0, 16, False)
    assert (out == 16).all()
    return fresh.inspect_asm(fresh.signatures[0])


@pytest.mark.skipif(not re.match(r"x86|amd64", __import__("platform").machine().lower()),
                    reason="x86 assembly")
def test_tile_loop_keeps_its_accumulators_in_registers():
    """The tile's sum loop compiles to FMAs with no stack traffic on this target."""
    hot, spills = _tile_loops_spill(_panel_rows_asm())
    assert hot >= 1 and not spills


# An AVX2 machine (Haswell's features: NUMBA_CPU_NAME alone keeps the host's AVX-512)
AVX2_ENV = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ",".join(
    "+" + f for f in "64bit avx avx2 bmi bmi2 cmov cx16 f16c fma fsgsbase lzcnt mmx movbe "
    "popcnt sse sse2 sse3 sse4.1 sse4.2 ssse3 xsave sahf aes pclmul".split())}

_AVX2_SCRIPT = """
import sys, numpy as np
sys.path.insert(0, sys.argv[2])
import test_tiles as tt
import nlstm
from nlstm.kernels import simd
assert (simd.target_vector_bits(), simd.target_vector_registers()) == (256, 16)
hot, spills = tt._tile_loops_spill(tt._panel_rows_asm())
m = tt._layer("lstm", np.float32, 32, layers=1)
x, lengths, dy = tt._avx2_case()
np.savez(sys.argv[1], hot=hot, spills=spills, *tt._run(m, x, lengths, dy, 2))
"""


def _avx2_case():
    rng = np.random.default_rng(3)
    return (rng.standard_normal((7, 6, 24)).astype(np.float32), np.array([7, 3, 7, 5, 1, 6]),
            rng.standard_normal((7, 6, 32)).astype(np.float32))


@pytest.mark.skipif(not re.match(r"x86|amd64", __import__("platform").machine().lower()),
                    reason="x86 assembly")
def test_avx2_target_tiles_fit_its_16_registers(tmp_path):
    """Compiled for an AVX2 machine (16 vector registers of 256 bits), the tiles run their
    rows in threes (``tiles.tile_height``), whose 12 accumulators, 3 broadcasts and weight
    vector fit the registers: the 4-row tile's 16 accumulators spilled to the stack every
    k there (5x slower than BLAS). The layer's results there agree with this target's."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, NLSTM_CACHE_DIR=str(tmp_path / "cache"), **AVX2_ENV)
    out = tmp_path / "avx2.npz"
    subprocess.run([sys.executable, "-c", _AVX2_SCRIPT, str(out), os.path.dirname(__file__)],
                   check=True, env=env, timeout=900)
    got = np.load(out)
    assert got["hot"] >= 1 and not got["spills"]
    x, lengths, dy = _avx2_case()
    want = _run(_layer("lstm", np.float32, 32, layers=1), x, lengths, dy, 2)
    assert len(got.files) == len(want) + 2
    for i, w in enumerate(want):
        np.testing.assert_allclose(got[f"arr_{i}"], w, rtol=1e-5, atol=1e-6)


def test_one_row_batch_is_bitwise_a_row_of_a_tile(monkeypatch):
    """A batch of one row runs each step's product as the one-row tile over the unit blocks,
    in alternating order step to step (``tiles.row_blocks``); the order of each sum is the
    tiles', so every row alone gives the same bits as in a batch of 4 (the whole-sequence
    products on the panels: ``_products_on_tiles``)."""
    _products_on_tiles(monkeypatch)
    rng = np.random.default_rng(8)
    T, I, H = 7, 64, 64  # H / W >= 2 unit blocks, so the alternate steps run them reversed
    x = rng.standard_normal((T, 4, I)).astype(np.float32)
    dy = rng.standard_normal((T, 4, H)).astype(np.float32)
    whole = _run(_layer("lstm", np.float32, H, layers=1, I=I), x, None, dy, 1)
    for b in range(4):
        alone = _run(_layer("lstm", np.float32, H, layers=1, I=I), x[:, b:b + 1], None,
                     dy[:, b:b + 1], 1)
        np.testing.assert_array_equal(alone[0], whole[0][:, b:b + 1])  # y


@pytest.mark.parametrize("kind", ["gru", "rnn_relu"])
def test_one_row_panels_agree_with_a_batch(kind):
    """The GRU's and RNN's one-row steps run the one-row tile over the panels, in
    alternating order step to step (``tiles.row_blocks``): each row alone agrees with the
    same row in a batch (the panel tiles of 4 rows) to rounding, forward and backward."""
    rng = np.random.default_rng(9)
    T, I = 7, 8
    H = 2 * tiles.panel_width(np.float32)  # two panels per gate block: both orders differ
    x = rng.standard_normal((T, 4, I)).astype(np.float32)
    dy = rng.standard_normal((T, 4, H)).astype(np.float32)
    whole = _run(_layer(kind, np.float32, H, layers=1, I=I), x, None, dy, 1)
    for b in range(4):
        alone = _run(_layer(kind, np.float32, H, layers=1, I=I), x[:, b:b + 1], None,
                     dy[:, b:b + 1], 1)
        np.testing.assert_allclose(alone[0], whole[0][:, b:b + 1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(alone[2], whole[2][:, b:b + 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_project_panels_matches_numpy(dtype, with_bias):
    """The input projection through the panels, as two threads' row ranges, each over
    several L2-sized row blocks (I = 1024: 64 rows a block in float32), against NumPy."""
    rng = np.random.default_rng(11)
    n, I = 150, 1024
    G = 2 * tiles.panel_width(dtype)
    x = rng.standard_normal((n, I)).astype(dtype)
    w = rng.standard_normal((I, G)).astype(dtype)
    bias = rng.standard_normal(G).astype(dtype) if with_bias else np.zeros(0, dtype)
    wp = np.empty(w.size, dtype)
    tiles.pack_panels(wp, w)
    out = np.full((n, G), np.nan, dtype)
    for r0, r1 in ((0, 70), (70, n)):
        tiles.project_panels(r0, r1, x, wp, out, bias, np.zeros(0, np.int64), tiles.FROM_ZERO)
    want = x.astype(np.float64) @ w.astype(np.float64) + (bias if with_bias else 0)
    # sums of 1024 products of order 1: float32's rounding, relative to their size (~32)
    tol = dict(rtol=1e-4, atol=5e-4) if dtype == np.float32 else _tol(dtype)
    np.testing.assert_allclose(out, want, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("panels", [2, 1.5])
def test_project_ragged_panels_matches_numpy(dtype, with_bias, panels):
    """A ragged batch's input projection through the panels, each batch row over its own
    steps (empty, one, several L2-sized blocks of steps: I = 1024 gives 64 steps a block
    in float32), as two threads' batch rows: against the float64 product and NumPy's;
    the padding left as it was; G whole panels or not (1.5: the last one partial, masked,
    the next batch row's gates untouched)."""
    rng = np.random.default_rng(12)
    T, B, I = 150, 5, 1024
    G = int(panels * tiles.panel_width(dtype))
    lengths = np.array([150, 0, 1, 70, 129])
    x = rng.standard_normal((T, B, I)).astype(dtype)
    w = rng.standard_normal((I, G)).astype(dtype)
    bias = rng.standard_normal(G).astype(dtype) if with_bias else np.zeros(0, dtype)
    wp = np.empty(tiles.panels_size(w), dtype)
    tiles.pack_panels(wp, w)
    out = np.full((T, B, G), np.nan, dtype)
    for b0, b1 in ((0, 2), (2, B)):
        tiles.project_ragged_panels(b0, b1, x, wp, out, bias, lengths, np.zeros(0, np.int64))
    valid = np.arange(T)[:, None] < lengths[None, :]
    want = x.astype(np.float64) @ w.astype(np.float64) + (bias if with_bias else 0)
    tol = dict(rtol=1e-4, atol=5e-4) if dtype == np.float32 else _tol(dtype)
    np.testing.assert_allclose(out[valid], want[valid], **tol)
    np.testing.assert_allclose(out[valid], (x @ w + (bias if with_bias else 0))[valid], **tol)
    assert np.isnan(out[~valid]).all()


@pytest.mark.parametrize("kind", sorted(k for k in CELLS if "clip" not in k))
@pytest.mark.parametrize("dtype", DTYPES)
def test_ragged_projection_on_tiles_in_the_layers(monkeypatch, kind, dtype):
    """Layers whose ragged batches take the per-batch-row projection: through the panels
    (counted) against the float64 oracle, and against the same layer's NumPy path (every
    whole-sequence product below SMALL_GEMM). (Not the clipped cell: where a
    pre-activation sits at the clip, a last-bit difference between the two paths flips its
    gradient between 0 and 1.)"""
    from nlstm.kernels import parallel as P, tuning
    from nlstm import _threads
    monkeypatch.setattr(tuning, "SMALL_GEMM", 0)
    monkeypatch.setattr(tuning, "PER_ROW_MIN_SAVING", 0)
    used = []
    real_rows = _threads.run_rows
    monkeypatch.setattr(_threads, "run_rows", lambda B, w, split, *a, **k: (
        used.append(split is P.project_ragged_panels), real_rows(B, w, split, *a, **k))[1])
    rng = np.random.default_rng(3)
    T, B, I, H, L = 9, 6, tiles.panel_width(dtype), 64, 2
    m = _layer(kind, dtype, H, True, L, I)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = np.array([9, 3, 9, 1, 0, 8])
    dy = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    got = _run(m, x, lengths, dy, 2)
    assert sum(used) >= 2 * L, "the ragged projection did not run on the panels"
    monkeypatch.setattr(tuning, "PER_ROW_MIN_SAVING", 10 ** 15)
    monkeypatch.setattr(tuning, "SMALL_GEMM", 10 ** 15)
    ref = _run(m, x, lengths, dy, 2)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, **_tol(dtype))
    S = len(m._state_sizes())
    init = [np.zeros((L * 2, B, H)) for _ in range(S)]
    params = {k: np.asarray(v, np.float64) for k, v in m.params.items()}
    y, final, cache = reference.forward(CELLS[kind][2](), params, x, init, lengths, L, True)
    dx, dinit, grads = reference.backward(cache, dy.astype(np.float64), init)
    want = [y, *final, dx, *dinit] + [grads[k] for k in sorted(m.grads)]
    tol = dict(rtol=2e-3, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-11)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("G", [1, 5, "1 vector", "2 vectors"])
@pytest.mark.parametrize("first", ["zero", "out"])
def test_project_narrow_is_bitwise_the_panels_product(dtype, G, first):
    """A product of at most 2 vector widths of columns (dx of a small input) on the narrow
    tiles gives the bits of the 4-vector panels (each row's sums in the same order): rows
    as tiles of 8, 4 and alone (n = 8·3 + 4 + 3, split over two row ranges), a depth over
    several chunks (I = 700), continued from out (a second direction's dx) or from zero;
    and it matches NumPy."""
    rng = np.random.default_rng(13)
    W = simd.width(dtype)
    G = {"1 vector": W, "2 vectors": 2 * W}.get(G, G)
    n, I = 31, 700
    x = rng.standard_normal((n, I)).astype(dtype)
    w_t = rng.standard_normal((G, I)).astype(dtype)  # as dx reads W_ih: the transpose
    assert tiles.narrow(G, dtype)
    start = rng.standard_normal((n, G)).astype(dtype)
    outs = []
    for vectors, kernel in ((2, tiles.project_narrow), (4, tiles.project_panels)):
        wp = np.full(tiles.panels_size(w_t.T, vectors), np.nan, dtype)
        tiles.pack_panels_of_transpose_part(0, tiles.panel_count(w_t.T, vectors), wp, w_t,
                                            vectors)
        assert not np.isnan(wp).any()
        out = start.copy()
        for r0, r1 in ((0, 13), (13, n)):
            kernel(r0, r1, x, wp, out, np.zeros(0, dtype), np.zeros(0, np.int64),
                   tiles.FROM_ZERO if first == "zero" else tiles.FROM_OUT)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    want = x.astype(np.float64) @ w_t.T.astype(np.float64) + (first == "out") * start
    tol = dict(rtol=1e-4, atol=5e-4) if dtype == np.float32 else _tol(dtype)
    np.testing.assert_allclose(outs[0], want, **tol)


def test_narrow_dx_runs_on_its_tiles(monkeypatch):
    """A layer's dx of a narrow input (I = 7) runs on ``project_narrow`` once the product
    is large enough, and equals the float64 product's."""
    from nlstm.kernels import tuning
    used = []
    split = parallel.project_narrow
    monkeypatch.setattr(parallel, "project_narrow", parallel.Split(
        lambda *a: used.append(1) or split.serial(*a),
        lambda *a: used.append(2) or split.parallel(*a)))
    monkeypatch.setattr(tuning, "SMALL_GEMM", 0)
    rng = np.random.default_rng(14)
    T, B, I, H = 20, 9, 7, 32
    x, dy = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, 2 * H))
    m = nlstm.LSTM(I, H, bidirectional=True, seed=0)
    m.forward(x)
    dx = m.backward(dy)[0]
    assert used
    m64 = nlstm.LSTM(I, H, bidirectional=True, seed=0, dtype=np.float64)
    m64.forward(x)
    np.testing.assert_allclose(dx, m64.backward(dy)[0], rtol=1e-4, atol=1e-5)
