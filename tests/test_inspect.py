"""nlstm.inspect: gates and states against the float64 oracle and torch, the gradients with
respect to h_t, c_t and x_t against finite differences and torch autograd, padding, a model
left as it was, bad input, plots and the ``nlstm inspect`` command."""
import copy
import re

import numpy as np
import pytest

import nlstm
import reference as R
from cases import ALL_KINDS, KINDS, TORCH_KINDS

# inspect reads the LSTM, GRU and RNN cells; it refuses LayerNormLSTM (test_lnlstm_zoneout.py)
INSPECTED = sorted(k for k in ALL_KINDS if not k.startswith("lnlstm"))
from gradcheck import numeric_partial
from nlstm.inspect import Inspection, Trace
from test_cli import assert_ok, run, series_csv  # noqa: F401 (series_csv is a fixture)
from test_unit_split import split_calls  # noqa: F401 (a fixture)

TOL64 = dict(rtol=1e-9, atol=1e-11)


def make(kind, seed=0, I=3, H=4, L=2, bidirectional=True, dtype=np.float64, **kw):
    cls, extra, ref_cell = ALL_KINDS[kind]
    extra = dict(extra)
    if extra.get("proj_size") == -1:
        extra["proj_size"] = 2
    m = cls(I, H, num_layers=L, bidirectional=bidirectional, dtype=dtype, seed=seed, **extra, **kw)
    # Random non-zero biases and peepholes (the init's are small); a sizeable W_hh so the
    # recurrence matters.
    rng = np.random.default_rng(seed + 100)
    for name, p in m.params.items():
        p[...] = rng.uniform(-0.8, 0.8, p.shape)
    return m, ref_cell()


def ref_outputs(m, cell, x, lengths, bump=None):
    """The oracle's y (T, B, D·O) of a stack run step by step from a zero state, with an
    optional bump = (k, d, b, t, s, j, eps): eps added to element j of state s (0: h, 1: c)
    right after step t of row b, layer k, direction d (so y_t and every later step see it)."""
    p = {k: np.asarray(v, np.float64) for k, v in m.params.items()}
    T, B, _ = x.shape
    D, O = m.num_directions, m._out_size
    inp = np.asarray(x, np.float64)
    for k in range(m.num_layers):
        y = np.zeros((T, B, D * O))
        for d in range(D):
            w, _ = R._weights(p, k, d)
            cd = cell.direction(d)  # ONNX activations may differ per direction
            for b in range(B):
                state = tuple(np.zeros(n) for n in m._state_sizes())
                for t in R._order(lengths[b], d == 1):
                    h_prev = state[0]
                    state, _ = cd.step(w, inp[t, b], state)
                    if bump is not None and bump[:4] == (k, d, b, t):
                        s, j, eps = bump[4:]
                        e = eps * (np.arange(state[s].size) == j)
                        if s == 0:
                            state = (state[0] + e,) + state[1:]
                        else:
                            state = _lstm_bumped_c(cd, w, inp[t, b], h_prev, state[1] + e)
                    y[t, b, d * O:(d + 1) * O] = state[0]
        inp = y
    return y


def _lstm_bumped_c(cell, w, x, h, c):
    """The oracle LSTM's (h_t, c_t) for a bumped c_t: h_t = o⊙h(c_t), where o reads c_t
    through its peephole, so the bump reaches everything that depends on c_t."""
    H = c.shape[0]
    zo = w["weight_ih"][3 * H:] @ x + w["bias_ih"][3 * H:] + w["weight_hh"][3 * H:] @ h \
        + w["bias_hh"][3 * H:]
    if cell.peephole:
        zo = zo + w["peephole"][2 * H:] * c
    m = cell.fa(zo) * cell.hact(c)  # fa clamps to ±clip; h(c) is not clipped
    return (w["weight_hr"] @ m if cell.proj else m), c


@pytest.mark.parametrize("kind", INSPECTED)
def test_gates_and_states_match_the_oracle(kind, rng):
    m, cell = make(kind, seed=3)
    T, B = 5, 4
    x = rng.standard_normal((T, B, 3))
    lengths = np.array([5, 2, 0, 4])
    r = nlstm.inspect(m, x, lengths=lengths)
    assert isinstance(r, Inspection) and r.dx is None and r.loss is None
    names = [f"l{k}{s}" for k in range(2) for s in ("", "_reverse")]
    assert [t.name for t in r.traces] == names
    y_top, _, cache = R.forward(cell, m.params, x, [np.zeros((4, B, n)) for n in m._state_sizes()],
                                lengths, 2, True)
    O = m._out_size
    gate_pos = {"LSTM": dict(i=3, f=4, g=5, o=6), "GRU": dict(r=2, z=3, n=4), "RNN": dict(pre=2)}
    for i, tr in enumerate(r.traces):
        k, d = divmod(i, 2)
        assert tr.dh is None and tr.dc is None and tr.dx is None and tr.grad_norm is None
        assert tr.cell == type(m).__name__
        assert set(tr.gates) == set(gate_pos[tr.cell])
        assert (tr.c is not None) == (tr.cell == "LSTM")
        for b in range(B):
            for t in range(T):
                if t >= lengths[b]:
                    for n, g in tr.gates.items():
                        assert not g[t, b].any(), f"{n} past the length"
                    assert not tr.h[t, b].any() and (tr.c is None or not tr.c[t, b].any())
                    continue
                saved = cache["saved"][(k, d, b, t)]
                where = f"{tr.name} t={t} b={b}"
                for n, pos in gate_pos[tr.cell].items():
                    np.testing.assert_allclose(tr.gates[n][t, b], saved[pos], **TOL64,
                                               err_msg=f"{where} gate {n}")
                if tr.cell == "LSTM":
                    np.testing.assert_allclose(tr.c[t, b], saved[7], **TOL64, err_msg=f"{where} c")
                # h_t: the top layer's output, or the next layer's input at t
                h = y_top[t, b] if k == 1 else cache["saved"][(1, 0, b, t)][0]
                np.testing.assert_allclose(tr.h[t, b], h[d * O:(d + 1) * O], **TOL64,
                                           err_msg=f"{where} h")


def _inspected(kind, seed, rng, lengths):
    """A float64 two-layer bidirectional model of ``kind``, random x (T = max length, I = 3)
    and dy, and its inspection."""
    m, cell = make(kind, seed=seed)
    lengths = np.array(lengths)
    x = rng.standard_normal((lengths.max(), len(lengths), 3))
    dy = rng.standard_normal(x.shape[:2] + (m.output_size,))
    return m, cell, x, lengths, dy, nlstm.inspect(m, x, lengths=lengths, dy=dy)


def _bumped_loss(m, cell, x, lengths, dy, bump):
    return lambda eps: float((ref_outputs(m, cell, x, lengths, bump[:6] + (eps,)) * dy).sum())


@pytest.mark.parametrize("kind", INSPECTED)
def test_gradients_match_finite_differences(kind):
    """dL/dh_t, dL/dc_t (an additive bump of the state after step t, in the oracle's float64
    forward) and dL/dx_t, for L = Σ y·dy, at sampled steps of every layer and direction."""
    rng = np.random.default_rng(7)
    m, cell, x, lengths, dy, r = _inspected(kind, 5, rng, [5, 3, 1])
    T, B = x.shape[:2]
    np.testing.assert_allclose(r.traces[-1].h, np.where(
        np.arange(T)[:, None, None] < lengths[None, :, None], ref_outputs(m, cell, x, lengths), 0
    )[..., (m.num_directions - 1) * m._out_size:], **TOL64)
    for i, tr in enumerate(r.traces):
        k, d = divmod(i, 2)
        for _ in range(4):
            b = int(rng.integers(B))
            t = int(rng.integers(lengths[b]))
            for s, arr in enumerate((tr.dh, tr.dc)):
                if arr is None:
                    continue
                j = int(rng.integers(arr.shape[2]))
                f = _bumped_loss(m, cell, x, lengths, dy, (k, d, b, t, s, j))
                fd = (f(1e-6) - f(-1e-6)) / 2e-6
                np.testing.assert_allclose(arr[t, b, j], fd, rtol=1e-6, atol=1e-8,
                                           err_msg=f"{tr.name} d{'hc'[s]}[t={t}, b={b}, j={j}]")
    assert r.dx.shape == x.shape
    f = lambda: float((m(x, lengths=lengths)[0] * dy).sum())
    for _ in range(6):
        idx = (int(rng.integers(T)), int(rng.integers(B)), int(rng.integers(3)))
        np.testing.assert_allclose(r.dx[idx], numeric_partial(f, x, idx), rtol=1e-6, atol=1e-9,
                                   err_msg=f"dx{idx}")
    np.testing.assert_array_equal(r.traces[0].dx, r.dx)
    assert r.traces[2].dx is r.traces[3].dx  # a layer's input gradient: both directions' sum


torch = None


def _torch_steps(m, x, lengths, dy):
    """The stack step by step in torch from torch's own module's weights (nlstm.to_torch),
    every gate, h_t and c_t kept with retain_grad; returns (saved, y, inputs, x tensor) after
    backpropagating L = Σ y·dy."""
    F = torch.nn.functional
    mod = nlstm.to_torch(m)
    cell = type(m).__name__
    T, B, _ = x.shape
    D, O, H = m.num_directions, m._out_size, m.hidden_size
    xt = torch.tensor(x, requires_grad=True)
    inputs = {0: [[xt[t, b] for t in range(T)] for b in range(B)]}
    saved = {}
    zero = torch.zeros(O, dtype=xt.dtype)
    for k in range(m.num_layers):
        outs = [[[zero] * D for _ in range(T)] for _ in range(B)]
        for d, sfx in enumerate(("", "_reverse")[:D]):
            w = lambda n: getattr(mod, f"{n}_l{k}{sfx}")
            for b in range(B):
                h, c = torch.zeros(O, dtype=xt.dtype), torch.zeros(H, dtype=xt.dtype)
                for t in R._order(lengths[b], d == 1):
                    xi = inputs[k][b][t]
                    gi = w("weight_ih") @ xi + w("bias_ih")
                    gh = w("weight_hh") @ h + w("bias_hh")
                    if cell == "LSTM":
                        zi, zf, zg, zo = (gi + gh).split(H)
                        g = dict(i=torch.sigmoid(zi), f=torch.sigmoid(zf), g=torch.tanh(zg),
                                 o=torch.sigmoid(zo))
                        c = g["f"] * c + g["i"] * g["g"]
                        h = g["o"] * torch.tanh(c)
                        if m.proj_size:
                            h = w("weight_hr") @ h
                        c.retain_grad()
                    elif cell == "GRU":
                        ir, iz, i_n = gi.split(H)
                        hr, hz, hn = gh.split(H)
                        g = dict(r=torch.sigmoid(ir + hr), z=torch.sigmoid(iz + hz))
                        g["n"] = torch.tanh(i_n + g["r"] * hn)
                        h = (1 - g["z"]) * g["n"] + g["z"] * h
                    else:
                        g = dict(pre=gi + gh)
                        h = F.relu(g["pre"]) if m.nonlinearity == "relu" else torch.tanh(g["pre"])
                    h.retain_grad()
                    saved[(k, d, b, t)] = dict(g, h=h, c=c if cell == "LSTM" else None)
                    outs[b][t][d] = h
        inputs[k + 1] = [[torch.cat(outs[b][t]) for t in range(T)] for b in range(B)]
        for b in range(B):
            for t in range(lengths[b]):
                inputs[k + 1][b][t].retain_grad()
    y = torch.stack([torch.stack(row) for row in inputs[m.num_layers]], dim=1)  # (T, B, D·O)
    mask = torch.tensor(np.arange(T)[:, None, None] < lengths[None, :, None])
    (y * torch.tensor(dy) * mask).sum().backward()
    return mod, saved, y, inputs, xt


@pytest.mark.parametrize("kind", TORCH_KINDS)
def test_against_torch_autograd(kind):
    global torch
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    m, _, x, lengths, dy, r = _inspected(kind, 9, rng, [6, 4, 2])
    T, B = x.shape[:2]
    mod, saved, y, inputs, xt = _torch_steps(m, x, lengths, dy)
    # The step-by-step torch code is torch's own module, step for step.
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(x), torch.tensor(lengths),
                                                     enforce_sorted=False)
    y_mod, _ = torch.nn.utils.rnn.pad_packed_sequence(mod(packed)[0], total_length=T)
    np.testing.assert_allclose(y.detach().numpy(), y_mod.detach().numpy(), **TOL64)
    for i, tr in enumerate(r.traces):
        k, d = divmod(i, m.num_directions)
        for b in range(B):
            for t in range(lengths[b]):
                s = saved[(k, d, b, t)]
                where = f"{tr.name} t={t} b={b}"
                for n in tr.gates:
                    np.testing.assert_allclose(tr.gates[n][t, b], s[n].detach().numpy(), **TOL64,
                                               err_msg=f"{where} gate {n}")
                np.testing.assert_allclose(tr.h[t, b], s["h"].detach().numpy(), **TOL64, err_msg=where)
                np.testing.assert_allclose(tr.dh[t, b], s["h"].grad.numpy(), **TOL64,
                                           err_msg=f"{where} dh")
                if tr.cell == "LSTM":
                    np.testing.assert_allclose(tr.c[t, b], s["c"].detach().numpy(), **TOL64)
                    np.testing.assert_allclose(tr.dc[t, b], s["c"].grad.numpy(), **TOL64,
                                               err_msg=f"{where} dc")
                dx_ref = xt.grad[t, b] if k == 0 else inputs[k][b][t].grad
                np.testing.assert_allclose(tr.dx[t, b], dx_ref.numpy(), **TOL64,
                                           err_msg=f"{where} dx")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_one_row_split_over_threads(split_calls, monkeypatch, kind, rng):  # noqa: F811
    """A one-row batch whose hidden units are split over two threads (the unit-split
    kernels save the gates and write the gate gradients too) gives the same traces as the
    row inside a batch of two (the row kernels)."""
    from nlstm import _threads

    if not _threads.cpus_available() >= 2:
        monkeypatch.setattr(_threads, "cpus_available", lambda: 2)
    m, _ = make(kind, seed=1, H=20)
    x = rng.standard_normal((6, 1, 3))
    dy = rng.standard_normal((6, 1, m.output_size))
    one = nlstm.inspect(m, x, dy=dy)
    assert split_calls["forward"] > 0 and split_calls["backward"] > 0
    two = nlstm.inspect(m, np.concatenate([x, x], axis=1), dy=np.concatenate([dy, dy], axis=1))
    for a, b in zip(one.traces, two.traces):
        for name in ("h", "c", "dh", "dc", "dx"):
            if getattr(a, name) is not None:
                np.testing.assert_allclose(getattr(a, name)[:, 0], getattr(b, name)[:, 1], **TOL64,
                                           err_msg=f"{a.name}.{name}")
        for n in a.gates:
            np.testing.assert_allclose(a.gates[n][:, 0], b.gates[n][:, 1], **TOL64)


def test_sequential_loss_and_input_gradient(rng):
    """A Sequential: every recurrent layer's traces, the loss and dL/dx of the model (finite
    differences of model.evaluate), with dropout (off in inspect) and a bidirectional stack."""
    dt = np.float64
    model = nlstm.Sequential([nlstm.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True,
                                         dtype=dt, seed=1, dropout=0.3),
                              nlstm.Dropout(0.4, seed=2),
                              nlstm.GRU(8, 5, dtype=dt, seed=3),
                              nlstm.Linear(5, 2, dtype=dt, seed=4)], output="last")
    B, T = 4, 6
    x = rng.standard_normal((B, T, 3))
    lengths = np.array([6, 2, 5, 1])
    target = rng.standard_normal((B, 2))
    r = nlstm.inspect(model, x, target=target, lengths=lengths)
    assert [t.name for t in r.traces] == ["0.l0", "0.l0_reverse", "0.l1", "0.l1_reverse", "2.l0"]
    assert r.loss == pytest.approx(model.evaluate(x, target, lengths), rel=1e-12)
    assert r.dx.shape == (T, B, 3)
    f = lambda: model.evaluate(x, target, lengths)
    for _ in range(8):
        b = int(rng.integers(B))
        idx = (b, int(rng.integers(lengths[b])), int(rng.integers(3)))
        np.testing.assert_allclose(r.dx[idx[1], idx[0], idx[2]], numeric_partial(f, x, idx),
                                   rtol=1e-6, atol=1e-10, err_msg=f"dx{idx}")
    # The GRU reads only its last valid step (output="last"): its dh elsewhere is what
    # flows back through time, and the LSTM's top traces get the GRU's input gradient.
    gru = r["2.l0"]
    upstream = np.concatenate([r["0.l1"].dh, r["0.l1_reverse"].dh], axis=2) \
        - _own_carry(model.layers[0], r) * r["0.l1"].mask[..., None]
    np.testing.assert_allclose(upstream, gru.dx, **TOL64)
    # A loss given by name; a dy instead of a target gives the same as the loss's gradient.
    dout = 2 * (model(x, lengths) - target) / target.size
    r2 = nlstm.inspect(model, x, dy=dout, lengths=lengths)
    np.testing.assert_allclose(r2.dx, r.dx, **TOL64)
    r3 = nlstm.inspect(model, x, target=target, lengths=lengths, loss="mse")
    np.testing.assert_array_equal(r3.dx, r.dx)


def _own_carry(lstm, r):
    """What the top LSTM layer's own next steps send back to h_t (dz_{t±1}·W_hh), from the
    traces' gate gradients recomputed the oracle's way: dL/dh_t - this = the upstream dy."""
    out = []
    for d, sfx in enumerate(("", "_reverse")):
        tr = r[f"0.l1{sfx}"]
        g, c, dh, dc = tr.gates, tr.c, tr.dh, tr.dc
        tc = np.tanh(c)
        # c_{t-1} of each step, in time order, for this direction
        c_prev = np.zeros_like(c)
        if d == 0:
            c_prev[1:] = c[:-1]
        else:
            c_prev[:-1] = c[1:]
        valid = tr.mask[..., None]
        c_prev = np.where(valid, c_prev, 0)
        dz = np.concatenate([dc * g["g"] * g["i"] * (1 - g["i"]), dc * c_prev * g["f"] * (1 - g["f"]),
                             dc * g["i"] * (1 - g["g"] ** 2), dh * tc * g["o"] * (1 - g["o"])], axis=2)
        carry = np.where(valid, dz, 0) @ lstm.params[f"weight_hh_l1{sfx}"]
        shifted = np.zeros_like(carry)
        if d == 0:
            shifted[:-1] = carry[1:]
        else:
            shifted[1:] = carry[:-1]
        out.append(shifted)
    return np.concatenate(out, axis=2)


def test_padding_is_masked(rng):
    """Rows of different lengths (one of 0) give, at every step, the same traces as each row
    alone, zeros past each length, and summaries over the rows that reach the step only
    (NaN where none does); padding values in x and dy change nothing."""
    m, _ = make("lstm", seed=2, L=1)
    T, B = 6, 4
    lengths = np.array([5, 2, 0, 4])  # no row reaches step 6
    x = rng.standard_normal((T, B, 3))
    dy = rng.standard_normal((T, B, 8))
    pad = np.arange(T)[:, None] >= lengths[None, :]
    x[pad], dy[pad] = 1e3, 1e3
    r = nlstm.inspect(m, x, lengths=lengths, dy=dy)
    rows = {b: nlstm.inspect(m, x[:L, b], dy=dy[:L, b]) for b, L in enumerate(lengths) if L}
    for i, tr in enumerate(r.traces):
        for name in ("h", "c", "dh", "dc", "dx"):
            a = getattr(tr, name)
            assert not a[pad].any(), f"{tr.name}.{name} past a length"
            for b, rb in rows.items():
                np.testing.assert_allclose(a[:lengths[b], b], getattr(rb.traces[i], name)[:, 0],
                                           **TOL64, err_msg=f"{tr.name}.{name} row {b}")
        norms = np.linalg.norm(tr.dh, axis=2)
        for t in range(T):
            live = [b for b in range(B) if t < lengths[b]]
            if not live:
                assert np.isnan(tr.grad_norm[t]) and np.isnan(tr.mean_forget[t])
                continue
            assert tr.grad_norm[t] == pytest.approx(np.mean(norms[t, live]), rel=1e-12)
            assert tr.mean_forget[t] == pytest.approx(np.mean(tr.gates["f"][t, live]), rel=1e-12)
            sat = [((tr.gates[n][t, live] < 0.05) | (tr.gates[n][t, live] > 0.95)).mean()
                   for n in "ifo"]
            assert tr.saturation[t] == pytest.approx(np.mean(sat), rel=1e-12)


def test_summaries(rng):
    """Saturation counts units outside [0.05, 0.95] of the sigmoid gates only; the RNN has
    none; the text summary names every trace."""
    m, _ = make("lstm", seed=4, L=1, bidirectional=False)
    for p in m.params.values():
        p *= 8  # saturate many units
    x = rng.standard_normal((7, 5, 3))
    r = nlstm.inspect(m, x, dy=np.ones((7, 5, 4)))
    tr = r.traces[0]
    gates = np.concatenate([tr.gates[n] for n in "ifo"], axis=2)
    want = ((gates < 0.05) | (gates > 0.95)).mean(axis=(1, 2))
    np.testing.assert_allclose(tr.saturation, want, rtol=1e-12)
    assert 0.2 < want.mean() < 1
    s = tr.summary()
    assert set(s) >= {"grad_norm", "cell_grad_norm", "input_grad_norm", "saturation", "mean_forget",
                      "mean_i", "mean_f", "mean_g", "mean_o"}
    text = r.summary()
    assert "l0 (LSTM, 7 steps, 5 rows)" in text and "|dL/dc_t|" in text and "mean forget" in text
    rnn = nlstm.RNN(3, 4, seed=0)
    rr = nlstm.inspect(rnn, x.astype(np.float32))
    assert rr.traces[0].saturation is None and rr.traces[0].mean_forget is None
    assert "saturated" not in rr.summary() and "|dL/dh_t|" not in rr.summary()


def test_layer_target_layouts(rng):
    """A bare layer with a target: MSE (default) or a named loss against y in the layer's own
    layout (batch-first, time-major, unbatched) gives the gradient of that loss."""
    for layout in ("time", "batch", "unbatched"):
        m = nlstm.GRU(3, 4, batch_first=layout == "batch", dtype=np.float64, seed=0)
        shape = {"time": (5, 2, 3), "batch": (2, 5, 3), "unbatched": (5, 3)}[layout]
        x = rng.standard_normal(shape)
        y = m(x)[0]
        target = rng.standard_normal(y.shape)
        r = nlstm.inspect(m, x, target=target)
        assert r.loss == pytest.approx(np.mean((y - target) ** 2), rel=1e-12)
        r2 = nlstm.inspect(m, x, dy=2 * (y - target) / y.size)
        np.testing.assert_allclose(r.dx, r2.dx, **TOL64)
        np.testing.assert_allclose(r.traces[0].dh, r2.traces[0].dh, **TOL64)
        assert r.dx.shape == (5, 1 if layout == "unbatched" else 2, 3)


def _state(model):
    layers = model.layers if isinstance(model, nlstm.Sequential) else [model]
    rngs = [copy.deepcopy(l._rng.bit_generator.state) for l in layers if isinstance(l, nlstm.Dropout)]
    rngs += [copy.deepcopy(l._dropout_rng.bit_generator.state) for l in layers if hasattr(l, "_dropout_rng")]
    return ({k: v.copy() for k, v in model.params.items()},
            {k: v.copy() for k, v in model.grads.items()}, rngs)


def _assert_same_state(a, b):
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k], err_msg=f"param {k}")
        np.testing.assert_array_equal(a[1][k], b[1][k], err_msg=f"grad {k}")
    assert a[2] == b[2], "a random stream moved"


def _twin(model):
    twin = nlstm.Sequential.from_config(model.get_config())
    twin.load_state_dict(model.state_dict())
    return twin


def test_model_left_unchanged(rng):
    """Weights, gradients, dropout streams and a pending training forward are as before, after
    an inspect that succeeds and after one that fails: the pending backward gives exactly
    what it gives without the inspect in between."""
    model = nlstm.Sequential([nlstm.LSTM(3, 6, num_layers=2, batch_first=True, seed=1, dropout=0.5),
                              nlstm.Dropout(0.5, seed=2), nlstm.Linear(6, 1, seed=3)])
    twin = _twin(model)
    x = rng.standard_normal((4, 7, 3)).astype(np.float32)
    y = rng.standard_normal((4, 1)).astype(np.float32)
    for m in (model, twin):
        for g in m.grads.values():
            g[...] = 0.25
        out, _ = m.forward(x, train=True)
    before = _state(model)
    x2 = rng.standard_normal((3, 9, 3))
    r = nlstm.inspect(model, x2, target=rng.standard_normal((3, 1)), lengths=[9, 4, 1])
    assert r.dx is not None
    _assert_same_state(before, _state(model))
    with pytest.raises(ValueError, match="target"):
        nlstm.inspect(model, x2, target=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="dy"):
        nlstm.inspect(model, x2, dy=np.zeros((3, 5)))
    _assert_same_state(before, _state(model))
    dout = 2 * (out - y) / y.size
    np.testing.assert_array_equal(model.backward(dout), twin.backward(dout))
    _assert_same_state(_state(twin), _state(model))
    # A bare layer with a pending training forward.
    layer, twin_layer = nlstm.LSTM(3, 5, seed=0), nlstm.LSTM(3, 5, seed=0)
    xs = rng.standard_normal((6, 2, 3)).astype(np.float32)
    dy = rng.standard_normal((6, 2, 5)).astype(np.float32)
    layer.forward(xs)
    twin_layer.forward(xs)
    before = _state(layer)
    nlstm.inspect(layer, rng.standard_normal((4, 3, 3)), dy=np.ones((4, 3, 5)))
    _assert_same_state(before, _state(layer))
    np.testing.assert_array_equal(layer.backward(dy)[0], twin_layer.backward(dy)[0])


def test_bad_input(rng):
    m = nlstm.LSTM(3, 4, seed=0)
    x = rng.standard_normal((5, 2, 3))
    with pytest.raises(TypeError, match="model must be an nlstm"):
        nlstm.inspect(nlstm.Linear(3, 4), x)
    with pytest.raises(TypeError, match="model must be an nlstm"):
        nlstm.inspect("m.npz", x)
    with pytest.raises(ValueError, match="not both"):
        nlstm.inspect(m, x, target=np.zeros((5, 2, 4)), dy=np.zeros((5, 2, 4)))
    with pytest.raises(ValueError, match="loss needs a target"):
        nlstm.inspect(m, x, loss="mse")
    with pytest.raises(ValueError, match="input.size\\(-1\\) must be equal to input_size"):
        nlstm.inspect(m, rng.standard_normal((5, 2, 2)))
    with pytest.raises(ValueError, match="dy"):
        nlstm.inspect(m, x, dy=np.zeros((5, 2, 3)))
    with pytest.raises(ValueError, match="target"):
        nlstm.inspect(m, x, target=np.zeros((5, 3, 4)))
    with pytest.raises(ValueError, match="lengths"):
        nlstm.inspect(m, x, lengths=[6, 1])
    with pytest.raises(ValueError, match="loss must be one of"):
        nlstm.inspect(m, x, target=np.zeros((5, 2, 4)), loss="hinge")
    model = nlstm.Sequential([nlstm.LSTM(3, 4, batch_first=True, seed=0), nlstm.Linear(4, 1)])
    with pytest.raises(ValueError, match="x must be 3-D"):
        nlstm.inspect(model, x[0])
    with pytest.raises(ValueError, match="target must have shape"):
        nlstm.inspect(model, x, target=np.zeros((5, 3)))
    r = nlstm.inspect(m, x)
    with pytest.raises(KeyError, match="no trace 'l1'"):
        r["l1"]
    with pytest.raises(ValueError, match="sequence must be a row index in 0..1"):
        r.plot(sequence=2)


def test_plot(tmp_path, rng):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = nlstm.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0)
    x = rng.standard_normal((8, 3, 3)).astype(np.float32)
    r = nlstm.inspect(m, x, lengths=[8, 5, 3], dy=np.ones((8, 3, 8)))
    path = tmp_path / "inspect.png"
    fig = r.plot(path, sequence=1)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) >= 12  # 4 traces x 3 panels (+ colorbars)
    assert fig.axes[0].get_yscale() == "log"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["inspect.png"]  # no temporary file left
    plt.close(fig)
    fig = nlstm.inspect(nlstm.RNN(3, 2, seed=0), x).plot()  # no gradients, nothing saved
    assert isinstance(fig, matplotlib.figure.Figure)
    plt.close(fig)


def test_cli_inspect(tmp_path, series_csv):  # noqa: F811
    model_path = tmp_path / "m.npz"
    assert_ok(run(["train", "--csv", series_csv, "--target", "temp", "--features", "temp,load",
                   "--window", 12, "--epochs", 1, "--hidden", 4, "--out", model_path], tmp_path))
    p = run(["inspect", "--model", model_path, "--csv", series_csv, "--row", 30, "--out", "i.png"],
            tmp_path)
    assert_ok(p)
    assert "rows 19-30" in p.stdout and "0.l0 (LSTM, 12 steps, 1 rows)" in p.stdout
    assert "|dL/dx_t|" in p.stdout and "mean forget gate" in p.stdout
    if pytest.importorskip("matplotlib"):
        assert (tmp_path / "i.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "saved the figure to i.png" in p.stdout
    p = run(["inspect", "--model", model_path, "--csv", series_csv], tmp_path)  # the last window
    assert_ok(p)
    assert "rows 228-239" in p.stdout and (tmp_path / "inspect.png").exists()
    for row in (10, 240, -1):
        p = run(["inspect", "--model", model_path, "--csv", series_csv, "--row", row], tmp_path)
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert f"--row {row} is out of range" in p.stderr and "11..239" in p.stderr, p.stderr
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    not_npz = tmp_path / "text.npz"
    not_npz.write_text("not a model")
    for path in (bad, not_npz):
        p = run(["inspect", "--model", path, "--csv", series_csv], tmp_path)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.startswith("nlstm: error:") and str(path.name) in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1


def test_demo_shows_the_gradient_flow(tmp_path):
    """The demo prints the gradient reaching step 1 over the gradient reaching step T for
    the LSTM and the RNN, and draws them; after training the RNN's has faded more."""
    p = run(["demo", "--quick", "--out", tmp_path], tmp_path)
    assert_ok(p)
    ratios = dict(re.findall(r"^ +(LSTM|RNN): \S+ / \S+ = (\S+)$", p.stdout, re.M))
    assert set(ratios) == {"LSTM", "RNN"}, p.stdout
    assert float(ratios["RNN"]) < float(ratios["LSTM"]), p.stdout
    if pytest.importorskip("matplotlib"):
        assert "saved the gradient reaching each input step to" in p.stdout
        assert (tmp_path / "nlstm-demo-gradients.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
