"""Outputs and every gradient against torch.nn.LSTM, loaded with the same weights."""
import numpy as np
import pytest

from cases import TOL, make_case, run_nlstm

torch = pytest.importorskip("torch")


def run_torch(case):
    m = case["model"]
    tdt = torch.float64 if m.dtype == np.float64 else torch.float32
    tm = torch.nn.LSTM(m.input_size, m.hidden_size, num_layers=m.num_layers, bias=m.bias,
                       batch_first=m.batch_first, bidirectional=m.bidirectional).to(tdt)
    tm.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in m.state_dict().items()})
    x = torch.tensor(case["x"], requires_grad=True)
    state = None
    if case["state"] is not None:
        state = tuple(torch.tensor(s, requires_grad=True) for s in case["state"])
    if case["lengths"] is None:
        y, (h, c) = tm(x, state)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, torch.as_tensor(case["lengths"]), batch_first=m.batch_first, enforce_sorted=False)
        y, (h, c) = tm(packed, state)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=m.batch_first,
                                                      total_length=case["T"])
    loss = (y * torch.from_numpy(case["dy"])).sum() + (h * torch.from_numpy(case["dh_n"])).sum() \
        + (c * torch.from_numpy(case["dc_n"])).sum()
    loss.backward()
    out = dict(y=y, h_n=h, c_n=c, dx=x.grad)
    if state is not None:
        out["dh0"], out["dc0"] = state[0].grad, state[1].grad
    out = {k: v.detach().numpy() for k, v in out.items()}
    out["grads"] = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(24))
def test_matches_torch(seed, dtype):
    case = make_case(seed, dtype, allow_zero_length=False)  # torch rejects length 0
    got, want = run_nlstm(case), run_torch(case)
    tol = TOL[dtype]
    for name in want:
        if name != "grads":
            np.testing.assert_allclose(got[name], want[name], err_msg=name, **tol)
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
