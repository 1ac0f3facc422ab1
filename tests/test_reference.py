"""The oracle itself and nlstm's float64 gradients, against central finite differences."""
import numpy as np
import pytest

import nlstm
from reference import lstm_backward, lstm_forward


def _loss(params, x, h0, c0, lengths, L, bi, wy, wh, wc):
    y, h, c, _ = lstm_forward(params, x, h0, c0, lengths, L, bi)
    return (y * wy).sum() + (h * wh).sum() + (c * wc).sum()


@pytest.mark.parametrize("L,bi", [(1, False), (2, True)])
def test_reference_gradients_match_finite_differences(L, bi):
    rng = np.random.default_rng(7)
    T, B, I, H = 4, 3, 3, 2
    D = 2 if bi else 1
    m = nlstm.LSTM(I, H, num_layers=L, bidirectional=bi, dtype=np.float64, seed=1)
    params = m.state_dict()
    for k in params:  # non-zero biases everywhere, so a bias counted twice would show
        params[k] = rng.uniform(-0.8, 0.8, params[k].shape)
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((2, L * D, B, H))
    lengths = np.array([4, 0, 2])
    wy = rng.standard_normal((T, B, D * H))
    wh, wc = rng.standard_normal((2, L * D, B, H))
    y, h, c, cache = lstm_forward(params, x, h0, c0, lengths, L, bi)
    dx, dh0, dc0, grads = lstm_backward(cache, wy, wh, wc)
    eps = 1e-6
    f = lambda: _loss(params, x, h0, c0, lengths, L, bi, wy, wh, wc)
    for name, arr, analytic in [("x", x, dx), ("h0", h0, dh0), ("c0", c0, dc0)] + \
            [(k, params[k], grads[k]) for k in params]:
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            up = f()
            arr[idx] = old - eps
            down = f()
            arr[idx] = old
            num[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(analytic, num, rtol=1e-6, atol=1e-8, err_msg=name)
    # Padding rows really are zero and row 1 (length 0) keeps its initial state.
    assert np.all(y[2:, 2] == 0) and np.all(y[:, 1] == 0)
    np.testing.assert_array_equal(h[:, 1], h0[:, 1])


def test_nlstm_float64_gradients_match_finite_differences():
    rng = np.random.default_rng(8)
    T, B, I, H, L = 5, 2, 3, 3, 2
    m = nlstm.LSTM(I, H, num_layers=L, bidirectional=True, batch_first=True, dtype=np.float64, seed=2)
    x = rng.standard_normal((B, T, I))
    h0, c0 = rng.standard_normal((2, 2 * L, B, H))
    lengths = np.array([3, 5])
    wy = rng.standard_normal((B, T, 2 * H))
    wh, wc = rng.standard_normal((2, 2 * L, B, H))

    def loss():
        y, (h, c) = m(x, (h0, c0), lengths)
        return (y * wy).sum() + (h * wh).sum() + (c * wc).sum()

    m.forward(x, (h0, c0), lengths)
    dx, (dh0, dc0) = m.backward(wy, wh, wc)
    eps = 1e-6
    checks = [("x", x, dx), ("h0", h0, dh0), ("c0", c0, dc0)] + \
             [(k, m.params[k], m.grads[k]) for k in m.params]
    for name, arr, analytic in checks:
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            up = loss()
            arr[idx] = old - eps
            down = loss()
            arr[idx] = old
            num[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(analytic, num, rtol=1e-6, atol=1e-8, err_msg=name)
