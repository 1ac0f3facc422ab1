"""nlstm.from_keras against a float64 reference written from Keras's documented equations
and gate orders (no TensorFlow needed): LSTM (i, f, c, o), GRU (z, r, h) with reset_after
True and False, SimpleRNN; Bidirectional, stacked layers, masks (lengths), initial states.

Keras computes x·kernel + h·recurrent_kernel + bias, kernel (I, G·H), recurrent_kernel
(H, G·H), gate blocks in columns; h' = z⊙h + (1 − z)⊙h̃ for the GRU.
"""
import numpy as np
import pytest

import nlstm
from onnx_helpers import seed_of

T, B, I, H = 6, 3, 4, 5
G = {"lstm": 4, "gru": 3, "simple_rnn": 1}
TOL = dict(rtol=2e-4, atol=2e-5)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def keras_weights(kind, rng, i=I, bias=True, reset_after=True):
    u = lambda *s: rng.uniform(-0.6, 0.6, s)
    w = [u(i, G[kind] * H), u(H, G[kind] * H)]
    if bias:
        w.append(u(2, 3 * H) if kind == "gru" and reset_after else u(G[kind] * H))
    return w


def keras_cell(kind, w, x, state, reset_after, activation):
    """One Keras step for one row: x (I,), state list; returns (output, new state)."""
    kernel, rec = w[0], w[1]
    if kind == "lstm":
        h, c = state
        z = x @ kernel + h @ rec + (w[2] if len(w) == 3 else 0)
        i, f, cc, o = np.split(z, 4)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(cc)
        h = sigmoid(o) * np.tanh(c)
        return h, [h, c]
    if kind == "gru":
        (h,) = state
        if len(w) == 3 and reset_after:
            b_in, b_rec = w[2][0], w[2][1]
        else:
            b_in, b_rec = (w[2] if len(w) == 3 else 0), 0
        xz, xr, xh = np.split(x @ kernel + b_in, 3)
        rz, rr, rh = np.split(rec, 3, axis=1)
        if reset_after:
            hz, hr, hh = np.split(h @ rec + b_rec, 3)
            z, r = sigmoid(xz + hz), sigmoid(xr + hr)
            cand = np.tanh(xh + r * hh)
        else:
            z, r = sigmoid(xz + h @ rz), sigmoid(xr + h @ rr)
            cand = np.tanh(xh + (r * h) @ rh)
        h = z * h + (1 - z) * cand
        return h, [h]
    (h,) = state
    pre = x @ kernel + h @ rec + (w[2] if len(w) == 3 else 0)
    h = np.maximum(pre, 0) if activation == "relu" else np.tanh(pre)
    return h, [h]


def keras_layer(kind, w, x, init, lengths, reset_after, activation, backwards=False):
    """A masked Keras layer over batch-first x (B, T, I): outputs at valid steps (zero
    elsewhere) and the final state; go_backwards reverses each row's valid steps, and the
    Bidirectional wrapper flips the outputs back into time order."""
    Bn, Tn = x.shape[:2]
    y = np.zeros((Bn, Tn, H))
    final = [np.zeros((Bn, H)) for _ in init]
    for b in range(Bn):
        state = [s[b] for s in init]
        steps = range(lengths[b])
        for t in (reversed(steps) if backwards else steps):
            y[b, t], state = keras_cell(kind, w, x[b, t], state, reset_after, activation)
        for f, s in zip(final, state):
            f[b] = s
    return y, final


def keras_model(kind, layers, x, init, lengths, reset_after=True, activation="tanh", bi=False):
    """Stacked (optionally Bidirectional) layers; init: list over states of (L·D, B, H)."""
    out = x
    finals = [[] for _ in init]
    D = 2 if bi else 1
    for k, lw in enumerate(layers):
        halves = [lw[: len(lw) // 2], lw[len(lw) // 2:]] if bi else [lw]
        ys = []
        for d, w in enumerate(halves):
            y, f = keras_layer(kind, w, out, [s[k * D + d] for s in init], lengths, reset_after,
                               activation, backwards=d == 1)
            ys.append(y)
            for acc, a in zip(finals, f):
                acc.append(a)
        out = np.concatenate(ys, axis=-1)
    return out, [np.stack(f) for f in finals]


def run_case(kind, rng, L=1, bi=False, bias=True, reset_after=True, activation="tanh",
             as_mapping=False):
    D = 2 if bi else 1
    layers = []
    for k in range(L):
        i = I if k == 0 else D * H
        w = [a for _ in range(D) for a in keras_weights(kind, rng, i, bias, reset_after)]
        layers.append(w)
    weights = layers[0] if L == 1 else layers
    if as_mapping:
        weights = {f"model_weights/{kind}/{kind}_cell/{n}:0": a
                   for n, a in zip(("kernel", "recurrent_kernel", "bias"), layers[0])}
    kw = dict(bidirectional=bi, activation=activation)
    if kind == "gru" and not bias:
        kw["reset_after"] = reset_after
    layer = nlstm.from_keras(weights, kind, **kw)
    x = rng.standard_normal((B, T, I))
    lengths = np.array([T, 2, 4])
    n_states = 2 if kind == "lstm" else 1
    init = [rng.standard_normal((L * D, B, H)) for _ in range(n_states)]
    want_y, want_final = keras_model(kind, layers, x, init, lengths, reset_after, activation, bi)
    st = init[0] if n_states == 1 else tuple(init)
    y, final = layer(x.astype(np.float32), st, lengths)
    final = list(final) if isinstance(final, tuple) else [final]
    what = f"{kind} L={L} bi={bi} bias={bias} reset_after={reset_after} {activation}"
    np.testing.assert_allclose(y, want_y, err_msg=f"{what}: outputs", **TOL)
    for name, g, w in zip(("h_n", "c_n"), final, want_final):
        np.testing.assert_allclose(g, w, err_msg=f"{what}: {name}", **TOL)
    return layer


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("bi", [False, True], ids=["uni", "bidirectional"])
@pytest.mark.parametrize("kind,reset_after,activation", [
    ("lstm", True, "tanh"), ("gru", True, "tanh"), ("gru", False, "tanh"),
    ("simple_rnn", True, "tanh"), ("simple_rnn", True, "relu")],
    ids=["lstm", "gru_reset_after", "gru_reset_before", "simple_rnn", "simple_rnn_relu"])
def test_keras_layer_vs_reference(kind, reset_after, activation, bi, bias):
    rng = np.random.default_rng(seed_of(kind, reset_after, activation, bi, bias))
    layer = run_case(kind, rng, bi=bi, bias=bias, reset_after=reset_after, activation=activation)
    assert layer.batch_first and layer.bias == bias
    if kind == "gru":
        assert layer.linear_before_reset == reset_after


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn"])
def test_keras_stacked_layers(kind):
    rng = np.random.default_rng(seed_of(kind, "stack"))
    layer = run_case(kind, rng, L=3, bi=kind == "gru", reset_after=kind != "gru")
    assert layer.num_layers == 3


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_keras_weights_by_name(kind):
    """HDF5-style names (".../kernel:0"), as read with h5py."""
    run_case(kind, np.random.default_rng(1), as_mapping=True)


def test_keras_gate_order_matters():
    """Swapping Keras's z and r blocks changes the answer: the reference can tell orders apart."""
    rng = np.random.default_rng(2)
    w = keras_weights("gru", rng)
    x = rng.standard_normal((1, T, I))
    a = nlstm.from_keras(w, "gru")(x.astype(np.float32))[0]
    swapped = [np.concatenate([m[..., H:2 * H], m[..., :H], m[..., 2 * H:]], axis=-1) for m in w]
    b = nlstm.from_keras(swapped, "gru")(x.astype(np.float32))[0]
    assert np.abs(a - b).max() > 1e-3


def test_keras_errors():
    rng = np.random.default_rng(0)
    w = keras_weights("lstm", rng)
    with pytest.raises(ValueError, match="swish"):
        nlstm.from_keras(w, "lstm", recurrent_activation="swish")
    with pytest.raises(ValueError, match="keras_version"):
        nlstm.from_keras(w, "lstm", keras_version=1)
    with pytest.raises(ValueError, match="selu"):
        nlstm.from_keras(w, "lstm", activation="selu")
    with pytest.raises(ValueError, match="kind"):
        nlstm.from_keras(w, "cudnn_lstm")
    with pytest.raises(ValueError, match="kernel must be"):
        nlstm.from_keras([w[0][:, :-1], w[1], w[2]], "lstm")
    with pytest.raises(ValueError, match="recurrent_kernel must be"):
        nlstm.from_keras(w, "gru")
    g = keras_weights("gru", rng, reset_after=True)
    with pytest.raises(ValueError, match="reset_after=False"):
        nlstm.from_keras(g, "gru", reset_after=False)
    with pytest.raises(ValueError, match="bias must be"):
        nlstm.from_keras([w[0], w[1], w[2][:-1]], "lstm")
    with pytest.raises(ValueError, match="Bidirectional"):
        nlstm.from_keras(w, "lstm", bidirectional=True)
    with pytest.raises(ValueError, match="kernel"):
        nlstm.from_keras({"bias": w[2]}, "lstm")


# Keras's documented hard_sigmoid: Keras 3 (keras.activations.hard_sigmoid, "(x/6) + 0.5 if
# -3 < x < 3", i.e. relu6(x + 3)/6); Keras 2 (tf.keras up to 2.15) "0.2 * x + 0.5 if
# -2.5 <= x <= 2.5", 0 and 1 outside.
KERAS_HARD_SIGMOID = {3: lambda z: np.minimum(np.maximum(z + 3, 0), 6) / 6,
                      2: lambda z: np.clip(0.2 * z + 0.5, 0, 1)}


@pytest.mark.parametrize("version", [3, 2])
def test_keras_lstm_hard_sigmoid(version):
    """A Keras LSTM with recurrent_activation='hard_sigmoid' (tf2onnx's HardSigmoid), weights
    as arrays, against Keras's equations with the formula that Keras version documents;
    inputs big enough that the gates saturate on both sides."""
    rng = np.random.default_rng(seed_of("hard_sigmoid", version))
    w = keras_weights("lstm", rng)
    x = 5 * rng.standard_normal((B, T, I))
    hs = KERAS_HARD_SIGMOID[version]
    h, c = np.zeros((B, H)), np.zeros((B, H))
    ys = []
    for t in range(T):
        i, f, cc, o = np.split(x[:, t] @ w[0] + h @ w[1] + w[2], 4, axis=1)
        c = hs(f) * c + hs(i) * np.tanh(cc)
        h = hs(o) * np.tanh(c)
        ys.append(h)
    gates = np.concatenate([x[:, t] @ w[0] for t in range(T)])
    assert (np.abs(gates) > 3).mean() > 0.1, "some gates saturate"
    layer = nlstm.from_keras(w, "lstm", recurrent_activation="hard_sigmoid", keras_version=version)
    assert layer.activations == ["HardSigmoid", "Tanh", "Tanh"]
    y, (h_n, c_n) = layer(x.astype(np.float32))
    np.testing.assert_allclose(y, np.stack(ys, axis=1), err_msg="y", **TOL)
    np.testing.assert_allclose(h_n[0], h, err_msg="h_n", **TOL)
    np.testing.assert_allclose(c_n[0], c, err_msg="c_n", **TOL)
    other = nlstm.from_keras(w, "lstm", recurrent_activation="hard_sigmoid",
                             keras_version=5 - version)
    assert np.abs(other(x.astype(np.float32))[0] - y).max() > 1e-3, "the versions differ"
