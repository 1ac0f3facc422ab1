"""The float64 oracle: recurrent layers written straight from their equations.

Slow on purpose: one row and one time step at a time, no shared buffers, no tricks.
Arrays are time-major: x (T, B, I); states (L·D, B, ·); params use PyTorch's names.
A cell is a pair of functions: ``step(w, x, state) -> (new_state, saved)`` and
``step_back(w, saved, dstate_new) -> (dx, dstate_prev, dweights)``; the driver runs
them over rows, lengths, directions and layers.
"""
import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# ---- cells ----------------------------------------------------------------------------
class LSTMCell:
    """i = σ(W_ii x + b_ii + W_hi h + b_hi), f = σ(…), g = tanh(…), o = σ(…),
    c' = f⊙c + i⊙g, h' = o⊙tanh(c'). State (h, c); output h.

    Variants (forward only; their gradients are checked by finite differences):
    peephole: i and f add p_i⊙c, p_f⊙c and o adds p_o⊙c' (``peephole`` = p_i, p_f, p_o);
    clip: every gate pre-activation clamped to [-clip, clip] just before its activation;
    input_forget: f = 1 − i; proj: h' = W_hr (o⊙tanh(c')).
    """
    G, n_states = 4, 2

    def __init__(self, peephole=False, clip=None, input_forget=False, proj=False):
        self.peephole, self.clip, self.input_forget, self.proj = peephole, clip, input_forget, proj
        self.plain = not (peephole or clip or input_forget or proj)

    def step(self, w, x, state):
        h, c = state
        H = c.shape[0]
        z = w["weight_ih"] @ x + w["bias_ih"] + w["weight_hh"] @ h + w["bias_hh"]
        zi, zf, zg, zo = z[:H], z[H:2 * H], z[2 * H:3 * H], z[3 * H:]
        if self.peephole:
            p = w["peephole"]
            zi, zf = zi + p[:H] * c, zf + p[H:2 * H] * c
        clip = (lambda v: np.clip(v, -self.clip, self.clip)) if self.clip else (lambda v: v)
        i, g = sigmoid(clip(zi)), np.tanh(clip(zg))
        f = 1 - i if self.input_forget else sigmoid(clip(zf))
        c_new = f * c + i * g
        if self.peephole:
            zo = zo + w["peephole"][2 * H:] * c_new
        o = sigmoid(clip(zo))
        h_new = o * np.tanh(c_new)
        if self.proj:
            h_new = w["weight_hr"] @ h_new
        return (h_new, c_new), (x, h, c, i, f, g, o, c_new)

    def step_back(self, w, saved, dstate):
        assert self.plain, "the reference differentiates only the plain LSTM"
        x, h, c, i, f, g, o, c_new = saved
        dh, dc = dstate
        tc = np.tanh(c_new)
        do = dh * tc
        dc = dc + dh * o * (1 - tc ** 2)
        di, df, dg = dc * g, dc * c, dc * i
        dz = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g ** 2), do * o * (1 - o)])
        dw = dict(weight_ih=np.outer(dz, x), weight_hh=np.outer(dz, h), bias_ih=dz, bias_hh=dz)
        return w["weight_ih"].T @ dz, (w["weight_hh"].T @ dz, dc * f), dw


class GRUCell:
    """r = σ(W_ir x + b_ir + W_hr h + b_hr), z = σ(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r⊙(W_hn h + b_hn))      (linear_before_reset, PyTorch)
    n = tanh(W_in x + b_in + W_hn (r⊙h) + b_hn)      (otherwise, ONNX's default)
    h' = (1 − z)⊙n + z⊙h."""
    G, n_states = 3, 1

    def __init__(self, linear_before_reset=True):
        self.lbr = linear_before_reset

    def step(self, w, x, state):
        (h,) = state
        H = h.shape[0]
        Wi, Wh, bi, bh = w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"]
        gi = Wi @ x + bi
        r = sigmoid(gi[:H] + Wh[:H] @ h + bh[:H])
        z = sigmoid(gi[H:2 * H] + Wh[H:2 * H] @ h + bh[H:2 * H])
        if self.lbr:
            hn = Wh[2 * H:] @ h + bh[2 * H:]
            n = np.tanh(gi[2 * H:] + r * hn)
        else:
            n = np.tanh(gi[2 * H:] + Wh[2 * H:] @ (r * h) + bh[2 * H:])
            hn = None
        h_new = (1 - z) * n + z * h
        return (h_new,), (x, h, r, z, n, hn)

    def step_back(self, w, saved, dstate):
        x, h, r, z, n, hn = saved
        (dh,) = dstate
        H = h.shape[0]
        Wh = w["weight_hh"]
        dn = dh * (1 - z)
        dz = dh * (h - n)
        dh_prev = dh * z
        dn_pre = dn * (1 - n ** 2)
        dz_pre = dz * z * (1 - z)
        dWh = np.zeros_like(Wh)
        if self.lbr:
            dr = dn_pre * hn
            dhn = dn_pre * r
            dWh[2 * H:] = np.outer(dhn, h)
            dh_prev = dh_prev + Wh[2 * H:].T @ dhn
            dbh_n = dhn
        else:
            drh = Wh[2 * H:].T @ dn_pre
            dr = drh * h
            dh_prev = dh_prev + drh * r
            dWh[2 * H:] = np.outer(dn_pre, r * h)
            dbh_n = dn_pre
        dr_pre = dr * r * (1 - r)
        dWh[:H] = np.outer(dr_pre, h)
        dWh[H:2 * H] = np.outer(dz_pre, h)
        dh_prev = dh_prev + Wh[:H].T @ dr_pre + Wh[H:2 * H].T @ dz_pre
        dgi = np.concatenate([dr_pre, dz_pre, dn_pre])
        dw = dict(weight_ih=np.outer(dgi, x), weight_hh=dWh, bias_ih=dgi,
                  bias_hh=np.concatenate([dr_pre, dz_pre, dbh_n]))
        return w["weight_ih"].T @ dgi, (dh_prev,), dw


class RNNCell:
    """h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu."""
    G, n_states = 1, 1

    def __init__(self, nonlinearity="tanh"):
        self.relu = nonlinearity == "relu"

    def step(self, w, x, state):
        (h,) = state
        pre = w["weight_ih"] @ x + w["bias_ih"] + w["weight_hh"] @ h + w["bias_hh"]
        h_new = np.maximum(pre, 0) if self.relu else np.tanh(pre)
        return (h_new,), (x, h, pre, h_new)

    def step_back(self, w, saved, dstate):
        x, h, pre, h_new = saved
        (dh,) = dstate
        dpre = dh * (pre > 0) if self.relu else dh * (1 - h_new ** 2)
        dw = dict(weight_ih=np.outer(dpre, x), weight_hh=np.outer(dpre, h), bias_ih=dpre, bias_hh=dpre)
        return w["weight_ih"].T @ dpre, (w["weight_hh"].T @ dpre,), dw


def layer_norm(a, eps=1e-5):
    """(a − mean a)/√(var a + eps) and its 1/√(var a + eps)."""
    rstd = 1.0 / np.sqrt(a.var() + eps)
    return (a - a.mean()) * rstd, rstd


def layer_norm_back(dn, n, rstd):
    """The gradient of a from that of n = layer_norm(a)."""
    return rstd * (dn - dn.mean() - n * (dn * n).mean())


class LayerNormLSTMCell:
    """z = γ_ih⊙LN(W_ih x) + b_ih + γ_hh⊙LN(W_hh h) + b_hh; i, f, g, o from z as the LSTM;
    c' = f⊙c + i⊙g; h' = o⊙tanh(γ_c⊙LN(c') + β_c). γ: ``ln_weight_ih``, ``ln_weight_hh``,
    ``ln_weight_c``; β_c: ``ln_bias_c`` (zero when absent)."""
    G, n_states = 4, 2

    def step(self, w, x, state):
        h, c = state
        H = c.shape[0]
        xn, rx = layer_norm(w["weight_ih"] @ x)
        hn, rh = layer_norm(w["weight_hh"] @ h)
        z = w["ln_weight_ih"] * xn + w["bias_ih"] + w["ln_weight_hh"] * hn + w["bias_hh"]
        i, f, g, o = sigmoid(z[:H]), sigmoid(z[H:2 * H]), np.tanh(z[2 * H:3 * H]), sigmoid(z[3 * H:])
        c_new = f * c + i * g
        cn, rc = layer_norm(c_new)
        u = np.tanh(w["ln_weight_c"] * cn + w.get("ln_bias_c", 0))
        return (o * u, c_new), (x, h, c, i, f, g, o, xn, rx, hn, rh, cn, rc, u)

    def step_back(self, w, saved, dstate):
        x, h, c, i, f, g, o, xn, rx, hn, rh, cn, rc, u = saved
        dh, dc = dstate
        do = dh * u
        du = dh * o * (1 - u ** 2)
        dc = dc + layer_norm_back(du * w["ln_weight_c"], cn, rc)
        dz = np.concatenate([dc * g * i * (1 - i), dc * c * f * (1 - f), dc * i * (1 - g ** 2),
                             do * o * (1 - o)])
        dxw = layer_norm_back(dz * w["ln_weight_ih"], xn, rx)
        dhw = layer_norm_back(dz * w["ln_weight_hh"], hn, rh)
        dw = dict(weight_ih=np.outer(dxw, x), weight_hh=np.outer(dhw, h), bias_ih=dz, bias_hh=dz,
                  ln_weight_ih=dz * xn, ln_weight_hh=dz * hn, ln_weight_c=du * cn, ln_bias_c=du)
        return w["weight_ih"].T @ dxw, (w["weight_hh"].T @ dhw, dc * f), dw


class Zoneout:
    """Zoneout around any cell (Krueger et al., 2017): each state s' = m⊙s + (1 − m)⊙s̃,
    s̃ the cell's new state. ``masks[(k, d, b, t)]``: one (n,) mask per state, 0/1 in
    training or p everywhere for inference; the driver says where it is in ``where``."""

    def __init__(self, cell, masks):
        self.cell, self.masks = cell, masks
        self.G, self.n_states = cell.G, cell.n_states

    def step(self, w, x, state):
        new, saved = self.cell.step(w, x, state)
        m = self.masks[self.where]
        zoned = tuple(mi * s + (1 - mi) * n for mi, s, n in zip(m, state, new))
        return zoned, (m, saved)

    def step_back(self, w, saved, dstate):
        m, inner = saved
        dx, dprev, dw = self.cell.step_back(w, inner, tuple((1 - mi) * g for mi, g in zip(m, dstate)))
        return dx, tuple(dp + mi * g for dp, mi, g in zip(dprev, m, dstate)), dw


# ---- driver -----------------------------------------------------------------------------
def _order(L, reverse):
    return range(L - 1, -1, -1) if reverse else range(L)


def _weights(p, k, d):
    """Every parameter of layer k, direction d, by its name without the layer suffix."""
    sfx = "_reverse" if d else ""
    end = f"_l{k}{sfx}"
    w = {n[:-len(end)]: v for n, v in p.items() if n.endswith(end)}
    for n in ("bias_ih", "bias_hh"):
        w.setdefault(n, np.zeros(w["weight_ih"].shape[0]))
    return w, sfx


def forward(cell, params, x, init, lengths, num_layers, bidirectional):
    """Returns y (T, B, D·H), the final states (a list, each (L·D, B, H)) and a cache.
    init: list of initial state arrays (L·D, B, H). Outputs past a row's length are zero."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(x, np.float64)
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = init[0].shape[-1]  # output features per direction
    final = [np.zeros(s.shape[:1] + (B,) + s.shape[2:]) for s in init]
    cache = dict(cell=cell, p=p, x=x, lengths=lengths, L=num_layers, D=D, H=H, saved={})
    inp = x
    for k in range(num_layers):
        y = np.zeros((T, B, D * H))
        for d in range(D):
            w, _ = _weights(p, k, d)
            for b in range(B):
                state = tuple(np.array(s[k * D + d, b], np.float64) for s in init)
                for t in _order(lengths[b], d == 1):
                    cell.where = (k, d, b, t)  # for cells that need it (Zoneout's masks)
                    state, saved = cell.step(w, inp[t, b], state)
                    cache["saved"][(k, d, b, t)] = saved
                    y[t, b, d * H:(d + 1) * H] = state[0]
                for s, a in zip(final, state):
                    s[k * D + d, b] = a
        inp = y
    return y, final, cache


def backward(cache, dy, dfinal):
    """Returns dx (T, B, I), the initial-state gradients (list) and the parameter gradients."""
    cell, p, lengths, D, H = cache["cell"], cache["p"], cache["lengths"], cache["D"], cache["H"]
    T, B, _ = cache["x"].shape
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    dinit = [np.zeros_like(g) for g in dfinal]
    dout = np.asarray(dy, np.float64)
    for k in reversed(range(cache["L"])):
        I = cache["x"].shape[2] if k == 0 else D * H
        dinp = np.zeros((T, B, I))
        for d in range(D):
            w, sfx = _weights(p, k, d)
            for b in range(B):
                dstate = [np.array(g[k * D + d, b], np.float64) for g in dfinal]
                for t in reversed(list(_order(lengths[b], d == 1))):
                    dstate[0] = dstate[0] + dout[t, b, d * H:(d + 1) * H]
                    dx, dstate, dw = cell.step_back(w, cache["saved"][(k, d, b, t)], tuple(dstate))
                    dstate = list(dstate)
                    dinp[t, b] += dx
                    for n, g in dw.items():
                        if f"{n}_l{k}{sfx}" in grads:
                            grads[f"{n}_l{k}{sfx}"] += g
                for s, g in zip(dinit, dstate):
                    s[k * D + d, b] = g
        dout = dinp
    return dout, dinit, grads


# ---- the LSTM in the form the first tests use ----------------------------------------
def lstm_forward(params, x, h0, c0, lengths, num_layers, bidirectional):
    y, (h, c), cache = forward(LSTMCell(), params, x, [h0, c0], lengths, num_layers, bidirectional)
    return y, h, c, cache


def lstm_backward(cache, dy, dh_n, dc_n):
    dx, (dh0, dc0), grads = backward(cache, dy, [dh_n, dc_n])
    return dx, dh0, dc0, grads
