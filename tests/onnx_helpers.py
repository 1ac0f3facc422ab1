"""Building one-node ONNX models from nlstm layers, written independently of nlstm.onnx
(gate blocks moved by name, not by nlstm.onnx's index tables), and running them on ONNX
Runtime, the ONNX reference evaluator and the float64 oracle."""
import zlib

import numpy as np

import reference as R

TOL32 = dict(rtol=2e-4, atol=2e-5)
TOL64 = dict(rtol=1e-9, atol=1e-11)


def seed_of(*parts) -> int:
    """A stable seed from test parameters (str hashes change between runs)."""
    return zlib.crc32(repr(parts).encode())


def randomize(layer, rng, scale=0.6):
    """Random non-zero weights and biases (peepholes included), in place."""
    for v in layer.params.values():
        v[...] = rng.uniform(-scale, scale, v.shape)
    return layer


def onnx_gates(op, a):
    """nlstm's gate blocks (rows) in ONNX's order: LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h."""
    if op == "LSTM":
        i, f, g, o = np.split(a, 4, axis=0)
        return np.concatenate([i, o, f, g])
    if op == "GRU":
        r, z, n = np.split(a, 3, axis=0)
        return np.concatenate([z, r, n])
    return a


def onnx_peephole(p):
    """nlstm's (p_i, p_f, p_o) as ONNX's P (p_i, p_o, p_f)."""
    pi, pf, po = np.split(p, 3)
    return np.concatenate([pi, po, pf])


def onnx_weights(layer, k=0):
    """W, R, B (or None), P (or None) of layer k of an nlstm layer, in ONNX's layout."""
    op = layer._name
    sfx = ["", "_reverse"][: layer.num_directions]
    p = layer.params
    W = np.stack([onnx_gates(op, p[f"weight_ih_l{k}{s}"]) for s in sfx])
    Rr = np.stack([onnx_gates(op, p[f"weight_hh_l{k}{s}"]) for s in sfx])
    B = None
    if layer.bias:
        B = np.stack([np.concatenate([onnx_gates(op, p[f"bias_ih_l{k}{s}"]),
                                      onnx_gates(op, p[f"bias_hh_l{k}{s}"])]) for s in sfx])
    P = None
    if getattr(layer, "peephole", False):
        P = np.stack([onnx_peephole(p[f"peephole_l{k}{s}"]) for s in sfx])
    return W, Rr, B, P


def node_model(onnx, op, W, Rr, B=None, P=None, *, layout=0, seq=False, init_h=False,
               init_c=False, opset=17, x_shape=("T", "B", None), **attrs):
    """A one-node model: graph inputs X (and sequence_lens, initial_h, initial_c when
    asked), weights as initializers, outputs Y, Y_h (, Y_c)."""
    from onnx import TensorProto, helper, numpy_helper

    elem = helper.np_dtype_to_tensor_dtype(W.dtype)
    D, I = W.shape[0], W.shape[2]
    H = Rr.shape[2]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(Rr, "R")]
    names = ["X", "W", "R", "", "", "", "", ""]
    if B is not None:
        inits.append(numpy_helper.from_array(B, "B"))
        names[3] = "B"
    inputs = [helper.make_tensor_value_info("X", elem, [x_shape[0], x_shape[1], x_shape[2] or I])]
    st = [D, "B", H] if layout == 0 else ["B", D, H]
    if seq:
        names[4] = "seq"
        inputs.append(helper.make_tensor_value_info("seq", TensorProto.INT32, ["B"]))
    if init_h:
        names[5] = "h0"
        inputs.append(helper.make_tensor_value_info("h0", elem, st))
    if init_c:
        names[6] = "c0"
        inputs.append(helper.make_tensor_value_info("c0", elem, st))
    if P is not None:
        inits.append(numpy_helper.from_array(P, "P"))
        names[7] = "P"
    while not names[-1]:
        names.pop()
    outs = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    node = helper.make_node(op, names, outs, name="rnn", hidden_size=H, layout=layout, **attrs)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info(o, elem, None)
                                                    for o in outs], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def ort_run(model, feeds, outputs=None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # no warnings about unused initializers
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    return sess.run(outputs, feeds)


def ref_eval(model, feeds):
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)


def oracle(layer, x_tm, init, lengths):
    """The float64 oracle for one nlstm layer on time-major x: y (T, B, D·O), final list."""
    acts = layer._act_spec  # per direction [(name, alpha, beta)], or None
    if layer._name == "LSTM":
        cell = R.LSTMCell(peephole=layer.peephole, clip=layer.clip, input_forget=layer.input_forget,
                          proj=bool(layer.proj_size), acts=acts)
    elif layer._name == "GRU":
        cell = R.GRUCell(layer.linear_before_reset, clip=layer.clip, acts=acts)
    else:
        cell = R.RNNCell("relu" if layer._relu else "tanh", clip=layer.clip, acts=acts)
    T, B = x_tm.shape[:2]
    LD = layer.num_layers * layer.num_directions
    if init is None:
        init = [np.zeros((LD, B, n)) for n in layer._state_sizes()]
    lens = np.full(B, T) if lengths is None else np.asarray(lengths)
    y, final, _ = R.forward(cell, layer.params, x_tm, init, lens, layer.num_layers,
                            layer.bidirectional)
    return y, final


def onnx_y(y_tm, D, layout=0):
    """A (T, B, D·H) output as ONNX's Y: (T, D, B, H), or (B, T, D, H) with layout 1."""
    T, B = y_tm.shape[:2]
    y = y_tm.reshape(T, B, D, -1)
    return y.transpose(0, 2, 1, 3) if layout == 0 else y.transpose(1, 0, 2, 3)


def nlstm_gates(op, a):
    """ONNX's gate blocks (rows) in nlstm's order: LSTM i,o,f,c -> i,f,g,o; GRU z,r,h -> r,z,n."""
    if op == "LSTM":
        i, o, f, c = np.split(a, 4, axis=0)
        return np.concatenate([i, f, c, o])
    if op == "GRU":
        z, r, h = np.split(a, 3, axis=0)
        return np.concatenate([r, z, h])
    return a


def nlstm_params(op, W, Rr, B=None, P=None):
    """ONNX weights of one node as nlstm parameter names (for the float64 oracle)."""
    G = W.shape[1] // Rr.shape[2]
    H = Rr.shape[2]
    out = {}
    for d in range(W.shape[0]):
        s = "_reverse" if d else ""
        out[f"weight_ih_l0{s}"] = nlstm_gates(op, W[d])
        out[f"weight_hh_l0{s}"] = nlstm_gates(op, Rr[d])
        if B is not None:
            out[f"bias_ih_l0{s}"] = nlstm_gates(op, B[d, :G * H])
            out[f"bias_hh_l0{s}"] = nlstm_gates(op, B[d, G * H:])
        if P is not None:
            pi, po, pf = np.split(P[d], 3)
            out[f"peephole_l0{s}"] = np.concatenate([pi, pf, po])
    return out
