"""nlstm.from_torch / nlstm.to_torch: torch -> nlstm -> torch round trips, outputs and final
states against torch itself on random weights and inputs, with lengths (packed sequences),
both layouts, both directions and stacked layers."""
import numpy as np
import pytest

import nlstm
from onnx_helpers import seed_of

torch = pytest.importorskip("torch")
nn = torch.nn
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

T, B, I, H = 6, 3, 4, 5
TOL = {torch.float32: dict(rtol=2e-4, atol=2e-5), torch.float64: dict(rtol=1e-9, atol=1e-11)}
LENGTHS = np.array([T, 2, 4])  # torch's packing rejects 0


def torch_run(m, x, state=None, lengths=None):
    """y and the final state(s) from a torch recurrent module, padding zeroed as in nlstm."""
    with torch.no_grad():
        inp = torch.from_numpy(x)
        st = None if state is None else (torch.from_numpy(state[0]) if len(state) == 1
                                          else tuple(torch.from_numpy(s) for s in state))
        if lengths is None:
            y, final = m(inp, st)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(inp, torch.as_tensor(lengths),
                                                       batch_first=m.batch_first, enforce_sorted=False)
            y, final = m(packed, st)
            y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=m.batch_first, total_length=T)
    final = list(final) if isinstance(final, tuple) else [final]
    return [y.numpy()] + [f.numpy() for f in final]


def nlstm_run(layer, x, state=None, lengths=None):
    st = None if state is None else (state[0] if len(state) == 1 else tuple(state))
    y, final = layer(x, st, lengths)
    return [y] + (list(final) if isinstance(final, tuple) else [final])


def compare(got, want, what, tol):
    for name, g, w in zip(("y", "h_n", "c_n"), got, want):
        assert g.shape == w.shape, f"{what}: {name} has shape {g.shape}, expected {w.shape}"
        np.testing.assert_allclose(g, w, err_msg=f"{what}: {name}", **tol)


def torch_module(kind, L, bi, bf, dtype, bias=True):
    kw = dict(num_layers=L, bidirectional=bi, batch_first=bf, bias=bias)
    if kind == "lstm_proj":
        m = nn.LSTM(I, H, proj_size=3, **kw)
    elif kind == "rnn_relu":
        m = nn.RNN(I, H, nonlinearity="relu", **kw)
    else:
        m = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN}[kind](I, H, **kw)
    m = m.to(dtype)
    with torch.no_grad():  # non-zero biases well away from the default init
        for p in m.parameters():
            p.uniform_(-0.6, 0.6)
    return m.eval()


def inputs(m, rng, dtype):
    npdt = np.float64 if dtype == torch.float64 else np.float32
    x = rng.standard_normal((B, T, I) if m.batch_first else (T, B, I)).astype(npdt)
    D = 2 if m.bidirectional else 1
    hs = m.proj_size if getattr(m, "proj_size", 0) else H
    sizes = [hs, H] if isinstance(m, nn.LSTM) else [hs]
    state = [rng.standard_normal((m.num_layers * D, B, n)).astype(npdt) for n in sizes]
    return x, state


CONFIGS = [(1, False, False), (2, True, True), (3, False, True), (2, True, False)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"L{c[0]}{'_bi' if c[1] else ''}{'_bf' if c[2] else ''}")
@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"])
def test_from_torch_matches_torch(kind, config, dtype):
    rng = np.random.default_rng(seed_of(kind, config, str(dtype)))
    m = torch_module(kind, *config, dtype)
    layer = nlstm.from_torch(m)
    assert layer.dtype == (np.float64 if dtype == torch.float64 else np.float32)
    x, state = inputs(m, rng, dtype)
    what = f"{kind} {config}"
    for st, lens in ((None, None), (state, LENGTHS)):
        compare(nlstm_run(layer, x, st, lens), torch_run(m, x, st, lens),
                f"{what} state={st is not None} lengths={lens is not None}", TOL[dtype])
    back = nlstm.to_torch(layer)
    assert type(back) is type(m) and not back.training
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k].numpy(), v.numpy(), err_msg=f"round trip {k}")
    compare(torch_run(back, x, state, LENGTHS), torch_run(m, x, state, LENGTHS),
            f"{what}: torch -> nlstm -> torch", TOL[dtype])


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu", "rnn_relu_activations"])
def test_to_torch_from_nlstm_layer(kind):
    rng = np.random.default_rng(seed_of(kind, "to"))
    cls = {"lstm": nlstm.LSTM, "gru": nlstm.GRU}.get(kind, nlstm.RNN)
    # activations=("Relu",) is documented as nonlinearity="relu": the same torch module
    kw = {"rnn_relu": dict(nonlinearity="relu"),
          "rnn_relu_activations": dict(activations=("Relu", "Relu"))}.get(kind, {})
    layer = cls(I, H, num_layers=2, bidirectional=True, batch_first=True, seed=3, bias=kind != "gru", **kw)
    m = nlstm.to_torch(layer)
    if kind.startswith("rnn_relu"):
        assert m.nonlinearity == "relu"
    x, state = inputs(m, rng, torch.float32)
    compare(torch_run(m, x, state, LENGTHS), nlstm_run(layer, x, state, LENGTHS), f"{kind} to_torch",
            TOL[torch.float32])


def test_linear_round_trip():
    rng = np.random.default_rng(0)
    m = nn.Linear(I, 3).double()
    lin = nlstm.from_torch(m)
    assert isinstance(lin, nlstm.Linear) and lin.dtype == np.float64
    x = rng.standard_normal((2, 5, I))
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(lin(x), want, err_msg="Linear y", **TOL[torch.float64])
    back = nlstm.to_torch(nlstm.from_torch(nn.Linear(I, 3, bias=False)))
    assert back.bias is None


@pytest.mark.parametrize("output", ["last", "sequence"])
def test_sequential_round_trip(output):
    """nn.Sequential(GRU, Linear, LSTM(bidirectional), Dropout, Linear) -> nlstm.Sequential,
    whose predictions the module from to_torch reproduces in torch."""
    rng = np.random.default_rng(seed_of("seq", output))
    tm = nn.Sequential(nn.GRU(I, H, batch_first=True), nn.Linear(H, 4),
                       nn.LSTM(4, H, bidirectional=True, num_layers=2), nn.Dropout(0.2),
                       nn.Linear(2 * H, 2))
    with torch.no_grad():
        for p in tm.parameters():
            p.uniform_(-0.6, 0.6)
    model = nlstm.from_torch(tm, output=output)
    assert isinstance(model, nlstm.Sequential) and model.output == output
    assert [type(l).__name__ for l in model.layers] == ["GRU", "Linear", "LSTM", "Dropout", "Linear"]
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    back = nlstm.to_torch(model)
    assert isinstance(back, nn.Sequential) and not back.training
    for lengths in (None, LENGTHS):
        want = model(x, lengths)
        with torch.no_grad():
            got = back(torch.from_numpy(x), lengths).numpy()
        np.testing.assert_allclose(got, want, err_msg=f"prediction ({output}, lengths={lengths is not None})",
                                   **TOL[torch.float32])
    again = nlstm.from_torch(back)  # keeps its output mode
    assert again.output == output
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k], v, err_msg=f"round trip {k}")


def test_errors():
    with pytest.raises(ValueError, match="peephole"):
        nlstm.to_torch(nlstm.LSTM(I, H, peephole=True))
    with pytest.raises(ValueError, match="clip"):
        nlstm.to_torch(nlstm.LSTM(I, H, clip=1.0))
    with pytest.raises(ValueError, match="input_forget"):
        nlstm.to_torch(nlstm.LSTM(I, H, input_forget=True))
    with pytest.raises(ValueError, match="linear_before_reset"):
        nlstm.to_torch(nlstm.GRU(I, H, linear_before_reset=False))
    with pytest.raises(TypeError, match="Conv1d"):
        nlstm.from_torch(nn.Conv1d(2, 2, 3))
    with pytest.raises(TypeError, match="float16"):
        nlstm.from_torch(nn.GRU(I, H).half())
    layer = nlstm.from_torch(nn.GRU(I, H).half(), dtype=np.float32)
    assert layer.dtype == np.float32
    with pytest.raises(TypeError, match="to_torch converts"):
        nlstm.to_torch(object())
