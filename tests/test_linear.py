"""nlstm.Linear and nlstm.Dropout: layout, init, gradients, state dict and bad input."""
import numpy as np
import pytest

import nlstm
from gradcheck import numeric_grad


def test_layout_init_and_seed():
    m = nlstm.Linear(5, 3, seed=0)
    assert m.params["weight"].shape == (3, 5) and m.params["bias"].shape == (3,)
    assert m.params["weight"].dtype == np.float32
    bound = 1 / np.sqrt(5)
    for k, v in m.params.items():
        assert np.abs(v).max() <= bound, k
    big = nlstm.Linear(4, 256, seed=1)
    assert np.abs(big.params["weight"]).max() > 0.9 * 0.5  # really spread over ±1/√4
    same = nlstm.Linear(5, 3, seed=0)
    for k in m.params:
        np.testing.assert_array_equal(m.params[k], same.params[k], err_msg=k)
    assert "bias" not in nlstm.Linear(5, 3, bias=False).params
    assert nlstm.Linear(2, 2, dtype=np.float64).params["weight"].dtype == np.float64


@pytest.mark.parametrize("lead", [(), (4,), (3, 2), (2, 3, 1)])
def test_forward_backward_any_leading_shape_vs_finite_differences(lead):
    rng = np.random.default_rng(1)
    m = nlstm.Linear(4, 3, dtype=np.float64, seed=2)
    m.params["bias"][:] = rng.standard_normal(3)
    x = rng.standard_normal((*lead, 4))
    dy = rng.standard_normal((*lead, 3))
    y = m.forward(x)
    assert y.shape == (*lead, 3)
    np.testing.assert_allclose(y, x @ m.params["weight"].T + m.params["bias"], rtol=1e-12,
                               err_msg="y")
    dx = m.backward(dy)
    loss = lambda: float(np.sum(m(x) * dy))
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-8, err_msg="dx")
    for k in ("weight", "bias"):
        np.testing.assert_allclose(m.grads[k], numeric_grad(loss, m.params[k]), rtol=1e-6,
                                   atol=1e-8, err_msg=k)


def test_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    m = nlstm.Linear(6, 4, seed=0)
    t = torch.nn.Linear(6, 4)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(m.params["weight"]))
        t.bias.copy_(torch.from_numpy(m.params["bias"]))
    x = rng.standard_normal((2, 5, 6)).astype(np.float32)
    dy = rng.standard_normal((2, 5, 4)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = t(xt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(m.forward(x), yt.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg="y")
    np.testing.assert_allclose(m.backward(dy), xt.grad.numpy(), rtol=1e-5, atol=1e-6, err_msg="dx")
    np.testing.assert_allclose(m.grads["weight"], t.weight.grad.numpy(), rtol=1e-5, atol=1e-5,
                               err_msg="weight")
    np.testing.assert_allclose(m.grads["bias"], t.bias.grad.numpy(), rtol=1e-5, atol=1e-5,
                               err_msg="bias")


def test_gradients_accumulate_and_backward_needs_a_training_forward():
    rng = np.random.default_rng(0)
    m = nlstm.Linear(3, 2, dtype=np.float64, seed=0)
    x, dy = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    m.forward(x)
    m.backward(dy)
    once = {k: v.copy() for k, v in m.grads.items()}
    m.forward(x)
    m.backward(dy)
    for k in once:
        np.testing.assert_allclose(m.grads[k], 2 * once[k], rtol=1e-12, err_msg=k)
    with pytest.raises(ValueError, match="forward"):
        m.backward(dy)  # once per training forward
    m(x)
    with pytest.raises(ValueError, match="forward"):
        m.backward(dy)  # inference keeps nothing
    m.zero_grad()
    assert not any(v.any() for v in m.grads.values())


def test_keeps_its_own_copy_of_the_input():
    m = nlstm.Linear(2, 1, dtype=np.float64, seed=0)
    x = np.ones((3, 2))
    m.forward(x)
    x[:] = 100.0  # the caller reuses its buffer before backward
    m.backward(np.ones((3, 1)))
    np.testing.assert_allclose(m.grads["weight"], [[3.0, 3.0]], err_msg="weight")


BAD = [
    ("feature size", dict(x=np.zeros((2, 4))), ValueError, "input.size.-1. must be equal to 3"),
    ("scalar", dict(x=np.float64(1.0)), ValueError, "input"),
    ("complex", dict(x=np.zeros((2, 3), complex)), TypeError, "input must have a real numeric"),
    ("strings", dict(x=np.full((2, 3), "a")), TypeError, "input"),
    ("nan", dict(x=np.full((2, 3), np.nan)), ValueError, "input contains NaN"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_changes_nothing(case):
    _, kwargs, exc, msg = case
    rng = np.random.default_rng(0)
    m = nlstm.Linear(3, 2, seed=0)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    m.forward(x)
    before = ({k: v.copy() for k, v in m.params.items()}, m._x.copy())
    with pytest.raises(exc, match=msg):
        m.forward(kwargs["x"])
    for k, v in before[0].items():
        np.testing.assert_array_equal(m.params[k], v, err_msg=k)
    np.testing.assert_array_equal(m._x, before[1])
    with pytest.raises(ValueError, match=r"dy must have shape \(5, 2\)"):
        m.backward(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="dy.size"):
        m.backward(np.zeros((5, 3)))
    m.backward(np.ones((5, 2)))  # the pending forward survived the bad calls


def test_constructor_and_state_dict_checks():
    with pytest.raises(TypeError, match="in_features"):
        nlstm.Linear(2.5, 3)
    with pytest.raises(ValueError, match="out_features"):
        nlstm.Linear(2, 0)
    with pytest.raises(TypeError, match="dtype"):
        nlstm.Linear(2, 3, dtype=np.int32)
    m = nlstm.Linear(3, 2, seed=0)
    sd = m.state_dict()
    sd["weight"][:] = 0  # a copy
    assert m.params["weight"].any()
    before = m.state_dict()
    for bad, exc, msg in [({"weight": np.zeros((2, 3))}, ValueError, "missing .'bias'."),
                          ({"weight": np.zeros((3, 2)), "bias": np.zeros(2)}, ValueError, "weight"),
                          ({"weight": np.zeros((2, 3)), "bias": np.array([np.nan, 0])}, ValueError, "NaN"),
                          ([1, 2], TypeError, "mapping")]:
        with pytest.raises(exc, match=msg):
            m.load_state_dict(bad)
        for k in before:
            np.testing.assert_array_equal(m.params[k], before[k], err_msg=k)
    new = {"weight": np.arange(6.0).reshape(2, 3), "bias": np.array([1.0, -1.0])}
    live = m.params["weight"]
    m.load_state_dict(new)
    assert m.params["weight"] is live  # loaded in place: optimizers keep working
    np.testing.assert_array_equal(m.params["weight"], new["weight"])
    again = nlstm.Linear(**m.get_config())
    assert again.get_config() == m.get_config()


def test_dropout_training_only_with_its_gradient():
    rng = np.random.default_rng(0)
    d = nlstm.Dropout(0.25, seed=0)
    x = rng.standard_normal((40, 50))
    np.testing.assert_array_equal(d(x), x)  # inference: identity
    y = d.forward(x)
    dropped = y == 0
    assert 0.2 < dropped.mean() < 0.3
    np.testing.assert_allclose(y[~dropped], x[~dropped] / 0.75, rtol=1e-12, err_msg="kept")
    dy = rng.standard_normal(x.shape)
    dx = d.backward(dy)
    np.testing.assert_allclose(dx, np.where(dropped, 0, dy / 0.75), rtol=1e-12, err_msg="dx")
    d.reseed(5)
    a = d.forward(x)
    d.reseed(5)
    np.testing.assert_array_equal(a, d.forward(x))
    with pytest.raises(ValueError, match="p must be"):
        nlstm.Dropout(1.0)
    assert nlstm.Dropout(**d.get_config()).p == 0.25
