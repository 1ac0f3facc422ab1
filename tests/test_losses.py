"""Losses: values and gradients, masked by lengths so padding never counts."""
import numpy as np
import pytest

import nlstm
from test_linear import numeric_grad

B, T, O, C = 4, 5, 3, 6
LENGTHS = np.array([5, 2, 0, 3])


def test_mse_per_step_masked_by_lengths():
    rng = np.random.default_rng(0)
    p, y = rng.standard_normal((B, T, O)), rng.standard_normal((B, T, O))
    y_pad = y.copy()
    for b, n in enumerate(LENGTHS):
        y_pad[b, n:] = np.nan  # padding may hold anything
    loss = nlstm.MSELoss()
    value = loss.forward(p, y_pad, LENGTHS)
    valid = np.concatenate([(p[b, :n] - y[b, :n]).ravel() for b, n in enumerate(LENGTHS)])
    assert loss.count == LENGTHS.sum()
    np.testing.assert_allclose(value, np.mean(valid ** 2), rtol=1e-12, err_msg="value")
    grad = loss.backward()
    f = lambda: nlstm.MSELoss().forward(p, y_pad, LENGTHS)
    np.testing.assert_allclose(grad, numeric_grad(f, p), rtol=1e-6, atol=1e-9, err_msg="grad")
    for b, n in enumerate(LENGTHS):
        assert not grad[b, n:].any(), "padding has no gradient"


def test_mse_per_sequence_skips_empty_rows_and_matches_torch():
    rng = np.random.default_rng(1)
    p, y = rng.standard_normal((B, O)), rng.standard_normal((B, O))
    loss = nlstm.MSELoss()
    value = loss.forward(p, y, LENGTHS)
    keep = LENGTHS > 0
    np.testing.assert_allclose(value, np.mean((p[keep] - y[keep]) ** 2), rtol=1e-12, err_msg="value")
    assert loss.count == 3
    np.testing.assert_allclose(loss.backward(), numeric_grad(lambda: loss.forward(p, y, LENGTHS), p),
                               rtol=1e-6, atol=1e-9, err_msg="grad")
    torch = pytest.importorskip("torch")
    pt = torch.from_numpy(p).requires_grad_(True)
    ref = torch.nn.functional.mse_loss(pt, torch.from_numpy(y))
    ref.backward()
    np.testing.assert_allclose(loss.forward(p, y), ref.item(), rtol=1e-12, err_msg="value")
    np.testing.assert_allclose(loss.backward(), pt.grad.numpy(), rtol=1e-12, err_msg="grad")


def test_cross_entropy_per_step_matches_torch_with_padding_ignored():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((B, T, C)) * 3
    target = rng.integers(0, C, (B, T))
    padded = target.copy()
    for b, n in enumerate(LENGTHS):
        padded[b, n:] = -1  # padding may hold anything, even invalid classes
    loss = nlstm.CrossEntropyLoss()
    value = loss.forward(logits, padded, LENGTHS)
    grad = loss.backward()
    lt = torch.from_numpy(logits).requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(lt.permute(0, 2, 1), torch.from_numpy(padded),
                                            ignore_index=-1)
    ref.backward()
    np.testing.assert_allclose(value, ref.item(), rtol=1e-12, err_msg="value")
    np.testing.assert_allclose(grad, lt.grad.numpy(), rtol=1e-10, atol=1e-14, err_msg="grad")
    assert loss.count == LENGTHS.sum()


def test_cross_entropy_per_sequence_gradient_and_stability():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((B, C))
    target = rng.integers(0, C, B)
    loss = nlstm.CrossEntropyLoss()
    loss.forward(logits, target)
    grad = loss.backward()
    np.testing.assert_allclose(grad, numeric_grad(lambda: loss.forward(logits, target), logits),
                               rtol=1e-6, atol=1e-9, err_msg="grad")
    big = np.array([[1000.0, 0.0, -1000.0]], np.float32)  # no overflow in exp
    assert loss.forward(big, np.array([0])) == pytest.approx(0.0, abs=1e-6)
    assert loss.forward(big, np.array([1])) == pytest.approx(1000.0, rel=1e-6)
    assert np.isfinite(loss.backward()).all()


def test_everything_padded_is_zero_loss_and_gradient():
    loss = nlstm.MSELoss()
    p = np.ones((2, 3, 1))
    assert loss.forward(p, np.zeros_like(p), np.array([0, 0])) == 0.0
    assert loss.count == 0 and not loss.backward().any()


@pytest.mark.parametrize("call, exc, msg", [
    (lambda: nlstm.MSELoss().forward(np.zeros((2, 3)), np.zeros((2, 4))), ValueError, "target must have shape"),
    (lambda: nlstm.MSELoss().forward(np.zeros(3), np.zeros(3)), ValueError, "pred must be 2-D"),
    (lambda: nlstm.MSELoss().forward(np.zeros((2, 3)), np.full((2, 3), np.nan)), ValueError, "target contains NaN"),
    (lambda: nlstm.MSELoss().forward(np.zeros((2, 3, 1)), np.zeros((2, 3, 1)), [1, 4]), ValueError, "lengths must be in"),
    (lambda: nlstm.CrossEntropyLoss().forward(np.zeros((2, 3)), np.array([0, 3])), ValueError, "0..2"),
    (lambda: nlstm.CrossEntropyLoss().forward(np.zeros((2, 3)), np.array([0.5, 1])), TypeError, "integer class"),
    (lambda: nlstm.CrossEntropyLoss().forward(np.zeros((2, 3)), np.array([[0, 1]])), ValueError, "target must have shape"),
    (lambda: nlstm.MSELoss().backward(), ValueError, "forward"),
])
def test_bad_arguments(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()
