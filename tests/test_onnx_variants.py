"""Issue 5's ONNX-only variants of nlstm's layers, forward, against ONNX Runtime running
one-node models built with onnx.helper, and against onnx.reference.ReferenceEvaluator
where it applies (it ignores sequence_lens, clip, input_forget and activations).

The layers are built directly (nlstm.LSTM(peephole=...), nlstm.GRU(linear_before_reset=
False)); the ONNX weights are written by tests/onnx_helpers.py, which moves gate blocks by
name, independently of nlstm.onnx.
"""
import numpy as np
import pytest

import nlstm
from onnx_helpers import (TOL32, node_model, onnx_weights, onnx_y, oracle, ort_run, randomize,
                          ref_eval, seed_of)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

T, B, I, H = 5, 3, 4, 6
LSTM_VARIANTS = {
    "peephole": dict(peephole=True),
    "clip": dict(clip=0.4),
    "input_forget": dict(input_forget=True),
    "peephole_clip_input_forget": dict(peephole=True, clip=0.9, input_forget=True),
}


def onnx_attrs(layer):
    a = {}
    if layer._name == "LSTM":
        if layer.clip is not None:
            a["clip"] = layer.clip
        if layer.input_forget:
            a["input_forget"] = 1
    if layer._name == "GRU":
        a["linear_before_reset"] = int(layer.linear_before_reset)
    return a


def inputs(rng, lengths, with_state, n_states, D=1):
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    feeds, state = {"X": x}, None
    if lengths:
        feeds["seq"] = np.array([T, 2, 1], np.int32)
    if with_state:
        state = [rng.standard_normal((D, B, H)).astype(np.float32) for _ in range(n_states)]
        feeds["h0"] = state[0]
        if n_states == 2:
            feeds["c0"] = state[1]
    return x, feeds, state


def check(got, want, what):
    for name, g, w in zip(("Y", "Y_h", "Y_c"), got, want):
        np.testing.assert_allclose(g, w, err_msg=f"{what}: {name}", **TOL32)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("variant", list(LSTM_VARIANTS))
def test_lstm_variant_vs_onnxruntime(variant, direction, lengths, with_state):
    rng = np.random.default_rng(seed_of((variant, direction, lengths, with_state)))
    bi = direction == "bidirectional"
    layer = randomize(nlstm.LSTM(I, H, bidirectional=bi, seed=0, **LSTM_VARIANTS[variant]), rng)
    D = layer.num_directions
    x, feeds, state = inputs(rng, lengths, with_state, 2, D)
    y, (h, c) = layer(x, None if state is None else tuple(state), feeds.get("seq"))
    W, Rr, Bb, P = onnx_weights(layer)
    model = node_model(onnx, "LSTM", W, Rr, Bb, P, seq=lengths, init_h=with_state,
                       init_c=with_state, direction=direction, **onnx_attrs(layer))
    check([onnx_y(y, D), h, c], ort_run(model, feeds), f"LSTM {variant} {direction}")


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("variant", ["peephole", "peephole_clip_input_forget"])
def test_lstm_variant_reverse_direction_vs_onnxruntime(variant, lengths):
    """The reverse half of a bidirectional layer is ONNX's direction="reverse" node (which
    starts at each row's own end)."""
    rng = np.random.default_rng(7)
    layer = randomize(nlstm.LSTM(I, H, bidirectional=True, seed=0, **LSTM_VARIANTS[variant]), rng)
    x, feeds, _ = inputs(rng, lengths, False, 2)
    y, (h, c) = layer(x, None, feeds.get("seq"))
    W, Rr, Bb, P = onnx_weights(layer)
    model = node_model(onnx, "LSTM", W[1:], Rr[1:], Bb[1:], P[1:], seq=lengths,
                       direction="reverse", **onnx_attrs(layer))
    check([onnx_y(y[..., H:], 1), h[1:], c[1:]], ort_run(model, feeds), f"LSTM {variant} reverse")


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("lbr", [False, True], ids=["lbr0", "lbr1"])
def test_gru_linear_before_reset_vs_onnxruntime(lbr, direction, lengths, with_state):
    rng = np.random.default_rng(seed_of((lbr, direction, lengths, with_state)))
    layer = randomize(nlstm.GRU(I, H, bidirectional=direction == "bidirectional", seed=0,
                                linear_before_reset=lbr), rng)
    D = layer.num_directions
    x, feeds, state = inputs(rng, lengths, with_state, 1, D)
    y, h = layer(x, None if state is None else state[0], feeds.get("seq"))
    W, Rr, Bb, _ = onnx_weights(layer)
    model = node_model(onnx, "GRU", W, Rr, Bb, seq=lengths, init_h=with_state, direction=direction,
                       **onnx_attrs(layer))
    check([onnx_y(y, D), h], ort_run(model, feeds), f"GRU lbr={int(lbr)} {direction}")


def test_gru_linear_before_reset_changes_the_answer():
    """The two formulas differ: an importer that confused them would fail the tests above."""
    rng = np.random.default_rng(3)
    layer = randomize(nlstm.GRU(I, H, seed=0, linear_before_reset=False), rng)
    x, feeds, _ = inputs(rng, False, False, 1)
    W, Rr, Bb, _ = onnx_weights(layer)
    y0 = ort_run(node_model(onnx, "GRU", W, Rr, Bb, linear_before_reset=0), feeds)[0]
    y1 = ort_run(node_model(onnx, "GRU", W, Rr, Bb, linear_before_reset=1), feeds)[0]
    assert np.abs(y0 - y1).max() > 1e-3, "linear_before_reset=0 and 1 gave the same Y"
    np.testing.assert_allclose(onnx_y(layer(x)[0], 1), y0, err_msg="Y (lbr=0)", **TOL32)


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("op", ["LSTM_peephole", "GRU_lbr0", "GRU_lbr1"])
def test_variants_vs_reference_evaluator(op, direction, layout):
    """Where the reference evaluator applies: full-length sequences, no clip or input_forget,
    default activations; it also covers layout=1, which ONNX Runtime rejects."""
    rng = np.random.default_rng(seed_of((op, direction, layout)))
    bi = direction != "forward"
    if op == "LSTM_peephole":
        layer = nlstm.LSTM(I, H, bidirectional=bi, seed=0, peephole=True)
    else:
        layer = nlstm.GRU(I, H, bidirectional=bi, seed=0, linear_before_reset=op == "GRU_lbr1")
    randomize(layer, rng)
    kind = layer._name
    n_states = 2 if kind == "LSTM" else 1
    D = layer.num_directions
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    state = [rng.standard_normal((D, B, H)).astype(np.float32) for _ in range(n_states)]
    y, final = layer(x, tuple(state) if n_states == 2 else state[0])
    final = list(final) if n_states == 2 else [final]
    W, Rr, Bb, P = onnx_weights(layer)
    if direction == "reverse":  # the reverse half, as a one-direction node
        W, Rr, Bb = W[1:], Rr[1:], Bb[1:]
        P = None if P is None else P[1:]
        y, final, state = y[..., H:], [f[1:] for f in final], [s[1:] for s in state]
        D = 1
    attrs = onnx_attrs(layer)
    model = node_model(onnx, kind, W, Rr, Bb, P, layout=layout, init_h=True, init_c=n_states == 2,
                       direction=direction, **attrs)
    sw = (lambda a: a) if layout == 0 else (lambda a: np.ascontiguousarray(a.transpose(1, 0, 2)))
    feeds = {"X": sw(x), "h0": sw(state[0])}
    if n_states == 2:
        feeds["c0"] = sw(state[1])
    want = [onnx_y(y, D, layout)] + [sw(f) for f in final]
    check(want, ref_eval(model, feeds), f"{op} {direction} layout={layout} vs ReferenceEvaluator")


@pytest.mark.parametrize("variant", list(LSTM_VARIANTS))
def test_lstm_variant_zero_lengths_vs_oracle(variant):
    """Length 0 rows (which ONNX Runtime may not accept) against the float64 oracle: zero
    outputs, final state = initial state."""
    rng = np.random.default_rng(11)
    layer = randomize(nlstm.LSTM(I, H, bidirectional=True, seed=0, dtype=np.float64,
                                 **LSTM_VARIANTS[variant]), rng)
    x = rng.standard_normal((T, B, I))
    state = [rng.standard_normal((2, B, H)) for _ in range(2)]
    lengths = np.array([0, T, 2])
    y, (h, c) = layer(x, tuple(state), lengths)
    want_y, (want_h, want_c) = oracle(layer, x, state, lengths)
    for name, g, w in (("y", y, want_y), ("h_n", h, want_h), ("c_n", c, want_c)):
        np.testing.assert_allclose(g, w, err_msg=f"{variant}: {name}", rtol=1e-9, atol=1e-11)
    np.testing.assert_array_equal(y[:, 0], 0, err_msg="y of the length-0 row")
    np.testing.assert_array_equal(h[:, 0], state[0][:, 0], err_msg="h_n of the length-0 row")
