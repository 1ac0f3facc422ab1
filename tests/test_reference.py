"""The oracle itself and nlstm's float64 gradients, against central finite differences."""
import numpy as np
import pytest

import reference as R
from cases import ALL_KINDS, KINDS
from gradcheck import numeric_grad


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("L,bi", [(1, False), (2, True)])
def test_reference_gradients_match_finite_differences(kind, L, bi):
    rng = np.random.default_rng(7)
    T, B, I, H = 4, 3, 3, 2
    D = 2 if bi else 1
    cls, extra, make_cell = KINDS[kind]
    cell = make_cell()
    params = cls(I, H, num_layers=L, bidirectional=bi, dtype=np.float64, seed=1, **extra).state_dict()
    for k in params:  # non-zero biases everywhere, so a bias counted twice would show
        params[k] = rng.uniform(-0.8, 0.8, params[k].shape)
    x = rng.standard_normal((T, B, I))
    init = [rng.standard_normal((L * D, B, H)) for _ in range(cell.n_states)]
    lengths = np.array([4, 0, 2])
    wy = rng.standard_normal((T, B, D * H))
    wf = [rng.standard_normal((L * D, B, H)) for _ in range(cell.n_states)]

    def loss():
        y, final, _ = R.forward(cell, params, x, init, lengths, L, bi)
        return (y * wy).sum() + sum((f * w).sum() for f, w in zip(final, wf))

    y, final, cache = R.forward(cell, params, x, init, lengths, L, bi)
    dx, dinit, grads = R.backward(cache, wy, wf)
    checks = [("x", x, dx)] + [(f"init{i}", s, g) for i, (s, g) in enumerate(zip(init, dinit))] \
        + [(k, params[k], grads[k]) for k in params]
    for name, arr, analytic in checks:
        np.testing.assert_allclose(analytic, numeric_grad(loss, arr), rtol=1e-6, atol=1e-8, err_msg=name)
    # Padding really is zero and row 1 (length 0) keeps its initial state.
    assert np.all(y[2:, 2] == 0) and np.all(y[:, 1] == 0)
    np.testing.assert_array_equal(final[0][:, 1], init[0][:, 1])


@pytest.mark.parametrize("kind", list(ALL_KINDS))
def test_nlstm_float64_gradients_match_finite_differences(kind):
    rng = np.random.default_rng(8)
    T, B, I, H, L = 5, 2, 3, 3, 2
    cls, extra, _ = ALL_KINDS[kind]
    if extra.get("proj_size") == -1:
        extra = dict(extra, proj_size=2)
    m = cls(I, H, num_layers=L, bidirectional=True, batch_first=True, dtype=np.float64, seed=2, **extra)
    n = len(m._state_labels)
    O = m._out_size
    x = rng.standard_normal((B, T, I))
    init = [rng.standard_normal((2 * L, B, s)) for s in m._state_sizes()]
    pack = lambda a: a[0] if n == 1 else tuple(a)
    unpack = lambda s: [s] if n == 1 else list(s)
    lengths = np.array([3, 5])
    wy = rng.standard_normal((B, T, 2 * O))
    wf = [rng.standard_normal((2 * L, B, s)) for s in m._state_sizes()]
    if kind == "rnn_relu":  # keep pre-activations away from relu's kink
        for k in m.params:
            m.params[k] += 0.3 * np.sign(m.params[k])
    if "clip" in extra:  # some gates clipped, and none within reach of the clip's kink
        for k in m.params:
            m.params[k] *= 3
        m.forward(x, pack(init), lengths)
        active = np.arange(T)[:, None] < lengths[None, :]  # (T, B) steps that ran
        # the saved pre-activations: the LSTM's and GRU's "pre" buffers, the RNN's gates
        saved = [e["pre"] if "pre" in e else g for rows, grows in zip(m._ws.extra, m._ws.gates)
                 for e, g in zip(rows, grows)]
        pre = np.concatenate([p[active].ravel() for p in saved])
        assert (np.abs(pre) > m.clip).mean() > 0.05
        assert np.abs(np.abs(pre) - m.clip).min() > 1e-4

    def loss():
        y, final = m(x, pack(init), lengths)
        return (y * wy).sum() + sum((f * w).sum() for f, w in zip(unpack(final), wf))

    m.forward(x, pack(init), lengths)
    dx, dinit = m.backward(wy, *wf)
    checks = [("x", x, dx)] + [(f"init{i}", s, g) for i, (s, g) in enumerate(zip(init, unpack(dinit)))] \
        + [(k, m.params[k], m.grads[k]) for k in m.params]
    for name, arr, analytic in checks:
        np.testing.assert_allclose(analytic, numeric_grad(loss, arr), rtol=1e-6, atol=1e-8, err_msg=name)
