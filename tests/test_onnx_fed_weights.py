"""Weights fed at run time (W, R, B, P as graph inputs, as ONNX's own backend tests do):
results equal to the same weights as initializers and to ONNX Runtime, converted once per
distinct set of arrays, checked with errors naming the input, and safe across threads."""
import threading

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

import nlstm.onnx as nonnx  # noqa: E402
from onnx_helpers import TOL32, ort_run, seed_of  # noqa: E402

G = {"LSTM": 4, "GRU": 3, "RNN": 1}
T, B, I, H = 5, 3, 4, 3


def fed_model(op, D=1, peep=False, b_type=TensorProto.FLOAT, declare=True, **attrs):
    """One node whose W, R, B (and P) are graph inputs; X, sequence_lens, initial_h too."""
    f = TensorProto.FLOAT
    g = G[op]
    shapes = {"W": [D, g * H, I], "R": [D, g * H, H], "B": [D, 2 * g * H], "P": [D, 3 * H]}
    names = ["X", "W", "R", "B", "seq", "h0"]
    if peep:
        names += ["", "P"]
    vi = helper.make_tensor_value_info
    ins = [vi("X", f, ["T", "B", I]), vi("seq", TensorProto.INT32, ["B"]), vi("h0", f, [D, "B", H])]
    for n in ("W", "R", "B", "P"):
        if n in names:
            ins.append(vi(n, b_type if n == "B" else f, shapes[n] if declare else None))
    outs = ["Y", "Y_h"]
    node = helper.make_node(op, names, outs, name="rnn", hidden_size=H,
                            direction="bidirectional" if D == 2 else "forward", **attrs)
    graph = helper.make_graph([node], "g", ins, [vi(o, f, None) for o in outs])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def weights(op, rng, D=1, peep=False):
    u = lambda *s: rng.uniform(-0.6, 0.6, s).astype(np.float32)
    g = G[op]
    w = {"W": u(D, g * H, I), "R": u(D, g * H, H), "B": u(D, 2 * g * H)}
    if peep:
        w["P"] = u(D, 3 * H)
    return w


def data(rng, D=1):
    return {"X": rng.standard_normal((T, B, I)).astype(np.float32),
            "seq": np.array([5, 3, 1], np.int32),
            "h0": rng.uniform(-0.5, 0.5, (D, B, H)).astype(np.float32)}


@pytest.mark.parametrize("op,D,peep,attrs", [
    ("LSTM", 1, True, {}), ("LSTM", 2, False, dict(clip=1.0)), ("GRU", 2, False, {}),
    ("GRU", 1, False, dict(linear_before_reset=1, activations=["HardSigmoid", "Softsign"])),
    ("RNN", 2, False, dict(activations=["Relu", "Tanh"])),
], ids=["lstm_peep", "lstm_bi_clip", "gru_bi", "gru_acts", "rnn_bi"])
def test_fed_weights_match_onnxruntime(op, D, peep, attrs):
    rng = np.random.default_rng(seed_of(op, D, peep))
    model = fed_model(op, D, peep, **attrs)
    m = nonnx.load(model)
    assert {"W", "R", "B"} <= {a.name for a in m.get_inputs()}
    assert m.layers["rnn"] is None, "nothing converted before the first run"
    for _ in range(2):  # new weights: a new conversion each time
        feeds = {**data(rng, D), **weights(op, rng, D, peep)}
        want = ort_run(model, feeds)
        got = m.run(None, feeds)
        for name, g, w in zip(("Y", "Y_h"), got, want):
            np.testing.assert_allclose(g, w, err_msg=f"{op}: {name}", **TOL32)


def test_same_weights_convert_once_and_changes_are_seen():
    rng = np.random.default_rng(1)
    model = fed_model("LSTM", 1, True)
    m = nonnx.load(model)
    w = weights("LSTM", rng, peep=True)
    feeds = {**data(rng), **w}
    y1 = m.run(["Y"], feeds)[0]
    layer = m.layers["rnn"]
    assert m.run(["Y"], feeds)[0].tolist() == y1.tolist()
    assert m.layers["rnn"] is layer, "the same arrays: no new conversion"
    copies = {k: v.copy() for k, v in w.items()}
    m.run(["Y"], {**feeds, **copies})
    assert m.layers["rnn"] is layer, "equal contents in new arrays: no new conversion"
    w["R"][0, 0, 0] += 0.5  # the same array object, changed in place
    y2 = m.run(["Y"], feeds)[0]
    assert m.layers["rnn"] is not layer, "changed contents: converted again"
    np.testing.assert_allclose(y2, ort_run(model, feeds)[0], **TOL32)
    assert np.abs(y2 - y1).max() > 1e-4
    m.run(["Y"], {**feeds, **copies})  # back to the first weights: still cached
    assert m.layers["rnn"] is layer


@pytest.mark.parametrize("bad,err,match", [
    (dict(W=np.zeros((1, 4 * H, I + 1), np.float32)), ValueError, r"input 'W' must have shape"),
    (dict(R=np.zeros((1, 4 * H, H), np.int32)), TypeError, "input 'R' must have dtype float32"),
], ids=["W_shape_declared", "R_int"])
def test_fed_weight_errors_name_the_input(bad, err, match):
    rng = np.random.default_rng(2)
    m = nonnx.load(fed_model("LSTM"))
    feeds = {**data(rng), **weights("LSTM", rng), **bad}
    with pytest.raises(err, match=match):
        m.run(None, feeds)


@pytest.mark.parametrize("slot,shape,match", [
    ("W", (1, 4 * H, I + 1), r"W has shape \(1, 12, 5\) but the node's input has 4 features"),
    ("R", (1, 4 * H, H + 1), r"R has shape \(1, 12, 4\) but direction='forward' and hidden_size=3"),
    ("B", (2, 8 * H), r"B has shape \(2, 24\)"),
], ids=["W", "R", "B"])
def test_undeclared_fed_weights_are_checked_at_run(slot, shape, match):
    """Inputs declared without a shape: the node checks each against its attributes."""
    rng = np.random.default_rng(3)
    m = nonnx.load(fed_model("LSTM", declare=False))
    feeds = {**data(rng), **weights("LSTM", rng)}
    feeds[slot] = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=match):
        m.run(None, feeds)


def test_fed_weight_dtype_must_match_W():
    rng = np.random.default_rng(4)
    m = nonnx.load(fed_model("GRU", b_type=TensorProto.DOUBLE))
    feeds = {**data(rng), **weights("GRU", rng)}
    feeds["B"] = feeds["B"].astype(np.float64)
    with pytest.raises(ValueError, match="GRU node 'rnn': weights: B has dtype float64 but W has float32"):
        m.run(None, feeds)


def test_threads_with_different_weights():
    """Runs with different weights use different layers: threads running at once each get
    their own weights' result."""
    rng = np.random.default_rng(5)
    model = fed_model("GRU", 2)
    m = nonnx.load(model)
    sets = [{**data(rng, 2), **weights("GRU", rng, 2)} for _ in range(2)]
    want = [ort_run(model, f)[0] for f in sets]
    errors = []

    def work(i):
        try:
            for _ in range(15):
                np.testing.assert_allclose(m.run(["Y"], sets[i])[0], want[i], **TOL32)
        except Exception as e:  # reported below: pytest does not see a thread's failure
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
