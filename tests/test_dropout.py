"""Dropout between stacked layers (PyTorch's ``dropout``): training only, with its gradient."""
import numpy as np
import pytest

import nlstm


def test_dropout_matches_stacked_layers_with_the_same_mask():
    rng = np.random.default_rng(0)
    T, B, I, H = 6, 4, 3, 5
    m = nlstm.LSTM(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=1, dropout=0.4)
    l0 = nlstm.LSTM(I, H, bidirectional=True, dtype=np.float64)
    l1 = nlstm.LSTM(2 * H, H, bidirectional=True, dtype=np.float64)
    sd = m.state_dict()
    l0.load_state_dict({k: v for k, v in sd.items() if "_l0" in k})
    l1.load_state_dict({k.replace("_l1", "_l0"): v for k, v in sd.items() if "_l1" in k})
    x = rng.standard_normal((T, B, I))
    lengths = np.array([6, 3, 0, 5])
    dy = rng.standard_normal((T, B, 2 * H))

    y, (h, c) = m.forward(x, lengths=lengths, train=True)
    mask = m._ws.masks[0].copy()
    keep = 1 - 0.4
    assert set(np.unique(mask)) <= {0.0, 1 / keep}
    assert 0.3 < (mask == 0).mean() < 0.5
    dx, _ = m.backward(dy)

    y0, (h0, c0) = l0.forward(x, lengths=lengths)
    y1, (h1, c1) = l1.forward(y0 * mask, lengths=lengths)
    np.testing.assert_allclose(y, y1, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h[2:], h1, rtol=1e-12, atol=1e-14)
    dx1, _ = l1.backward(dy)
    dx0, _ = l0.backward(dx1 * mask)
    np.testing.assert_allclose(dx, dx0, rtol=1e-12, atol=1e-14)
    for k, g in m.grads.items():
        want = l0.grads[k] if "_l0" in k else l1.grads[k.replace("_l1", "_l0")]
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-14, err_msg=k)


def test_dropout_is_off_in_inference_and_reproducible_from_seed():
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    plain = nlstm.LSTM(3, 4, num_layers=3, dtype=np.float64, seed=2)
    drop = nlstm.LSTM(3, 4, num_layers=3, dtype=np.float64, seed=2, dropout=0.5)
    np.testing.assert_array_equal(drop(x)[0], plain(x)[0])
    a = nlstm.LSTM(3, 4, num_layers=3, seed=2, dropout=0.5).forward(x)[0]
    b = nlstm.LSTM(3, 4, num_layers=3, seed=2, dropout=0.5).forward(x)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, plain.forward(x)[0].astype(np.float32))


@pytest.mark.parametrize("p", [-0.1, 1.0, "0.5", True])
def test_dropout_rejects_bad_values(p):
    with pytest.raises(ValueError, match="dropout"):
        nlstm.LSTM(3, 4, dropout=p)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("prob", [0.1, 0.5, 0.9])
def test_mask_draws_have_the_rate_asked_and_no_pattern(dtype, prob):
    """The counter-based draws behind dropout and zoneout masks (``kernels.masks``): the
    rate asked overall and in every column of a (T, B, H) mask, neighbours independent, and
    another key another mask. Bounds at 5 standard deviations: a draw that ignored the
    threshold, a short period or a key that did not reach the draws fails them."""
    from nlstm.kernels.masks import bernoulli
    n, H = 256_000, 128
    out = np.full(n, -1.0, dtype)
    bernoulli(out, np.uint64(7), np.uint64(round(prob * 2 ** 32)), 2.5)
    assert set(np.unique(out).tolist()) <= {0.0, 2.5}
    hit = out != 0
    sd = lambda q, m: 5 * np.sqrt(q * (1 - q) / m)
    assert abs(hit.mean() - prob) < sd(prob, n)
    assert np.all(np.abs(hit.reshape(-1, H).mean(0) - prob) < sd(prob, n // H) * 1.3)
    for lag in (1, H):  # the next unit, the same unit a step later
        both = np.mean(hit[lag:] & hit[:-lag])
        assert abs(both - prob ** 2) < sd(prob ** 2, n - lag), lag
    other = np.empty_like(out)
    bernoulli(other, np.uint64(8), np.uint64(round(prob * 2 ** 32)), 2.5)
    agree = np.mean((other != 0) == hit)  # independent masks agree at p² + (1-p)²
    assert abs(agree - (prob ** 2 + (1 - prob) ** 2)) < 0.01
