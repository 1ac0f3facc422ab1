"""A second call with the same shapes allocates nothing in compiled code.

Numba's runtime counts one allocation for every ndarray handed from Python into a
compiled function that uses the runtime (the meminfo that adapts it): the ``prange``
drivers; the kernels themselves compile without it (``nlstm.kernels.config.options``) and
adapt nothing. So the test counts the array arguments of every call into code with the
runtime and requires the runtime's allocation counter to have moved by exactly that much:
any array compiled code allocated inside itself, even one per call, would show up as a
difference (and a kernel without the runtime cannot allocate at all).
"""
import threading

import numpy as np
import pytest
from numba.core.runtime import rtsys

import nlstm
from nlstm.kernels import gru, lnlstm_row, lstm, parallel, rnn, tiles


@pytest.fixture
def counted_kernels(monkeypatch):
    count = [0]
    lock = threading.Lock()

    def arrays(args):  # arrays inside tuple arguments would be adapted one by one too
        return sum(arrays(a) if isinstance(a, tuple) else isinstance(a, np.ndarray) for a in args)

    def counting(kernel):
        runtime = kernel.targetoptions.get("_nrt", True)  # else it adapts no array

        def call(*args):
            with lock:
                count[0] += arrays(args) if runtime else 0
            return kernel(*args)
        return call

    def counting_region(driver):  # a parallel region: its arguments, and Numba's launch
        def call(*args):
            with lock:
                count[0] += arrays(args) + PARFOR_LAUNCH_ALLOCATIONS
            return driver(*args)
        return call

    for module, cell in ((lstm, "lstm"), (gru, "gru"), (rnn, "rnn")):
        extra = {"lstm": ("step_options", "forward_row", "backward_row"),
                 "gru": ("forward_row",), "rnn": ("forward_row",)}[cell]
        for name in ("step",) + extra:
            name = f"{cell}_{name}"
            monkeypatch.setattr(module, name, counting(getattr(module, name)))
    for name in ("lnlstm_forward_row", "lnlstm_backward_row"):
        monkeypatch.setattr(lnlstm_row, name, counting(getattr(lnlstm_row, name)))
    # (the small whole-sequence products are NumPy calls in Python: they adapt no array)
    for name in ("lstm_forward", "lstm_backward", "gru_forward", "gru_backward", "rnn_forward",
                 "rnn_backward", "lstm_forward_units", "lstm_backward_units",
                 "gru_forward_units", "gru_backward_units", "project_panels", "project_narrow",
                 "project_ragged_panels", "weight_grad_panels", "normalize_input",
                 "normalize_input_back", "pack_gates", "pack_panels", "pack_panels_of_transpose",
                 "nonfinite"):
        split = getattr(parallel, name)
        monkeypatch.setattr(parallel, name, parallel.Split(counting(split.serial),
                                                           counting_region(split.parallel)))
    for name in ("pack_gates", "pack_panels", "pack_panels_of_transpose"):
        monkeypatch.setattr(tiles, name, counting(getattr(tiles, name)))
    return count


# Numba's parfor launch allocates this many small arrays per parallel region (the issue
# allows a fixed count per call that grows with neither T, B nor the number of layers).
PARFOR_LAUNCH_ALLOCATIONS = 0


@pytest.mark.parametrize("cls,extra", [(nlstm.LSTM, {}), (nlstm.LSTM, dict(proj_size=16, peephole=True)),
                                       (nlstm.GRU, {}),
                                       (nlstm.GRU, dict(linear_before_reset=False)),
                                       (nlstm.RNN, dict(nonlinearity="relu"))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [1, 64])  # 64 rows run on several threads when there are several
def test_steady_state_allocates_nothing(counted_kernels, dtype, B, cls, extra):
    rng = np.random.default_rng(0)
    m = cls(8, 32, num_layers=2, bidirectional=True, dtype=dtype, seed=0, **extra)
    x = rng.standard_normal((40, B, 8))
    lengths = rng.integers(0, 41, B)
    dy = rng.standard_normal((40, B, m.output_size))
    step = cls(8, 32, num_layers=2, dtype=dtype, seed=0, **extra)

    def one_round():
        m(x, lengths=lengths)
        m.forward(x, lengths=lengths)
        m.backward(dy)
        step.step(x[0])

    one_round()  # compiles and allocates the workspace
    ws = m._ws
    counted_kernels[0] = 0
    before = rtsys.get_allocation_stats().alloc
    one_round()
    allocated = rtsys.get_allocation_stats().alloc - before
    assert allocated == counted_kernels[0], "a kernel allocated inside compiled code"
    assert m._ws is ws  # same shapes reuse the workspace


@pytest.mark.parametrize("cls", [nlstm.LSTM, nlstm.GRU])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unit_split_allocates_nothing(counted_kernels, monkeypatch, dtype, cls):
    """The same for a one-row batch split over threads by hidden units."""
    from nlstm.kernels import tuning
    monkeypatch.setattr(tuning, "UNITS_MIN_STEP", 0)
    monkeypatch.setattr(tuning, "UNITS_MIN_WORK", 0)
    monkeypatch.setattr(nlstm._threads, "cpus_available", lambda: 2)
    before = nlstm.get_num_threads()
    nlstm.set_num_threads(2)
    try:
        rng = np.random.default_rng(0)
        m = cls(8, 32, num_layers=2, bidirectional=True, dtype=dtype, seed=0)
        x = rng.standard_normal((40, 1, 8))
        dy = rng.standard_normal((40, 1, m.output_size))
        spy = m._unit_parts
        parts = []
        m._unit_parts = lambda ws: parts.append(spy(ws)) or parts[-1]

        allocated = _second_round(counted_kernels, m, x, dy)
    finally:
        nlstm.set_num_threads(before)
    assert set(parts) == {2}
    assert allocated == counted_kernels[0], "a kernel allocated inside compiled code"


@pytest.mark.parametrize("cls,extra", [(nlstm.LayerNormLSTM, {}), (nlstm.LSTM, dict(zoneout=0.2))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_row_layernorm_and_zoneout_allocate_nothing(counted_kernels, dtype, cls, extra):
    """The same for a one-row batch of the LayerNorm LSTM and of LSTM with zoneout (their
    one-row kernels, ``kernels.lnlstm_row``; H = 64 is on the tiles and the panels)."""
    rng = np.random.default_rng(0)
    m = cls(8, 64, num_layers=2, bidirectional=True, dtype=dtype, seed=0, **extra)
    x = rng.standard_normal((40, 1, 8))
    dy = rng.standard_normal((40, 1, m.output_size))
    allocated = _second_round(counted_kernels, m, x, dy)
    assert allocated == counted_kernels[0], "a kernel allocated inside compiled code"


def _second_round(counted_kernels, m, x, dy) -> int:
    """Inference, a training forward and backward of m, twice: the compiled code's
    allocations in the second round (the kernels' array arguments counted from zero)."""
    def one_round():
        m(x)
        m.forward(x)
        m.backward(dy)

    one_round()
    counted_kernels[0] = 0
    before = rtsys.get_allocation_stats().alloc
    one_round()
    return rtsys.get_allocation_stats().alloc - before
