"""A one-row batch whose hidden units are split over threads (nlstm.kernels.lstm_units,
gru_units) gives the oracle's outputs and gradients, and the same as the one-thread
kernels."""
import numba
import numpy as np
import pytest

import nlstm
import reference as R
from cases import TOL
from nlstm import _threads
from nlstm.kernels import parallel, sync, tuning, units


@pytest.fixture
def split_calls(monkeypatch):
    """Split every one-row LSTM, however small, and count the unit-split kernel calls."""
    monkeypatch.setattr(tuning, "UNITS_MIN_STEP", 0)
    monkeypatch.setattr(tuning, "UNITS_MIN_WORK", 0)
    cpus = max(2, _threads.cpus_available())  # the split needs two CPUs, or this many
    monkeypatch.setattr(_threads, "cpus_available", lambda: cpus)
    calls = {"forward": 0, "backward": 0}

    def counting(name, driver):
        def call(parts, args):
            calls[name] += parts  # one per part, each on its own thread
            return driver(parts, args)
        return call

    for cell in ("lstm", "gru"):
        for name in ("forward", "backward"):
            split = getattr(parallel, f"{cell}_{name}_units")
            monkeypatch.setattr(parallel, f"{cell}_{name}_units",
                                parallel.Split(split.serial, counting(name, split.parallel)))
    before = nlstm.get_num_threads()
    nlstm.set_num_threads(2)
    yield calls
    nlstm.set_num_threads(before)


CELLS = {"lstm": (nlstm.LSTM, R.LSTMCell), "gru": (nlstm.GRU, lambda: R.GRUCell(True))}


def _states(a):
    return list(a) if isinstance(a, tuple) else [a]


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H,length", [(17, 7), (20, 4), (40, 7), (37, 0), (64, 6), (128, 5)])
def test_split_matches_reference(split_calls, monkeypatch, cell, dtype, H, length):
    """Two layers, both directions, an initial state, a row shorter than T (and one of
    length 0); H = 17, 20 and 37 split unevenly (parts start at multiples of 16). At H = 128
    each part's 64 units fill whole panels of the GRU's one-row tile (4 vectors: 64 floats
    or fewer on every target), which its split runs then; the others take its loops."""
    if not _threads.cpus_available() >= 2:
        monkeypatch.setattr(_threads, "cpus_available", lambda: 2)
    cls, ref_cell = CELLS[cell]
    rng = np.random.default_rng(H)
    T, I, L = 7, 3, 2
    m = cls(I, H, num_layers=L, bidirectional=True, dtype=dtype, seed=H)
    S = len(m._state_labels)
    x = rng.standard_normal((T, 1, I)).astype(dtype)
    init = [rng.standard_normal((2 * L, 1, H)).astype(dtype) for _ in range(S)]
    dy = rng.standard_normal((T, 1, 2 * H)).astype(dtype)
    dfinal = [rng.standard_normal((2 * L, 1, H)).astype(dtype) for _ in range(S)]
    lengths = np.array([length])
    y, final = m.forward(x, tuple(init) if S > 1 else init[0], lengths=lengths)
    dx, dinit = m.backward(dy, *dfinal)
    assert split_calls == {"forward": 2 * 2 * L, "backward": 2 * 2 * L}  # 2 parts per direction

    ry, rfinal, cache = R.forward(ref_cell(), m.params, x.astype(np.float64),
                                  [a.astype(np.float64) for a in init], lengths, L, True)
    rdx, rdinit, rgrads = R.backward(cache, dy.astype(np.float64),
                                     [a.astype(np.float64) for a in dfinal])
    tol = TOL[dtype]
    np.testing.assert_allclose(y, ry, err_msg="y", **tol)
    np.testing.assert_allclose(dx, rdx, err_msg="dx", **tol)
    for got, want in zip(_states(final) + _states(dinit), list(rfinal) + list(rdinit)):
        np.testing.assert_allclose(got, want, **tol)
    for k, g in rgrads.items():
        np.testing.assert_allclose(m.grads[k], g, err_msg=k, **tol)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("H", [48, 128])
def test_split_equals_one_thread_kernels(split_calls, cell, H):
    """The same as the one-thread kernels, to float32 rounding (each element is computed
    with the same products in the same order; the compiler's vectorisation and FMA
    contraction may still differ). H = 128: the tiles (see above)."""
    rng = np.random.default_rng(3)
    T, I = 30, 4
    x = rng.standard_normal((T, 1, I)).astype(np.float32)
    dy = rng.standard_normal((T, 1, H)).astype(np.float32)
    results = []
    for split in (True, False):
        tuning.UNITS_MIN_WORK = 0 if split else float("inf")
        m = CELLS[cell][0](I, H, seed=5)
        y, final = m.forward(x)
        dx, dinit = m.backward(dy)
        results.append([y, *_states(final), dx, *_states(dinit), *m.grads.values()])
    assert split_calls["forward"] == 2
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("split", [False, True])
def test_long_row_fetching_gates_ahead_matches_reference(split_calls, split):
    """A row whose gates outgrow tuning.PREFETCH_GATES_BYTES, so that each step fetches the
    next step's gates ahead (tiles.prefetch_span), in the one-row kernel and split over the
    units, both directions: the oracle's outputs and final state."""
    rng = np.random.default_rng(11)
    H, I = 64, 3
    T = tuning.PREFETCH_GATES_BYTES // (4 * H * 4) + 50  # float32 gates just past the bound
    tuning.UNITS_MIN_WORK = 0 if split else float("inf")
    m = nlstm.LSTM(I, H, bidirectional=True, seed=7)
    x = rng.standard_normal((T, 1, I)).astype(np.float32)
    y, final = m(x)
    assert m._ws.gates[0][0].nbytes > tuning.PREFETCH_GATES_BYTES
    assert split_calls["forward"] == (4 if split else 0)  # 2 parts a direction
    ry, rfinal, _ = R.forward(R.LSTMCell(), m.params, x.astype(np.float64),
                              [np.zeros((2, 1, H))] * 2, np.array([T]), 1, True)
    tol = TOL[np.float32]
    np.testing.assert_allclose(y, ry, **tol)
    for got, want in zip(final, rfinal):
        np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("H,tiled", [(64, True), (17, False)])
def test_split_copies_weight_columns_only_without_tiles(split_calls, H, tiled):
    """The tiled split reads its units' blocks of the packed weights where they lie: its
    per-part copy of W_hh's columns has no rows; the loops' split (H off the tiles) has one
    row per input of the product."""
    m = nlstm.LSTM(3, H, seed=1)
    m(np.random.default_rng(0).standard_normal((5, 1, 3)).astype(np.float32))
    assert split_calls["forward"] == 2
    rows = [key[2] for key in m._part_bufs if key[0] == "unit weights"]
    assert rows == [0 if tiled else H]


def test_three_parts_on_two_cpus(split_calls, monkeypatch):
    """More parts than CPUs: the waiting parts yield their CPU, and the result is the same."""
    monkeypatch.setattr(_threads, "cpus_available", lambda: 3)
    nlstm.set_num_threads(3)
    rng = np.random.default_rng(4)
    T, I, H = 50, 3, 40  # parts of 16, 16 and 8 units
    m = nlstm.LSTM(I, H, dtype=np.float64, seed=2)
    x = rng.standard_normal((T, 1, I))
    dy = rng.standard_normal((T, 1, H))
    y, final = m.forward(x)
    dx, _ = m.backward(dy)
    assert split_calls == {"forward": 3, "backward": 3}
    init = [np.zeros((1, 1, H))] * 2
    ry, _, cache = R.forward(R.LSTMCell(), m.params, x, init, np.array([T]), 1, False)
    rdx, _, rgrads = R.backward(cache, dy, [np.zeros((1, 1, H))] * 2)
    np.testing.assert_allclose(y, ry, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-12)
    for k, g in rgrads.items():
        np.testing.assert_allclose(m.grads[k], g, rtol=1e-9, atol=1e-11, err_msg=k)


@pytest.mark.parametrize("cls,extra", [(nlstm.LSTM, dict(peephole=True)),
                                       (nlstm.LSTM, dict(proj_size=3)), (nlstm.LSTM, dict(clip=1.0)),
                                       (nlstm.GRU, dict(linear_before_reset=False)),
                                       (nlstm.RNN, {})])
def test_variants_and_batches_do_not_split(split_calls, cls, extra):
    """Only the plain LSTM and PyTorch's GRU have unit-split kernels, and only one-row
    batches use them."""
    rng = np.random.default_rng(0)
    m = cls(3, 32, seed=0, **extra)
    y, _ = m.forward(rng.standard_normal((5, 1, 3)))
    m.backward(np.ones_like(y))
    plain = nlstm.LSTM(3, 32, seed=0)
    y, _ = plain.forward(rng.standard_normal((5, 2, 3)))
    plain.backward(np.ones_like(y))
    assert split_calls == {"forward": 0, "backward": 0}


def test_no_split_below_two_parts_of_units_or_off_x86_linux(split_calls, monkeypatch):
    """H <= 16 gives one part of units only; off Linux x86-64 the barrier is not built."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 1, 3)).astype(np.float32)
    nlstm.LSTM(3, 16, seed=0)(x)
    monkeypatch.setattr(_threads, "UNIT_SPLIT", False)
    nlstm.LSTM(3, 32, seed=0)(x)
    assert split_calls == {"forward": 0, "backward": 0}
    monkeypatch.setattr(_threads, "UNIT_SPLIT", True)
    nlstm.LSTM(3, 32, seed=0)(x)
    assert split_calls["forward"] == 2


def test_no_split_where_the_threading_layer_may_run_parts_one_after_another(split_calls,
                                                                           monkeypatch):
    """tbb may run every part of a region on one thread: a split there would wait at its
    first barrier forever, so one-row batches run on one thread (omp is split's layer)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 1, 3)).astype(np.float32)
    want = nlstm.LSTM(3, 32, seed=0)(x)[0]
    assert split_calls["forward"] == 2
    monkeypatch.setattr(_threads, "_layer", "tbb")
    np.testing.assert_allclose(nlstm.LSTM(3, 32, seed=0)(x)[0], want, rtol=1e-5, atol=1e-6)
    assert split_calls["forward"] == 2
    monkeypatch.setattr(_threads, "_layer", "omp")
    monkeypatch.setenv("OMP_DYNAMIC", "true")  # omp may then give a smaller team
    nlstm.LSTM(3, 32, seed=0)(x)
    assert split_calls["forward"] == 2


def test_unit_ranges_cover_every_unit_once():
    for H in (1, 5, 16, 17, 40, 64, 100, 128, 257):
        for parts in (1, 2, 3, 4):
            ranges = [units.unit_range(p, parts, H) for p in range(parts)]
            assert ranges[0][0] == 0 and ranges[-1][1] == H
            for (a0, a1), (b0, b1) in zip(ranges, ranges[1:]):
                assert a1 == b0 and a0 <= a1
            assert all(j0 % 16 == 0 or j0 == H for j0, _ in ranges)



def _concurrent_layers_finish(calls: int, timeout: float) -> bool:
    """Two Python threads, each with its own layer, run split forwards at once."""
    import threading
    done = []

    def work(seed):
        m = nlstm.LSTM(3, 32, seed=seed)
        x = np.random.default_rng(seed).standard_normal((20, 1, 3)).astype(np.float32)
        for _ in range(calls):
            m(x)
        done.append(seed)

    threads = [threading.Thread(target=work, args=(s,), daemon=True) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return len(done) == 2


def test_layers_in_two_python_threads_do_not_deadlock(split_calls):
    """Two Python threads' split calls at once: each gets its own threads for its parts
    (Numba's omp layer gives each calling thread its own team)."""
    assert _concurrent_layers_finish(calls=10, timeout=60), "deadlocked"
    assert split_calls["forward"] == 2 * 2 * 10


@numba.njit(parallel=True)
def _exchange(flags, parts, sent, got):
    """Each part sends its pairs of ``sent`` (parts, rounds, 2) with a barrier a round, in
    alternating slots, and records every part's pair as received: got (parts, rounds,
    parts, 2)."""
    for part in numba.prange(parts):
        for k in range(sent.shape[1]):
            sync.barrier_sending(flags, part, parts, k + 1, k % 2, sent[part, k, 0],
                                 sent[part, k, 1])
            for other in range(parts):
                a, b = sync.received(flags, other, k % 2)
                got[part, k, other, 0] = a
                got[part, k, other, 1] = b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_barrier_sends_values_bit_for_bit(dtype):
    """What a part sends with its barrier reaches every part unchanged: every round, both
    slots in turn, values of every kind (signed zeros, subnormals, infinities)."""
    if not _threads.unit_split_allowed() or numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs the unit split's threads (two at once)")
    parts, rounds = 2, 2000
    rng = np.random.default_rng(0)
    scale = 10.0 ** rng.integers(-30, 30, (parts, rounds, 2))
    sent = (rng.standard_normal((parts, rounds, 2)) * scale).astype(dtype)
    info = np.finfo(dtype)
    sent[0, :5, 0] = [-0.0, info.smallest_subnormal, -np.inf, np.inf, info.max]
    got = np.full((parts, rounds, parts, 2), np.nan)
    flags = nlstm.LSTM(1, 1)._barrier_flags(parts)
    before = nlstm.get_num_threads()
    nlstm.set_num_threads(2)
    try:
        _exchange(flags, parts, sent, got)
    finally:
        nlstm.set_num_threads(before)
    for part in range(parts):
        np.testing.assert_array_equal(got[part].astype(dtype).view(np.uint8),
                                      np.transpose(sent, (1, 0, 2)).view(np.uint8))


@pytest.mark.parametrize("threads", [1, 2])  # the one-row kernel; the unit split
def test_a_gru_inference_keeps_one_row_of_aux(split_calls, threads):
    """A one-row GRU inference writes aux (W_hn h + b_hn, which only backward reads) into
    its first time row at every step (``kernels.slots.saved_at``): the other rows keep what
    they held (NaN here, which y would show had a step read them), and y is a training
    forward's, which writes every row (the gradient tests read them)."""
    nlstm.set_num_threads(threads)  # (the fixture restores it)
    m = nlstm.GRU(5, 32, num_layers=2, bidirectional=True, seed=0)
    x = np.random.default_rng(2).standard_normal((6, 1, 5)).astype(np.float32)
    y_train, _ = m.forward(x, train=True)
    aux = [m._ws.extra[k][d]["aux"] for k in range(2) for d in range(2)]
    assert all(np.isfinite(a).all() for a in aux)
    for a in aux:
        a[...] = np.nan
    split_calls["forward"] = 0
    y, _ = m(x)
    np.testing.assert_array_equal(y, y_train)
    for a in aux:
        assert np.isfinite(a[0]).all() and np.isnan(a[1:]).all()
    assert split_calls["forward"] == (8 if threads == 2 else 0)  # 4 runs of 2 parts
