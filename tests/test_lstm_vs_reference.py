"""Forward and every gradient against the float64 oracle, over random configurations."""
import numpy as np
import pytest

from cases import TOL, make_case, run_nlstm, state3, time_major
from reference import lstm_backward, lstm_forward


def run_reference(case):
    m = case["model"]
    T, B, H, LD = case["T"], case["B"], case["H"], case["L"] * case["D"]
    x = time_major(case, case["x"]).astype(np.float64)
    if case["state"] is None:
        h0 = c0 = np.zeros((LD, B, H))
    else:
        h0, c0 = (state3(case, s).astype(np.float64) for s in case["state"])
    lengths = np.full(B, T) if case["lengths"] is None else case["lengths"]
    y, h, c, cache = lstm_forward(m.params, x, h0, c0, lengths, case["L"], m.bidirectional)
    dy = time_major(case, case["dy"]).astype(np.float64)
    dx, dh0, dc0, grads = lstm_backward(cache, dy, state3(case, case["dh_n"]),
                                        state3(case, case["dc_n"]))
    return dict(y=y, h_n=h, c_n=c, dx=dx, dh0=dh0, dc0=dc0, grads=grads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(24))
def test_matches_reference(seed, dtype):
    case = make_case(seed, dtype)
    got, want = run_nlstm(case), run_reference(case)
    tol = TOL[dtype]
    for name in ("y", "dx"):
        assert got[name].dtype == dtype, name
        np.testing.assert_allclose(time_major(case, got[name]), want[name], err_msg=name, **tol)
    for name in ("h_n", "c_n", "dh0", "dc0"):
        assert got[name].dtype == dtype, name
        np.testing.assert_allclose(state3(case, got[name]), want[name], err_msg=name, **tol)
    assert set(got["grads"]) == set(want["grads"])
    for k, g in want["grads"].items():
        np.testing.assert_allclose(got["grads"][k], g, err_msg=k, **tol)


def test_zero_length_rows_keep_initial_state_and_output_zero(rng):
    case = make_case(3, np.float64)
    m = case["model"]
    B, T = 3, 4
    x = rng.standard_normal((T, B, m.input_size))
    LD = m.num_layers * m.num_directions
    h0, c0 = rng.standard_normal((2, LD, B, m.hidden_size))
    m.batch_first = False
    y, (h, c) = m(x, (h0, c0), lengths=[0, 4, 0])
    assert np.all(y[:, [0, 2]] == 0)
    np.testing.assert_array_equal(h[:, [0, 2]], h0[:, [0, 2]])
    np.testing.assert_array_equal(c[:, [0, 2]], c0[:, [0, 2]])
