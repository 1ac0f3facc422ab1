"""Every ONNX activation (with activation_alpha/beta, per direction) and clip, for LSTM, GRU
and RNN nodes: nlstm.onnx.load against ONNX Runtime on one-node models (forward), and the
ONNX Runtime result against the float64 oracle, so that both read the spec the same way.
Gradients of the same options: tests/test_vs_reference.py and tests/test_reference.py
(cases lstm_acts, lstm_clip_acts, gru_clip, gru_acts, rnn_clip, rnn_acts)."""
import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

import nlstm  # noqa: E402
import nlstm.onnx as nonnx  # noqa: E402
import reference as R  # noqa: E402
from nlstm.activations import DEFAULTS, NAMES  # noqa: E402
from onnx_helpers import TOL32, node_model, nlstm_params, onnx_y, ort_run, seed_of  # noqa: E402

N_ACTS = {"LSTM": 3, "GRU": 2, "RNN": 1}
G = {"LSTM": 4, "GRU": 3, "RNN": 1}
# Explicit parameters for every function that takes them: ONNX Runtime reads 0 for an
# absent Affine, ScaledTanh or ThresholdedRelu parameter, ONNX's operators 1 (see README).
BOUNDED = ("Sigmoid", "HardSigmoid", "Softsign", "ScaledTanh", "Tanh")
PARAMS = {"Affine": (0.7, 0.2), "LeakyRelu": (0.15, None), "ThresholdedRelu": (0.1, None),
          "ScaledTanh": (1.2, 0.8), "HardSigmoid": (0.25, 0.45), "Elu": (0.9, None)}


def attrs_for(names):
    """activations, activation_alpha, activation_beta for a list of names, and the oracle's
    [(name, alpha, beta)]."""
    alphas, betas, spec = [], [], []
    for n in names:
        a, b = PARAMS.get(n, (None, None))
        if a is not None:
            alphas.append(a)
        if b is not None:
            betas.append(b)
        spec.append((n, a or 0.0, b or 0.0))
    at = dict(activations=list(names))
    if alphas:
        at["activation_alpha"] = alphas
    if betas:
        at["activation_beta"] = betas
    return at, spec


@pytest.mark.parametrize("clip", [None, 0.9])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_activation_vs_onnxruntime(op, name, clip):
    """name in every slot of the forward direction; the reverse direction other (bounded)
    functions (so the lists differ per direction), with sequence_lens and initial state.
    Weights small enough that unbounded functions in every slot stay finite."""
    rng = np.random.default_rng(seed_of(op, name, clip))
    n, k = N_ACTS[op], NAMES.index(name)
    fwd = [name] * n
    rev = [BOUNDED[(k + j) % len(BOUNDED)] for j in range(n)]
    at, spec = attrs_for(fwd + rev)
    if clip is not None:
        at["clip"] = clip
    T, B, I, H = 5, 3, 4, 3
    u = lambda *s: rng.uniform(-0.5, 0.5, s).astype(np.float32)
    W, Rr, Bb = u(2, G[op] * H, I), u(2, G[op] * H, H), u(2, 2 * G[op] * H)
    extra = {"linear_before_reset": 1} if op == "GRU" and clip is None else {}
    model = node_model(onnx, op, W, Rr, Bb, seq=True, init_h=True, init_c=op == "LSTM",
                       direction="bidirectional", **at, **extra)
    feeds = {"X": rng.standard_normal((T, B, I)).astype(np.float32),
             "seq": np.array([5, 2, 4], np.int32), "h0": u(2, B, H)}
    if op == "LSTM":
        feeds["c0"] = u(2, B, H)
    want = ort_run(model, feeds)
    got = nonnx.load(model).run(None, feeds)
    for label, g, w in zip(("Y", "Y_h", "Y_c"), got, want):
        np.testing.assert_allclose(g, w, err_msg=f"{op} {fwd}/{rev} clip={clip}: {label}", **TOL32)
    # ONNX Runtime and the float64 oracle read the spec alike.
    params = {k: v.astype(np.float64) for k, v in nlstm_params(op, W, Rr, Bb).items()}
    acts = [spec[:n], spec[n:]]
    cell = {"LSTM": lambda: R.LSTMCell(clip=clip, acts=acts),
            "GRU": lambda: R.GRUCell(bool(extra), clip=clip, acts=acts),
            "RNN": lambda: R.RNNCell(clip=clip, acts=acts)}[op]()
    init = [feeds["h0"].astype(np.float64)] + ([feeds["c0"].astype(np.float64)] if op == "LSTM" else [])
    y, final, _ = R.forward(cell, params, feeds["X"].astype(np.float64), init,
                            feeds["seq"].astype(np.int64), 1, True)
    np.testing.assert_allclose(want[0], onnx_y(y, 2), err_msg=f"{op} {name}: ORT vs oracle",
                               **TOL32)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_onnx_default_parameters(op):
    """Functions given without activation_alpha/beta take ONNX's defaults (those of the ONNX
    operators of the same names); ONNX Runtime agrees for LeakyRelu, HardSigmoid and Elu."""
    rng = np.random.default_rng(seed_of("defaults", op))
    names = ["HardSigmoid", "Elu", "LeakyRelu"][: N_ACTS[op]]
    T, B, I, H = 4, 2, 3, 3
    u = lambda *s: rng.uniform(-0.6, 0.6, s).astype(np.float32)
    model = node_model(onnx, op, u(1, G[op] * H, I), u(1, G[op] * H, H), u(1, 2 * G[op] * H),
                       activations=names)
    feeds = {"X": (2 * rng.standard_normal((T, B, I))).astype(np.float32)}
    m = nonnx.load(model)
    assert m.layers["rnn"]._act_spec[0] == tuple(
        (n, DEFAULTS[n][0], DEFAULTS[n][1] or 0.0) for n in names)
    for g, w in zip(m.run(None, feeds), ort_run(model, feeds)):
        np.testing.assert_allclose(g, w, **TOL32)


@pytest.mark.parametrize("cls,acts", [
    (nlstm.LSTM, dict(activations=["HardSigmoid", "Tanh", "Softsign", "Sigmoid", "Elu", "Tanh"],
                      activation_alpha=[0.3, 0.7], activation_beta=[0.4], clip=2.0)),
    (nlstm.GRU, dict(activations=["LeakyRelu", "ScaledTanh"], activation_alpha=[0.2, 1.1],
                     activation_beta=[0.9], clip=1.5)),
    (nlstm.RNN, dict(activations=["Softplus", "ThresholdedRelu"], activation_alpha=[0.05])),
], ids=["LSTM", "GRU", "RNN"])
def test_layer_options_export_to_onnxruntime(cls, acts, tmp_path):
    """A layer with activations (per direction), alphas, betas and clip: nlstm.onnx.save
    writes them, ONNX Runtime computes what the layer does, and load reads them back."""
    rng = np.random.default_rng(seed_of(cls.__name__, "export"))
    layer = cls(3, 4, bidirectional=True, seed=1, **acts)
    x = rng.standard_normal((6, 2, 3)).astype(np.float32)
    y, _ = layer(x)
    path = tmp_path / "m.onnx"
    nonnx.save(layer, path, lengths=False)
    np.testing.assert_allclose(ort_run(str(path), {"input": x})[0], y, **TOL32)
    back = nonnx.load(path)
    np.testing.assert_allclose(back.run(["output"], {"input": x})[0], y, rtol=1e-6, atol=1e-7)
    got = back.layers[next(iter(back.layers))]._act_spec
    assert [[r[0] for r in d] for d in got] == [[r[0] for r in d] for d in layer._act_spec]
    np.testing.assert_allclose([[r[1:] for r in d] for d in got],
                               [[r[1:] for r in d] for d in layer._act_spec], rtol=1e-7)


def test_layer_option_errors():
    with pytest.raises(ValueError, match="unknown activation 'Gelu'"):
        nlstm.LSTM(2, 3, activations=["Gelu", "Tanh", "Tanh"])
    with pytest.raises(ValueError, match="GRU takes 2"):
        nlstm.GRU(2, 3, activations=["Sigmoid"])
    with pytest.raises(ValueError, match="alphas"):
        nlstm.RNN(2, 3, activations=["Tanh"], activation_alpha=[1.0])
    with pytest.raises(ValueError, match="clip"):
        nlstm.GRU(2, 3, clip=0)
    with pytest.raises(ValueError, match="not both"):
        nlstm.RNN(2, 3, nonlinearity="relu", activations=["Relu"])
    with pytest.raises(TypeError, match="sequence of names"):
        nlstm.RNN(2, 3, activations="Relu")
    # The default functions by name are the default (fast) layer.
    assert nlstm.LSTM(2, 3, activations=["sigmoid", "TANH", "Tanh"])._act_spec is None
    assert nlstm.RNN(2, 3, activations=["Relu"])._relu


def test_layer_options_save_load_and_torch(tmp_path):
    """The options survive nlstm's own file format, and to_torch refuses them (PyTorch has
    no such modules)."""
    import nlstm.io

    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    for m in (nlstm.GRU(3, 4, bidirectional=True, clip=1.5, seed=1,
                        activations=["HardSigmoid", "Softsign", "Sigmoid", "Elu"],
                        activation_alpha=[0.3, 0.7], activation_beta=[0.4]),
              nlstm.RNN(3, 4, clip=0.5, seed=2),
              nlstm.LSTM(3, 4, activations=["Sigmoid", "Affine", "Tanh"], activation_alpha=[2.0],
                         activation_beta=[0.1], seed=3)):
        path = nlstm.io.save(m, tmp_path / f"{m._name}.nlstm")
        back = nlstm.io.load(path)
        assert back._act_spec == m._act_spec and back.clip == m.clip
        np.testing.assert_array_equal(back(x)[0], m(x)[0])
        with pytest.raises(ValueError, match="no PyTorch equivalent"):
            nlstm.to_torch(m)
