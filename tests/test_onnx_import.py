"""nlstm.onnx.load against ONNX Runtime (and, where ONNX Runtime refuses a case or gives no
answer to compare, the reference evaluator or the float64 oracle), for every attribute of
ONNX's LSTM, GRU and RNN nodes, glue graphs, streaming, and bad files."""
import numpy as np
import pytest

import nlstm
import reference as R
from onnx_helpers import (TOL32, node_model, nlstm_params, ort_run, ref_eval, seed_of)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import nlstm.onnx as nonnx  # noqa: E402

T, B, I, H = 5, 3, 4, 6
G = {"LSTM": 4, "GRU": 3, "RNN": 1}
DIRS = ["forward", "reverse", "bidirectional"]
LENGTHS = np.array([T, 2, 1], np.int32)  # >= 1: ONNX Runtime's Y_h differs from nlstm at 0


def weights(op, D, rng, bias=True, peephole=False, dtype=np.float32, h=H, i=I):
    u = lambda *s: rng.uniform(-0.6, 0.6, s).astype(dtype)
    return (u(D, G[op] * h, i), u(D, G[op] * h, h), u(D, 2 * G[op] * h) if bias else None,
            u(D, 3 * h) if peephole else None)


def feeds_for(op, D, rng, seq, init, layout=0, only_h=False):
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    f = {"X": x if layout == 0 else np.ascontiguousarray(x.transpose(1, 0, 2))}
    if seq:
        f["seq"] = LENGTHS
    if init:
        for name in (["h0"] if op != "LSTM" or only_h else ["h0", "c0"]):
            s = rng.standard_normal((D, B, H) if layout == 0 else (B, D, H)).astype(np.float32)
            f[name] = s
    return f


def compare(got, want, what, tol=TOL32):
    assert len(got) == len(want), f"{what}: {len(got)} outputs, expected {len(want)}"
    for name, g, w in zip(("Y", "Y_h", "Y_c"), got, want):
        assert g.shape == w.shape, f"{what}: {name} has shape {g.shape}, expected {w.shape}"
        np.testing.assert_allclose(g, w, err_msg=f"{what}: {name}", **tol)


# ---- every attribute against ONNX Runtime ------------------------------------------------------
VARIANTS = {
    "default": ("*", {}),
    "P": ("LSTM", dict(peephole=True)),
    "clip": ("LSTM", dict(clip=0.5)),
    "input_forget": ("LSTM", dict(input_forget=1)),
    "P_clip_input_forget": ("LSTM", dict(peephole=True, clip=0.8, input_forget=1)),
    "only_initial_h": ("LSTM", dict(only_h=True)),
    "no_B": ("*", dict(bias=False)),
    "explicit_activations": ("*", dict(activations={"LSTM": ["Sigmoid", "Tanh", "Tanh"],
                                                    "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]})),
    "linear_before_reset": ("GRU", dict(linear_before_reset=1)),
    "relu": ("RNN", dict(activations={"RNN": ["Relu"]})),
}
CASES = [(op, v, d) for v, (ops, _) in VARIANTS.items() for op in G if ops in ("*", op) for d in DIRS]


def build(op, variant, direction, rng, layout=0, seq=True, init=True):
    kw = dict(VARIANTS[variant][1])
    D = 2 if direction == "bidirectional" else 1
    W, Rr, Bb, P = weights(op, D, rng, bias=kw.pop("bias", True), peephole=kw.pop("peephole", False))
    only_h = kw.pop("only_h", False)
    if "activations" in kw:
        kw["activations"] = kw["activations"][op] * D
    model = node_model(onnx, op, W, Rr, Bb, P, layout=layout, seq=seq, init_h=init,
                       init_c=init and op == "LSTM" and not only_h, direction=direction, **kw)
    return model, feeds_for(op, D, rng, seq, init, layout, only_h), (W, Rr, Bb, P)


@pytest.mark.parametrize("op,variant,direction", CASES)
def test_node_vs_onnxruntime(op, variant, direction):
    rng = np.random.default_rng(seed_of(op, variant, direction))
    for seq, init in ((True, True), (False, False)) if variant == "default" else ((True, True),):
        model, feeds, _ = build(op, variant, direction, rng, seq=seq, init=init)
        m = nonnx.load(model)
        compare(m.run(None, feeds), ort_run(model, feeds), f"{op} {variant} {direction} seq={seq}")


@pytest.mark.parametrize("seq,init", [(True, False), (False, True)])
@pytest.mark.parametrize("op", list(G))
def test_node_lengths_or_state_alone_vs_onnxruntime(op, seq, init):
    rng = np.random.default_rng(seed_of(op, seq, init))
    for direction in DIRS:
        model, feeds, _ = build(op, "default", direction, rng, seq=seq, init=init)
        compare(nonnx.load(model).run(None, feeds), ort_run(model, feeds), f"{op} {direction}")


def test_loaded_layers_are_nlstm_layers():
    rng = np.random.default_rng(0)
    model, feeds, _ = build("GRU", "linear_before_reset", "bidirectional", rng)
    m = nonnx.load(model)
    assert list(m.layers) == ["rnn"]
    layer = m.layers["rnn"]
    assert isinstance(layer, nlstm.GRU) and layer.bidirectional and layer.linear_before_reset
    assert (layer.input_size, layer.hidden_size) == (I, H)
    model, feeds, _ = build("LSTM", "P_clip_input_forget", "forward", rng)
    layer = nonnx.load(model).layers["rnn"]
    assert layer.peephole and layer.clip == pytest.approx(0.8) and layer.input_forget


# ---- layout=1 and zero lengths: what ONNX Runtime refuses or answers differently -------------
@pytest.mark.parametrize("direction", DIRS)
@pytest.mark.parametrize("op,variant", [("LSTM", "P_clip_input_forget"), ("GRU", "default"),
                                        ("GRU", "linear_before_reset"), ("RNN", "relu")])
def test_layout1_vs_onnxruntime_on_layout0(op, variant, direction):
    """ONNX Runtime rejects layout=1; the same weights with layout=0 and transposed
    inputs and outputs are the oracle (lengths and initial states included)."""
    seed = seed_of(op, variant, direction)
    model1, feeds1, _ = build(op, variant, direction, np.random.default_rng(seed), layout=1)
    model0, _, _ = build(op, variant, direction, np.random.default_rng(seed), layout=0)  # same weights
    got = nonnx.load(model1).run(None, feeds1)
    feeds0 = {k: (v if k == "seq" else np.ascontiguousarray(v.transpose(1, 0, 2)))
              for k, v in feeds1.items()}
    want = ort_run(model0, feeds0)
    want = [want[0].transpose(2, 0, 1, 3)] + [w.transpose(1, 0, 2) for w in want[1:]]
    compare(got, want, f"{op} {variant} {direction} layout=1")


@pytest.mark.parametrize("direction", DIRS)
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_layout1_vs_reference_evaluator(op, direction):
    rng = np.random.default_rng(seed_of(op, direction, "ref"))
    model, feeds, _ = build(op, "default", direction, rng, layout=1, seq=False)
    compare(nonnx.load(model).run(None, feeds), ref_eval(model, feeds), f"{op} {direction} layout=1")


def oracle_node(op, direction, W, Rr, Bb, P, feeds, lengths, acts=None, lbr=False):
    """The float64 oracle for one ONNX node (layout 0), from its ONNX weights."""
    if direction == "reverse":  # a bidirectional oracle with the same weights both ways
        W, Rr = np.concatenate([W, W]), np.concatenate([Rr, Rr])
        Bb = None if Bb is None else np.concatenate([Bb, Bb])
        P = None if P is None else np.concatenate([P, P])
    params = nlstm_params(op, W, Rr, Bb, P)
    cell = {"LSTM": lambda: R.LSTMCell(peephole=P is not None), "GRU": lambda: R.GRUCell(lbr),
            "RNN": lambda: R.RNNCell(acts or "tanh")}[op]()
    D = W.shape[0]
    init = [np.asarray(feeds[n], np.float64) for n in ("h0", "c0") if n in feeds]
    if direction == "reverse":
        init = [np.concatenate([s, s]) for s in init]
    x = np.asarray(feeds["X"], np.float64)
    y, final, _ = R.forward(cell, params, x, init, lengths, 1, D == 2)
    y = y.reshape(T, B, D, H).transpose(0, 2, 1, 3)
    if direction == "reverse":
        return [y[:, 1:]] + [f[1:] for f in final]
    return [y] + final


@pytest.mark.parametrize("direction", DIRS)
@pytest.mark.parametrize("op", list(G))
def test_zero_lengths_vs_oracle(op, direction):
    """Length-0 rows: zero outputs and the initial state as the final state (ONNX Runtime
    returns zeros for Y_h there; the spec does not say)."""
    rng = np.random.default_rng(seed_of(op, direction, "zero"))
    variant = "P" if op == "LSTM" else "default"
    model, feeds, (W, Rr, Bb, P) = build(op, variant, direction, rng)
    lengths = np.array([0, T, 2], np.int32)
    feeds["seq"] = lengths
    got = nonnx.load(model).run(None, feeds)
    want = oracle_node(op, direction, W, Rr, Bb, P, feeds, lengths)
    compare(got, want, f"{op} {direction} zero lengths")
    np.testing.assert_array_equal(got[0][:, :, 0], 0, err_msg="Y of the length-0 row")
    np.testing.assert_allclose(got[1][:, 0], feeds["h0"][:, 0], err_msg="Y_h of the length-0 row")
    np.testing.assert_allclose(got[0], ort_run(model, feeds)[0], err_msg="Y vs ONNX Runtime", **TOL32)


def test_float64_model_vs_reference_evaluator():
    rng = np.random.default_rng(5)
    W, Rr, Bb, P = weights("LSTM", 2, rng, peephole=True, dtype=np.float64)
    model = node_model(onnx, "LSTM", W, Rr, Bb, P, init_h=True, init_c=True, direction="bidirectional")
    feeds = {"X": rng.standard_normal((T, B, I)), "h0": rng.standard_normal((2, B, H)),
             "c0": rng.standard_normal((2, B, H))}
    m = nonnx.load(model)
    assert m.layers["rnn"].dtype == np.float64
    compare(m.run(None, feeds), ref_eval(model, feeds), "float64 LSTM", dict(rtol=1e-10, atol=1e-12))


# ---- glue graphs, the session API and streaming --------------------------------------------
def glue_model(rng):
    """x (B, T, I) batch-first -> Transpose -> bidirectional LSTM -> Transpose, Reshape ->
    GRU -> Squeeze -> MatMul + Add per step; Y_h -> Squeeze -> Gemm; Unsqueeze."""
    O = 3
    W1, R1, B1, P1 = weights("LSTM", 2, rng, peephole=True)
    W2, R2, B2, _ = weights("GRU", 1, rng, i=2 * H)
    c = lambda name, a: numpy_helper.from_array(np.asarray(a), name)
    inits = [c("W1", W1), c("R1", R1), c("B1", B1), c("P1", P1), c("W2", W2), c("R2", R2), c("B2", B2),
             c("Wm", rng.uniform(-1, 1, (H, O)).astype(np.float32)),
             c("bm", rng.uniform(-1, 1, O).astype(np.float32)),
             c("Wg", rng.uniform(-1, 1, (O, H)).astype(np.float32)),
             c("bg", rng.uniform(-1, 1, O).astype(np.float32)),
             c("shape", np.array([0, 0, -1], np.int64)), c("ax0", np.array([0], np.int64)),
             c("ax1", np.array([1], np.int64))]
    n = helper.make_node
    nodes = [
        n("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        n("LSTM", ["xt", "W1", "R1", "B1", "lens", "", "", "P1"], ["Y1", "Y1h", "Y1c"], name="lstm",
          hidden_size=H, direction="bidirectional", clip=2.0),
        n("Transpose", ["Y1"], ["Y1t"], perm=[0, 2, 1, 3]),
        n("Reshape", ["Y1t", "shape"], ["Y1r"]),
        n("GRU", ["Y1r", "W2", "R2", "B2", "lens"], ["Y2", "Y2h"], name="gru", hidden_size=H,
          linear_before_reset=1),
        n("Squeeze", ["Y2", "ax1"], ["Y2s"]),
        n("MatMul", ["Y2s", "Wm"], ["mm"]),
        n("Add", ["mm", "bm"], ["per_step"]),
        n("Squeeze", ["Y2h", "ax0"], ["h"]),
        n("Gemm", ["h", "Wg", "bg"], ["last"], transB=1, alpha=0.5, beta=2.0),
        n("Unsqueeze", ["last", "ax1"], ["last3"]),
    ]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "glue", [vi("x", TensorProto.FLOAT, ["B", "T", I]), vi("lens", TensorProto.INT32, ["B"])],
        [vi("per_step", TensorProto.FLOAT, None), vi("last", TensorProto.FLOAT, None),
         vi("last3", TensorProto.FLOAT, None), vi("Y1h", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_glue_graph_vs_onnxruntime(tmp_path):
    rng = np.random.default_rng(21)
    model = glue_model(rng)
    path = tmp_path / "glue.onnx"
    onnx.save(model, str(path))
    feeds = {"x": rng.standard_normal((B, T, I)).astype(np.float32), "lens": LENGTHS}
    want = ort_run(model, feeds)
    for source in (path, str(path), model, model.SerializeToString()):
        m = nonnx.load(source)
        for name, g, w in zip(("per_step", "last", "last3", "Y1h"), m.run(None, feeds), want):
            np.testing.assert_allclose(g, w, err_msg=f"{name} (from {type(source).__name__})", **TOL32)
    assert sorted(m.layers) == ["gru", "lstm"]
    # output_names picks and orders, as onnxruntime's run
    got = m.run(["Y1h", "last"], feeds)
    np.testing.assert_allclose(got[0], want[3], err_msg="Y1h picked", **TOL32)
    np.testing.assert_allclose(got[1], want[1], err_msg="last picked", **TOL32)
    assert [a.name for a in m.get_inputs()] == ["x", "lens"]
    assert [a.name for a in m.get_outputs()] == ["per_step", "last", "last3", "Y1h"]


def test_run_rejects_bad_feeds():
    m = nonnx.load(glue_model(np.random.default_rng(0)))
    x = np.zeros((B, T, I), np.float32)
    with pytest.raises(ValueError, match="invalid input name 'y'"):
        m.run(None, {"x": x, "lens": LENGTHS, "y": x})
    with pytest.raises(ValueError, match=r"missing inputs \['lens'\]"):
        m.run(None, {"x": x})
    with pytest.raises(ValueError, match="invalid output name 'nope'"):
        m.run(["nope"], {"x": x, "lens": LENGTHS})
    with pytest.raises(ValueError, match="input 'x' must have shape"):
        m.run(None, {"x": np.zeros((B, T, I + 1), np.float32), "lens": LENGTHS})
    with pytest.raises(ValueError, match="lengths must be in 0..5"):
        m.run(None, {"x": x, "lens": np.array([9, 1, 1], np.int32)})


def stream_model(rng):
    """x (T, B, I) -> LSTM (initial states from inputs) -> Squeeze -> RNN relu -> Squeeze ->
    MatMul + Add."""
    W1, R1, B1, P1 = weights("LSTM", 1, rng, peephole=True)
    W2, R2, B2, _ = weights("RNN", 1, rng, i=H)
    c = lambda name, a: numpy_helper.from_array(np.asarray(a), name)
    inits = [c("W1", W1), c("R1", R1), c("B1", B1), c("P1", P1), c("W2", W2), c("R2", R2),
             c("B2", B2), c("Wm", rng.uniform(-1, 1, (H, 2)).astype(np.float32)),
             c("bm", rng.uniform(-1, 1, 2).astype(np.float32)), c("ax1", np.array([1], np.int64))]
    n = helper.make_node
    nodes = [n("LSTM", ["x", "W1", "R1", "B1", "", "h0", "c0", "P1"], ["Y1", "Y1h", "Y1c"], name="lstm",
               hidden_size=H, input_forget=1),
             n("Squeeze", ["Y1", "ax1"], ["y1"]),
             n("RNN", ["y1", "W2", "R2", "B2"], ["Y2", "Y2h"], name="rnn", hidden_size=H,
               activations=["Relu"]),
             n("Squeeze", ["Y2", "ax1"], ["y2"]),
             n("MatMul", ["y2", "Wm"], ["mm"]), n("Add", ["mm", "bm"], ["out"])]
    vi = helper.make_tensor_value_info
    F = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "s", [vi("x", F, ["T", "B", I]), vi("h0", F, [1, "B", H]),
                                           vi("c0", F, [1, "B", H])],
                              [vi("out", F, None), vi("Y1h", F, None), vi("Y1c", F, None),
                               vi("Y2h", F, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_stream_carries_state_between_calls():
    rng = np.random.default_rng(8)
    model = stream_model(rng)
    T7 = 7
    feeds = {"x": rng.standard_normal((T7, B, I)).astype(np.float32),
             "h0": rng.standard_normal((1, B, H)).astype(np.float32),
             "c0": rng.standard_normal((1, B, H)).astype(np.float32)}
    want = ort_run(model, feeds)
    s = nonnx.load(model).stream()
    for attempt in range(2):  # the second pass checks reset()
        outs, t = [], 0
        for n in (3, 1, 3):
            got = s.run(None, dict(feeds, x=feeds["x"][t:t + n]))
            outs.append(got[0])
            t += n
        np.testing.assert_allclose(np.concatenate(outs), want[0], err_msg=f"out, pass {attempt}", **TOL32)
        for name, g, w in zip(("Y1h", "Y1c", "Y2h"), got[1:], want[1:]):
            np.testing.assert_allclose(g, w, err_msg=f"{name} after the last chunk, pass {attempt}", **TOL32)
        assert set(s.states) == {"lstm", "rnn"}
        s.reset()
    got = s.run(None, dict(feeds, x=feeds["x"][:2]))
    with pytest.raises(ValueError, match="batch size"):
        s.run(None, dict(feeds, x=feeds["x"][:2, :2], h0=feeds["h0"][:, :2], c0=feeds["c0"][:, :2]))


def test_stream_needs_forward_nodes():
    rng = np.random.default_rng(0)
    for direction in ("reverse", "bidirectional"):
        model, _, _ = build("GRU", "default", direction, rng)
        with pytest.raises(ValueError, match=direction):
            nonnx.load(model).stream()


# ---- errors: unsupported attributes and bad files ------------------------------------------
def one_node(op="LSTM", inputs=("X", "W", "R", "B"), D=1, h=H, w_shape=None, x_features=I,
             graph_inputs=(), **attrs):
    rng = np.random.default_rng(1)
    W, Rr, Bb, P = weights(op, D, rng, peephole=True)
    if w_shape is not None:
        W = rng.standard_normal(w_shape).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for n, a in (("W", W), ("R", Rr), ("B", Bb), ("P", P))
             if n not in graph_inputs]
    vi = helper.make_tensor_value_info
    ins = [vi("X", TensorProto.FLOAT, ["T", "B", x_features])]
    ins += [vi(n, TensorProto.FLOAT, list(shape)) for n, shape in graph_inputs.items()] \
        if isinstance(graph_inputs, dict) else []
    outs = ["Y", "Y_h"]
    node = helper.make_node(op, list(inputs), outs, name="bad", hidden_size=h, **attrs)
    graph = helper.make_graph([node], "g", ins, [vi(o, TensorProto.FLOAT, None) for o in outs], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("make,match", [
    (lambda: one_node(activations=["HardSigmoid", "Tanh", "Swish"]), "unknown activation 'Swish'"),
    (lambda: one_node(activations=["Sigmoid", "Tanh"]), "LSTM takes 3 activation names, got 2"),
    (lambda: one_node("GRU", clip=-1.0), "clip must be positive"),
    (lambda: one_node("RNN", activations=["Affine"], activation_alpha=[1.0, 2.0]),
     "2 alphas and 0 betas given"),
    (lambda: one_node("RNN", D=2, direction="bidirectional", activations=["Tanh", "Relu", "Elu"]),
     "activations"),
    (lambda: one_node(activation_alpha=[1.0], activations=["Sigmoid", "Tanh", "Tanh"],
                      direction="sideways"), "sideways"),
], ids=["unknown", "count", "gru_clip", "alphas", "three_for_two", "direction"])
def test_unsupported_attribute_or_activation_is_named(make, match):
    with pytest.raises(ValueError, match=match):
        nonnx.load(make())


def test_unsupported_operator_is_named():
    m = one_node()
    m.graph.node.append(helper.make_node("Softplus", ["Y"], ["Z"], name="sp"))
    with pytest.raises(ValueError, match="Softplus"):
        nonnx.load(m)


@pytest.mark.parametrize("make,match", [
    (lambda: one_node(inputs=("X", "W")), "missing required input R"),
    (lambda: one_node(inputs=("X", "W", "")), "missing required input R"),
    (lambda: one_node(inputs=("X", "W", "nowhere")), "'nowhere' is not a graph input"),
    (lambda: one_node(h=H + 1), r"W has shape \(1, 24, 4\) but direction='forward' and hidden_size=7"),
    (lambda: one_node(direction="bidirectional"), "direction='bidirectional'"),
    (lambda: one_node(w_shape=(1, 4 * H, I, 1)), "W and R must be 3-D"),
    (lambda: one_node(x_features=I + 2), "X is declared with shape"),
    (lambda: one_node(inputs=("X", "W", "R", "B", "", "h0"),
                      graph_inputs={"h0": (2, "B", H)}), "initial_h is declared"),
    (lambda: one_node(inputs=("X", "W", "R", "B", "", "", "", "B")), r"P has shape \(1, 48\)"),
], ids=["two_inputs", "empty_R", "undefined", "hidden_size", "directions", "W_ndim",
        "X_features", "initial_h", "P_shape"])
def test_bad_model_gives_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        nonnx.load(make())


@pytest.mark.parametrize("opset,axis", [(11, None), (12, 1), (11, -1), (13, None), (13, 1)])
def test_softmax_follows_the_models_opset(opset, axis):
    """Before opset 13 Softmax flattens its input to 2-D at axis (default 1); from 13 it runs
    along axis (default -1). nlstm ran every opset by the new rule."""
    x = np.random.default_rng(opset).standard_normal((2, 3, 4)).astype(np.float32)
    kw = {} if axis is None else {"axis": axis}
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], **kw)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    want = ort_run(m, {"x": x})[0]
    np.testing.assert_allclose(nonnx.load(m).run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-7)


def test_float16_model_names_the_dtype():
    """A valid float16 LSTM (ONNX Runtime runs it): the error names W's dtype, not the
    graph (the checker's complaint about an output declared without a shape came first)."""
    W, R = np.zeros((1, 4 * H, I), np.float16), np.zeros((1, 4 * H, H), np.float16)
    node = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=H)
    for out_shape in (None, [None, 1, None, H]):
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT16,
                                                                          [None, None, I])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, out_shape)],
                              [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        with pytest.raises(ValueError, match="W must be float32 or float64.*float16"):
            nonnx.load(m)


def test_truncated_file_gives_clear_error(tmp_path):
    data = glue_model(np.random.default_rng(0)).SerializeToString()
    for cut in (0, 1, 17, len(data) // 3, len(data) // 2, len(data) - 40, len(data) - 1):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="ONNX model"):
            nonnx.load(path)
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        nonnx.load(b"\x00\x01garbage")
    with pytest.raises(FileNotFoundError):
        nonnx.load(tmp_path / "missing.onnx")


def test_import_nlstm_does_not_import_onnx():
    import subprocess
    import sys

    code = "import sys, nlstm, nlstm.onnx; assert 'onnx' not in sys.modules; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_model_exported_by_torch(kind):
    """What torch.onnx.export (TorchScript exporter) writes for a stacked bidirectional
    module: recurrent nodes plus Shape/Gather/Expand/Concat glue for the zero state."""
    import io

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = getattr(torch.nn, kind)(I, H, num_layers=2, bidirectional=True, batch_first=True).eval()
    x = torch.randn(B, T, I)
    f = io.BytesIO()
    try:
        torch.onnx.export(m, (x,), f, dynamo=False, input_names=["x"], output_names=["y", "h_n"])
    except Exception as e:  # the TorchScript exporter may be gone from a future torch
        pytest.skip(f"torch.onnx.export(dynamo=False) unavailable: {e}")
    loaded = nonnx.load(f.getvalue())
    assert len(loaded.layers) == 2
    got = loaded.run(["y", "h_n"], {"x": x.numpy()})
    with torch.no_grad():
        y, h = m(x)
    h = h[0] if kind == "LSTM" else h
    np.testing.assert_allclose(got[0], y.numpy(), err_msg="y", **TOL32)
    np.testing.assert_allclose(got[1], h.numpy(), err_msg="h_n", **TOL32)


_r = np.random.default_rng(99)
_a = _r.standard_normal((2, 3, 4)).astype(np.float32)
GLUE = [  # op, inputs, attributes: every glue op against the reference evaluator
    ("Squeeze", [_a[:, :1], np.array([1])], {}),
    ("Unsqueeze", [_a, np.array([0, -1])], {}),
    ("Transpose", [_a], dict(perm=[2, 0, 1])),
    ("Transpose", [_a], {}),
    ("Reshape", [_a, np.array([0, -1])], {}),
    ("Gemm", [_a[0], _a[1], _a[0, 0]], dict(transA=1, alpha=0.3, beta=-2.0)),
    ("Gemm", [_a[0].T.copy(), _a[1]], {}),
    ("MatMul", [_a, _a[0].T.copy()], {}),
    ("Add", [_a, _a[0, 0]], {}),
    ("Sub", [_a, _a[1]], {}),
    ("Mul", [_a, _a[:, :1]], {}),
    ("Concat", [_a, _a[:, :2]], dict(axis=1)),
    ("Slice", [_a, np.array([1, -3]), np.array([2**62, -1]), np.array([2, 1]), np.array([1, 1])], {}),
    ("Slice", [_a, np.array([-1]), np.array([-2**62]), np.array([1]), np.array([-2])], {}),
    ("Gather", [_a, np.array([-1, 0])], dict(axis=1)),
    ("Shape", [_a], dict(start=1)),
    ("Expand", [_a[:, :1], np.array([1, 5, 1])], {}),
    ("ConstantOfShape", [np.array([2, 3])], dict(value=numpy_helper.from_array(np.array([1.5], np.float32)))),
    ("Cast", [_a], dict(to=TensorProto.DOUBLE)),
    ("Relu", [_a], {}), ("Tanh", [_a], {}), ("Sigmoid", [_a], {}),
    ("Softmax", [_a], dict(axis=1)), ("Identity", [_a], {}),
]


@pytest.mark.parametrize("op,args,attrs", GLUE, ids=[f"{g[0]}{i}" for i, g in enumerate(GLUE)])
def test_glue_op_vs_reference_evaluator(op, args, attrs):
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" for i in range(len(args))]
    vals = [np.asarray(a, np.int64) if np.asarray(a).dtype.kind == "i" else a for a in args]
    vi = helper.make_tensor_value_info
    ins = [vi(n, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)) for n, v in zip(names, vals)]
    graph = helper.make_graph([helper.make_node(op, names, ["out"], **attrs)], "g", ins,
                              [vi("out", TensorProto.UNDEFINED, None)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    feeds = dict(zip(names, vals))
    (want,) = ReferenceEvaluator(m).run(None, feeds)
    (got,) = nonnx.load(m).run(None, feeds)
    assert got.dtype == want.dtype, f"{op}: out dtype {got.dtype}, expected {want.dtype}"
    np.testing.assert_allclose(got, want, err_msg=f"{op} out", rtol=1e-6, atol=1e-6)
