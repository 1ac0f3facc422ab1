"""The benchmark harness's agreement check (bench.check), on tiny sizes: no timing here.

Every available peer must agree with nlstm and with the float64 NumPy reference on the
same weights (ragged and stacked bidirectional cases included), the reference itself
must match tests/reference.py, and an engine that is wrong must be rejected and never
timed.
"""
import dataclasses
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import check, compare, engines as E  # noqa: E402
from bench.grid import GRID, make_problem  # noqa: E402
from bench.numpy_lstm import NUMPY_CELLS, NumpyLSTM  # noqa: E402

import reference  # noqa: E402  (tests/ is on sys.path under pytest)

TINY = {"S": dict(T=7, B=1, I=5, H=6), "ragged": dict(T=9, B=5, I=4, H=6),
        "M-bi2": dict(T=6, B=3, I=4, H=5), "step": dict(I=5, H=6)}
# JAX compiles each shape for about a second: it joins only where it adds coverage.
JAX_CASES = {"ragged"}


@pytest.fixture(autouse=True, scope="module")
def keep_torch_threads():
    """The torch engine sets torch's thread count; give the rest of the session its own back."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and before is not None:
        torch.set_num_threads(before)


def _runners(problem, mode, names):
    runners = {}
    for name in names:
        eng = E.ENGINES[name]
        if eng.unavailable() or eng.supports(problem, mode):
            continue
        runners[name] = eng.prepare(problem, mode)
    return runners


@pytest.mark.parametrize("case", sorted(TINY))
def test_every_available_peer_agrees(case):
    problem = make_problem(GRID[case], seed=3, shrink=TINY[case])
    names = [n for n in E.ENGINES if n != "jax" or case in JAX_CASES]
    for mode in problem.case.modes():
        runners = _runners(problem, mode, names)
        assert "nlstm" in runners and "numpy" in runners
        verdicts, _ = check.check_engines(problem, mode, runners)
        for name, v in verdicts.items():
            assert v.ok, f"{case} {mode}: {v.summary()}"
            assert v.vs_reference < 1e-5, f"{case} {mode}: {v.summary()}"
        if problem.lengths is not None:
            assert problem.lengths.min() < problem.case.T  # the case really is ragged


def test_float64_reference_matches_the_oracle():
    rng = np.random.default_rng(0)
    T, B, I, H, L = 6, 4, 3, 5, 2
    problem = make_problem(GRID["M-bi2"], seed=1, shrink=dict(T=T, B=B, I=I, H=H))
    x = rng.standard_normal((T, B, I))
    lengths = np.array([6, 1, 4, 3])
    zeros = np.zeros((2 * L, B, H))
    y, h, c, cache = reference.lstm_forward(problem.params, x, zeros, zeros, lengths, L, True)
    dx, _, _, grads = reference.lstm_backward(cache, np.ones_like(y), zeros, zeros)
    m = NumpyLSTM(problem.params, L, True, np.float64)
    y2, (h2, c2) = m.forward(x, lengths, train=True)
    dx2, _, grads2 = m.backward(np.ones_like(y2))
    for name, a, b in [("y", y2, y), ("h_n", h2, h), ("c_n", c2, c), ("dx", dx2, dx)] + \
            [(k, grads2[k], grads[k]) for k in grads]:
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=name)


class _WrongGateOrder(E.NumpyEngine):
    """Loads the weights with the first two gate blocks swapped (PyTorch's i and f for an
    LSTM)."""
    name = "wrong-gates"

    def prepare(self, problem, mode):
        H = problem.case.H
        swap = lambda w: np.concatenate([w[H:2 * H], w[:H], w[2 * H:]])
        params = {k: swap(v) for k, v in problem.params.items()}
        return super().prepare(dataclasses.replace(problem, params=params), mode)


class _IgnoresLengths(E.NumpyEngine):
    """Runs every row to T, as if lengths were not given."""
    name = "no-lengths"

    def prepare(self, problem, mode):
        return super().prepare(dataclasses.replace(problem, lengths=None), mode)


class _SlightlyOffGradient(E.NumpyEngine):
    """Right forward, dx 1% too large."""
    name = "off-dx"

    def prepare(self, problem, mode):
        r = super().prepare(problem, mode)
        inner = r.result

        def result():
            out = inner()
            if "dx" in out:
                out["dx"] = out["dx"] * 1.01
            return out
        return E.Runner(r, result)


@pytest.mark.parametrize("wrong,case,mode", [
    (_WrongGateOrder, "S", "infer"), (_WrongGateOrder, "step", "step"),
    (_IgnoresLengths, "ragged", "infer"), (_IgnoresLengths, "ragged", "train"),
    (_SlightlyOffGradient, "M-bi2", "train")])
def test_a_wrong_engine_is_rejected(wrong, case, mode):
    problem = make_problem(GRID[case], seed=5, shrink=TINY[case])
    runners = _runners(problem, mode, ["nlstm"])
    runners["wrong"] = wrong().prepare(problem, mode)
    verdicts, _ = check.check_engines(problem, mode, runners)
    assert verdicts["nlstm"].ok
    assert not verdicts["wrong"].ok, verdicts["wrong"].summary()


def test_a_crashing_engine_is_rejected():
    problem = make_problem(GRID["S"], shrink=TINY["S"])

    def boom():
        raise RuntimeError("boom")
    verdicts, _ = check.check_engines(problem, "infer", {"crash": E.Runner(boom, boom)})
    assert not verdicts["crash"].ok and "boom" in verdicts["crash"].note


def test_compare_does_not_time_a_rejected_engine(monkeypatch):
    case = dataclasses.replace(GRID["ragged"], **TINY["ragged"])
    monkeypatch.setitem(E.ENGINES, "no-lengths", _IgnoresLengths())
    row = compare.run_case(case, "infer", ["nlstm", "no-lengths"], repeat=1, chunk_s=0.0,
                           min_samples=1, log=lambda *a: None)
    assert row["engines"]["no-lengths"]["status"] == "rejected"
    assert "no-lengths" not in row["median_s"] and "median_s" not in row["engines"]["no-lengths"]
    assert row["engines"]["nlstm"]["status"] == "timed"


# ---- GRU and RNN (issue 5): the same check, the same engines -----------------------------
# Tiny cases; JAX (about a second of compiling per shape) joins only the ragged GRU.
CELL_CASES = [(cell, case) for cell in ("gru", "rnn") for case in ("S", "ragged", "step")] \
    + [("gru", "M-bi2")]


def _cell_problem(cell, case, seed=3):
    return make_problem(GRID[case], seed=seed, shrink=dict(TINY[case], cell=cell))


@pytest.mark.parametrize("cell,case", CELL_CASES)
def test_gru_and_rnn_peers_agree(cell, case):
    problem = _cell_problem(cell, case)
    names = [n for n in E.ENGINES if n != "jax" or (cell, case) == ("gru", "ragged")]
    for mode in problem.case.modes():
        runners = _runners(problem, mode, names)
        want = {"nlstm", "numpy", "torch", "ort"} - {n for n in ("torch", "ort")
                                                   if E.ENGINES[n].unavailable()}
        if mode == "train":
            want.discard("ort")
        assert want <= set(runners), (cell, case, mode, sorted(runners))
        verdicts, ref = check.check_engines(problem, mode, runners)
        assert "c_n" not in ref
        for v in verdicts.values():
            assert v.ok, f"{cell} {case} {mode}: {v.summary()}"
            assert v.vs_reference < 1e-5, f"{cell} {case} {mode}: {v.summary()}"


@pytest.mark.parametrize("cell", ["gru", "rnn", "rnn-relu"])
def test_numpy_gru_and_rnn_match_the_oracle(cell):
    """The float64 reference of the GRU/RNN check against tests/reference.py, ragged and
    bidirectional, outputs and every gradient (initial-state ones included)."""
    rng = np.random.default_rng(1)
    T, B, I, H, L = 6, 4, 3, 5, 2
    base = cell.split("-")[0]
    problem = make_problem(GRID["M-bi2"], seed=1, shrink=dict(T=T, B=B, I=I, H=H, cell=base))
    x = rng.standard_normal((T, B, I))
    lengths = np.array([6, 1, 4, 3])
    h0 = rng.standard_normal((2 * L, B, H))
    dh_n = rng.standard_normal((2 * L, B, H))
    oracle = reference.GRUCell() if base == "gru" else \
        reference.RNNCell("relu" if cell.endswith("relu") else "tanh")
    y, (h,), cache = reference.forward(oracle, problem.params, x, [h0], lengths, L, True)
    dy = rng.standard_normal(y.shape)
    dx, (dh0,), grads = reference.backward(cache, dy, [dh_n])
    kw = dict(nonlinearity="relu") if cell.endswith("relu") else {}
    m = NUMPY_CELLS[base](problem.params, L, True, np.float64, **kw)
    y2, (h2,) = m.forward(x, lengths, state=(h0,), train=True)
    dx2, (dh02,), grads2 = m.backward(dy, (dh_n,))
    for name, a, b in [("y", y2, y), ("h_n", h2, h), ("dx", dx2, dx), ("dh0", dh02, dh0)] + \
            [(k, grads2[k], grads[k]) for k in grads]:
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"{cell} {name}")


class _SwappedRZ(_WrongGateOrder):
    """A GRU that loads PyTorch's r and z blocks swapped (the ONNX z, r, h order misread)."""
    name = "swapped-rz"


class _ResetAfterProduct(E.OrtEngine):
    """ONNX Runtime's GRU with its default linear_before_reset=0: not PyTorch's formula."""
    name = "ort-lbr0"

    def build(self, problem, with_state):
        model = super().build(problem, with_state)
        for node in model.graph.node:
            for att in node.attribute:
                if att.name == "linear_before_reset":
                    att.i = 0
        return model


@pytest.mark.parametrize("wrong,cell,case,mode", [
    (_SwappedRZ, "gru", "S", "infer"), (_SwappedRZ, "gru", "ragged", "train"),
    (_SwappedRZ, "gru", "step", "step"), (_ResetAfterProduct, "gru", "ragged", "infer"),
    (_IgnoresLengths, "gru", "ragged", "train"), (_IgnoresLengths, "rnn", "ragged", "infer"),
    (_SlightlyOffGradient, "rnn", "S", "train")])
def test_a_wrong_gru_or_rnn_engine_is_rejected(wrong, cell, case, mode):
    if wrong is _ResetAfterProduct and E.ENGINES["ort"].unavailable():
        pytest.skip("onnxruntime not installed")
    problem = _cell_problem(cell, case, seed=5)
    runners = _runners(problem, mode, ["nlstm"])
    runners["wrong"] = wrong().prepare(problem, mode)
    verdicts, _ = check.check_engines(problem, mode, runners)
    assert verdicts["nlstm"].ok, verdicts["nlstm"].summary()
    assert not verdicts["wrong"].ok, verdicts["wrong"].summary()


def test_results_blocks_are_added_without_touching_others(tmp_path):
    doc = tmp_path / "RESULTS.md"
    doc.write_text("# R\n\n<!-- compare:begin -->\nLSTM\n<!-- compare:end -->\n\n## Analysis\nkept\n")
    assert not compare.update_results("compare-rnn", "x", path=str(doc))  # no heading: no block
    assert compare.update_results("compare-rnn", "RNN v1", path=str(doc), heading="RNN",
                                  after=["compare-gru", "compare"])
    assert compare.update_results("compare-gru", "GRU v1", path=str(doc), heading="GRU",
                                  after=["compare"])
    assert compare.update_results("compare-rnn", "RNN v2", path=str(doc), heading="RNN",
                                  after=["compare-gru", "compare"])
    text = doc.read_text()
    order = [text.index(s) for s in ("LSTM", "GRU v1", "RNN v2", "## Analysis\nkept")]
    assert order == sorted(order) and "RNN v1" not in text and text.count("## RNN") == 1


def test_kernel_clock_times_the_recurrence_and_not_the_products():
    """bench.extra's breakdown wraps nlstm's internals; a change to their signatures must
    fail here, not in the middle of a benchmark run."""
    import nlstm
    from bench.extra import KernelClock
    # H = 6: no multiple of any vector width, so W_hh is packed as panels for the blocks of
    # rows (one pack_panels call per layer) rather than for the gate tiles
    m = nlstm.LSTM(4, 6, num_layers=2, seed=0)
    x = np.zeros((5, 3, 4), np.float32)
    m(x, lengths=[5, 2, 0])  # compiled before timing, as the breakdown does
    with KernelClock() as clk:
        m(x, lengths=[5, 2, 0])
        m.step(x[0])
    assert clk.ok
    assert clk.calls == 2 + 2 + 2  # per layer: its packing, its recurrence, its step kernel
    assert clk.kernel_s > 0


def test_harness_keeps_torch_on_its_own_openmp():
    """bench.compare's setup leaves nlstm's threading layer to Numba and imports torch
    before that layer starts, so torch keeps the libgomp its wheel carries: imported after
    Numba's omp layer loaded the system's file of the same soname, torch binds to that one
    and its small parallel regions slow down 100x and more (bench/RESULTS.md, stop 28)."""
    pytest.importorskip("torch")
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/maps")
    code = ("import os, sys; sys.path.insert(0, os.getcwd())\n"
            "from bench import engines; engines.configure_threads(2)\n"
            "import numba, torch\n"
            "print(os.environ.get('NUMBA_THREADING_LAYER'))\n"
            "print(os.path.dirname(torch.__file__))\n"
            "print(','.join(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'gomp' in l})))\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env)
    assert out.returncode == 0, out.stderr
    layer, torch_dir, gomps = out.stdout.split("\n")[:3]
    assert layer == "None"  # the layer left to Numba, not chosen for it
    own = [g for g in gomps.split(",") if g.startswith(torch_dir)]
    if glob.glob(os.path.join(torch_dir, "lib", "libgomp*")):  # a wheel with its own OpenMP
        assert own, f"torch bound to another libgomp: {gomps}"


def test_lnlstm_ratios_pair_each_round():
    # A host that slows everything 2x in one round: ratios of whole-run medians would move,
    # the per-round pairs do not.
    from bench.lnlstm import paired_ratio
    base = [1.0, 1.0, 2.0, 2.0, 2.0]
    assert paired_ratio([1.2 * b for b in base], base) == pytest.approx(1.2)
    assert paired_ratio([1.2, 1.2, 1.2, 2.4, 2.4], base) == pytest.approx(1.2)
    assert np.median([1.2, 1.2, 1.2, 2.4, 2.4]) / np.median(base) == pytest.approx(0.6)
