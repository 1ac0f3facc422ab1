"""Outputs and every gradient against torch.nn.LSTM / GRU / RNN, loaded with the same weights."""
import numpy as np
import pytest

from cases import TOL, TORCH_KINDS, make_case, run_nlstm

torch = pytest.importorskip("torch")


def torch_module(m):
    tdt = torch.float64 if m.dtype == np.float64 else torch.float32
    kw = dict(num_layers=m.num_layers, bias=m.bias, batch_first=m.batch_first,
              bidirectional=m.bidirectional)
    if m._name == "RNN":
        kw["nonlinearity"] = m.nonlinearity
    if getattr(m, "proj_size", 0):
        kw["proj_size"] = m.proj_size
    tm = getattr(torch.nn, m._name)(m.input_size, m.hidden_size, **kw).to(tdt)
    tm.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in m.state_dict().items()})
    return tm


def run_torch(case):
    m = case["model"]
    tm = torch_module(m)
    x = torch.tensor(case["x"], requires_grad=True)
    init = None if case["state"] is None else [torch.tensor(s, requires_grad=True) for s in case["state"]]
    state = None if init is None else (init[0] if len(init) == 1 else tuple(init))
    if case["lengths"] is None:
        y, final = tm(x, state)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, torch.as_tensor(case["lengths"]), batch_first=m.batch_first, enforce_sorted=False)
        y, final = tm(packed, state)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=m.batch_first,
                                                      total_length=case["T"])
    final = list(final) if isinstance(final, tuple) else [final]
    loss = (y * torch.from_numpy(case["dy"])).sum()
    for f, g in zip(final, case["dfinal"]):
        loss = loss + (f * torch.from_numpy(g)).sum()
    loss.backward()
    out = dict(y=y.detach().numpy(), final=[f.detach().numpy() for f in final],
               dx=x.grad.numpy())
    if init is not None:
        out["dinit"] = [s.grad.numpy() for s in init]
    out["grads"] = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("kind", TORCH_KINDS)
def test_matches_torch(kind, seed, dtype):
    case = make_case(seed, dtype, kind, allow_zero_length=False)  # torch rejects length 0
    got, want = run_nlstm(case), run_torch(case)
    tol = TOL[dtype]
    for name in ("y", "dx"):
        np.testing.assert_allclose(got[name], want[name], err_msg=name, **tol)
    for name in ("final", "dinit"):
        for i, w in enumerate(want.get(name, [])):
            np.testing.assert_allclose(got[name][i], w, err_msg=f"{name}[{i}]", **tol)
    assert set(got["grads"]) == set(want["grads"])
    for k, g in want["grads"].items():
        np.testing.assert_allclose(got["grads"][k], g, err_msg=k, **tol)


def test_torch_state_dict_loads_unchanged():
    import nlstm
    tm = torch.nn.LSTM(5, 7, num_layers=2, bidirectional=True)
    m = nlstm.LSTM(5, 7, num_layers=2, bidirectional=True)
    m.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((6, 3, 5)).astype(np.float32)
    y, (h, c) = m(x)
    ty, (th, tc) = tm(torch.from_numpy(x))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c, tc.detach().numpy(), rtol=1e-4, atol=1e-5)
