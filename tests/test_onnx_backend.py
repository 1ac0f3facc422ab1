"""ONNX's own backend node tests for LSTM, GRU and RNN (test_lstm_*, test_gru_*, test_rnn_*,
test_simple_rnn_*), run through ``nlstm.onnx.load`` as shipped.

The installed onnx package generates them (``onnx.backend.test.case.node``: each operator's
``export_*`` cases, with the expected outputs of ONNX's reference implementation). They are
written in the layout of ONNX's test data directory (``model.onnx``,
``test_data_set_0/input_*.pb``, ``output_*.pb``) and read back from there, as a user with
that directory would. They feed W, R, B and P as graph inputs, and include the batchwise
(``layout=1``) cases that ONNX Runtime refuses.
"""
import importlib
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
import nlstm.onnx as nonnx  # noqa: E402

PREFIXES = ("test_lstm_", "test_gru_", "test_rnn_", "test_simple_rnn_")


def _cases():
    """ONNX's node test cases of the three operators (their ``_expanded`` function forms
    excluded: those are graphs of other operators)."""
    node = importlib.import_module("onnx.backend.test.case.node")
    for name in ("lstm", "gru", "rnn"):
        importlib.import_module(f"onnx.backend.test.case.node.{name}")
    return sorted((c for c in node._NodeTestCases
                   if c.name.startswith(PREFIXES) and "_expanded" not in c.name),
                  key=lambda c: c.name)


CASES = _cases()


def test_every_operator_has_cases():
    """The generator gave the cases this file exists for (a test that cannot be empty)."""
    names = {c.name for c in CASES}
    for must in ("test_lstm_defaults", "test_lstm_with_peepholes", "test_lstm_batchwise",
                 "test_gru_defaults", "test_gru_seq_length", "test_gru_batchwise",
                 "test_simple_rnn_defaults", "test_rnn_seq_length", "test_simple_rnn_batchwise"):
        assert must in names, f"{must} missing from onnx's generated cases {sorted(names)}"


def _write(case, root):
    """The case in ONNX's test data layout; returns its directory."""
    d = os.path.join(root, case.name)
    os.makedirs(os.path.join(d, "test_data_set_0"))
    onnx.save(case.model, os.path.join(d, "model.onnx"))
    inputs, outputs = case.data_sets[0]
    for kind, arrays in (("input", inputs), ("output", outputs)):
        for i, a in enumerate(arrays):
            t = onnx.numpy_helper.from_array(np.asarray(a))
            with open(os.path.join(d, "test_data_set_0", f"{kind}_{i}.pb"), "wb") as f:
                f.write(t.SerializeToString())
    return d


def _read_pbs(d, kind):
    out = []
    i = 0
    while os.path.exists(os.path.join(d, "test_data_set_0", f"{kind}_{i}.pb")):
        t = onnx.TensorProto()
        with open(os.path.join(d, "test_data_set_0", f"{kind}_{i}.pb"), "rb") as f:
            t.ParseFromString(f.read())
        out.append(onnx.numpy_helper.to_array(t))
        i += 1
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_backend_node_case(case, tmp_path):
    d = _write(case, str(tmp_path))
    model = nonnx.load(os.path.join(d, "model.onnx"))
    inputs, expected = _read_pbs(d, "input"), _read_pbs(d, "output")
    names = [i.name for i in model.get_inputs()]
    assert len(names) == len(inputs), (names, len(inputs))
    got = model.run(None, dict(zip(names, inputs)))
    assert len(got) == len(expected)
    for out, g, e in zip(model.get_outputs(), got, expected):
        assert g.shape == e.shape, out.name
        np.testing.assert_allclose(g, e, rtol=case.rtol, atol=max(case.atol, 1e-6),
                                   err_msg=f"{case.name}: {out.name}")
