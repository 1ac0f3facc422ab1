"""nlstm -> ONNX (nlstm.onnx.save) -> ONNX Runtime, the ONNX reference evaluator and back
into nlstm: outputs and final states on random weights and inputs, with lengths, initial
states, both layouts, both directions and stacked layers; Sequential models with a linear
head; opsets; errors; atomic writes."""
import os

import numpy as np
import pytest

import nlstm
from onnx_helpers import TOL32, ort_run, randomize, ref_eval, seed_of

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import nlstm.onnx as nonnx  # noqa: E402

T, B, I, H = 6, 3, 4, 5
KINDS = {
    "lstm": (nlstm.LSTM, {}),
    "gru": (nlstm.GRU, {}),
    "gru_lbr0": (nlstm.GRU, dict(linear_before_reset=False)),
    "rnn_tanh": (nlstm.RNN, {}),
    "rnn_relu": (nlstm.RNN, dict(nonlinearity="relu")),
    "lstm_peephole": (nlstm.LSTM, dict(peephole=True)),
    "lstm_clip": (nlstm.LSTM, dict(clip=0.5)),
    "lstm_input_forget": (nlstm.LSTM, dict(input_forget=True)),
    "lstm_all_onnx": (nlstm.LSTM, dict(peephole=True, clip=1.0, input_forget=True)),
}
# (num_layers, bidirectional, batch_first)
CONFIGS = [(1, False, False), (2, True, False), (3, False, True), (2, True, True)]


def make(kind, L, bi, bf, rng, dtype=np.float32, bias=True):
    cls, kw = KINDS[kind]
    return randomize(cls(I, H, num_layers=L, bidirectional=bi, batch_first=bf, dtype=dtype, seed=0,
                         bias=bias, **kw), rng)


def data(layer, rng, lengths=True, state=True):
    x = rng.standard_normal((B, T, I) if layer.batch_first else (T, B, I)).astype(layer.dtype)
    feeds = {"input": x}
    if lengths:
        feeds["lengths"] = np.array([T, 3, 1], np.int32)
    st = None
    if state:
        LD = layer.num_layers * layer.num_directions
        st = [rng.standard_normal((LD, B, n)).astype(layer.dtype) for n in layer._state_sizes()]
        feeds.update(zip(("h0", "c0"), st))
    return feeds, st


def expected(layer, feeds, st):
    y, final = layer(feeds["input"], None if st is None else (st[0] if len(st) == 1 else tuple(st)),
                     feeds.get("lengths"))
    return [y] + (list(final) if isinstance(final, tuple) else [final])


def compare(got, want, what, tol=TOL32):
    for name, g, w in zip(("output", "h_n", "c_n"), got, want):
        assert g.shape == w.shape, f"{what}: {name} has shape {g.shape}, expected {w.shape}"
        np.testing.assert_allclose(g, w, err_msg=f"{what}: {name}", **tol)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"L{c[0]}{'_bi' if c[1] else ''}{'_bf' if c[2] else ''}")
@pytest.mark.parametrize("kind", list(KINDS))
def test_layer_round_trip_vs_onnxruntime(kind, config, tmp_path):
    rng = np.random.default_rng(seed_of(kind, config))
    layer = make(kind, *config, rng)
    path = tmp_path / "m.onnx"
    assert nonnx.save(layer, path, lengths=True, state=True) == str(path)
    feeds, st = data(layer, rng)
    want = expected(layer, feeds, st)
    what = f"{kind} {config}"
    compare(ort_run(str(path), feeds), want, f"{what} via ONNX Runtime")
    back = nonnx.load(path)
    compare(back.run(None, feeds), want, f"{what} reloaded in nlstm")
    D = layer.num_directions
    assert len(back.layers) == layer.num_layers, "one ONNX node per layer"
    assert all(type(l) is type(layer) and l.num_directions == D for l in back.layers.values())


@pytest.mark.parametrize("kind", ["lstm", "gru_lbr0", "rnn_tanh"])
def test_without_lengths_or_state(kind, tmp_path):
    rng = np.random.default_rng(seed_of(kind, "plain"))
    layer = make(kind, 2, True, True, rng, bias=kind != "gru_lbr0")
    nonnx.save(layer, tmp_path / "m.onnx", lengths=False, state=False)
    feeds, st = data(layer, rng, lengths=False, state=False)
    compare(ort_run(str(tmp_path / "m.onnx"), feeds), expected(layer, feeds, st), kind)
    names = [i.name for i in nonnx.load(tmp_path / "m.onnx").get_inputs()]
    assert names == ["input"], names


@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_lbr0", "rnn_tanh", "lstm_peephole"])
def test_layer_vs_reference_evaluator(kind, tmp_path):
    """The reference evaluator ignores sequence_lens, clip, input_forget and activations:
    full-length sequences and the variants it does compute."""
    rng = np.random.default_rng(seed_of(kind, "ref"))
    layer = make(kind, 2, True, kind == "gru", rng)
    nonnx.save(layer, tmp_path / "m.onnx", lengths=False, state=True)
    feeds, st = data(layer, rng, lengths=False)
    compare(ref_eval(onnx.load(str(tmp_path / "m.onnx")), feeds), expected(layer, feeds, st),
            f"{kind} via ReferenceEvaluator")


def test_float64_layer(tmp_path):
    """ONNX Runtime has no double LSTM; the reference evaluator and nlstm itself check it."""
    rng = np.random.default_rng(4)
    layer = make("lstm_peephole", 2, True, False, rng, dtype=np.float64)
    nonnx.save(layer, tmp_path / "m.onnx", lengths=False, state=True)
    feeds, st = data(layer, rng, lengths=False)
    want = expected(layer, feeds, st)
    tol = dict(rtol=1e-10, atol=1e-12)
    compare(ref_eval(onnx.load(str(tmp_path / "m.onnx")), feeds), want, "float64 reference", tol)
    compare(nonnx.load(tmp_path / "m.onnx").run(None, feeds), want, "float64 reloaded", tol)


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_opsets(opset, tmp_path):
    rng = np.random.default_rng(opset)
    layer = make("gru", 2, True, False, rng)
    nonnx.save(layer, tmp_path / "m.onnx", opset=opset, state=True)
    m = onnx.load(str(tmp_path / "m.onnx"))
    assert m.opset_import[0].version == opset
    feeds, st = data(layer, rng)
    compare(ort_run(str(tmp_path / "m.onnx"), feeds), expected(layer, feeds, st), f"opset {opset}")


def test_exported_model_streams_like_step(tmp_path):
    """nlstm -> ONNX -> nlstm's stream(): chunked calls equal one whole-sequence call."""
    rng = np.random.default_rng(9)
    layer = make("lstm_all_onnx", 2, False, False, rng)
    nonnx.save(layer, tmp_path / "m.onnx", lengths=False, state=True)
    feeds, st = data(layer, rng, lengths=False)
    want = expected(layer, feeds, st)
    s = nonnx.load(tmp_path / "m.onnx").stream()
    ys = [s.run(None, dict(feeds, input=feeds["input"][t:t + 2]))[0] for t in range(0, T, 2)]
    np.testing.assert_allclose(np.concatenate(ys), want[0], err_msg="streamed output", **TOL32)
    got = s.run(None, dict(feeds, input=feeds["input"][:1]))  # one more step continues
    y1, _ = layer.step(feeds["input"][0], tuple(want[1:]))
    np.testing.assert_allclose(got[0][0], y1, err_msg="output one step past the sequence", **TOL32)


# ---- Sequential models --------------------------------------------------------------------------
def sequential(name, rng):
    L, G, R_ = nlstm.Linear, nlstm.GRU, nlstm.RNN
    if name == "lstm_linear_last":
        layers = [nlstm.LSTM(I, H, batch_first=True, peephole=True), L(H, 2)]
        out = "last"
    elif name == "bigru_stack_sequence":
        layers = [G(I, H, num_layers=2, bidirectional=True), nlstm.Dropout(0.3), L(2 * H, 4), L(4, 3)]
        out = "sequence"
    else:  # recurrent, linear, recurrent, head: bidirectional last layer read at its ends
        layers = [R_(I, H, nonlinearity="relu", batch_first=True), L(H, 3),
                  nlstm.LSTM(3, H, bidirectional=True, clip=1.5), L(2 * H, 2)]
        out = "last"
    for l in layers:
        randomize(l, rng)
    return nlstm.Sequential(layers, output=out)


@pytest.mark.parametrize("name", ["lstm_linear_last", "bigru_stack_sequence", "mixed_last"])
def test_sequential_vs_onnxruntime(name, tmp_path):
    rng = np.random.default_rng(seed_of(name))
    model = sequential(name, rng)
    path = tmp_path / "s.onnx"
    nonnx.save(model, path)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    for lengths in (np.array([T, 3, 1], np.int32), np.array([T, T, T], np.int32)):
        want = model(x, lengths)
        feeds = {"input": x, "lengths": lengths}
        (got,) = ort_run(str(path), feeds)
        np.testing.assert_allclose(got, want, err_msg=f"{name}: prediction via ONNX Runtime", **TOL32)
        (back,) = nonnx.load(path).run(None, feeds)
        np.testing.assert_allclose(back, want, err_msg=f"{name}: prediction reloaded", **TOL32)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    if model.output == "last":
        assert "Gemm" in ops, ops
    assert "Dropout" not in ops


def test_sequential_zero_length_rows(tmp_path):
    """A row of length 0 predicts from a zero state, in nlstm and in the exported model."""
    rng = np.random.default_rng(2)
    model = sequential("lstm_linear_last", rng)
    nonnx.save(model, tmp_path / "s.onnx")
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    feeds = {"input": x, "lengths": np.array([0, T, 2], np.int32)}
    (back,) = nonnx.load(tmp_path / "s.onnx").run(None, feeds)
    np.testing.assert_allclose(back, model(x, feeds["lengths"]), err_msg="prediction", **TOL32)


# ---- errors and file handling -----------------------------------------------------------------
def test_save_errors(tmp_path):
    p = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="proj_size"):
        nonnx.save(nlstm.LSTM(I, H, proj_size=2), p)
    with pytest.raises(ValueError, match="opset"):
        nonnx.save(nlstm.GRU(I, H), p, opset=12)
    with pytest.raises(ValueError, match="state=True"):
        nonnx.save(sequential("lstm_linear_last", np.random.default_rng(0)), p, state=True)
    with pytest.raises(TypeError, match="LSTM, GRU, RNN or Sequential"):
        nonnx.save(nlstm.Linear(3, 2), p)
    assert not p.exists() and os.listdir(tmp_path) == []


def test_save_is_atomic(tmp_path, monkeypatch):
    p = tmp_path / "m.onnx"
    p.write_bytes(b"old")
    nonnx.save(nlstm.RNN(I, H, seed=0), p)
    first = p.read_bytes()
    assert first != b"old" and os.listdir(tmp_path) == ["m.onnx"]

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        nonnx.save(nlstm.RNN(I, H, num_layers=2, seed=1), p)
    assert p.read_bytes() == first, "a failed save must leave the old file as it was"
    assert os.listdir(tmp_path) == ["m.onnx"], "a failed save must not leave its temporary file"
