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


# ---- ONNX's activation functions, each with its derivative, written from the spec ----------
_ACT = {
    "Sigmoid": (lambda x, a, b: sigmoid(x), lambda x, a, b: sigmoid(x) * (1 - sigmoid(x))),
    "Tanh": (lambda x, a, b: np.tanh(x), lambda x, a, b: 1 - np.tanh(x) ** 2),
    "Relu": (lambda x, a, b: np.maximum(x, 0), lambda x, a, b: (x > 0) * 1.0),
    "Affine": (lambda x, a, b: a * x + b, lambda x, a, b: np.full_like(x, a)),
    "LeakyRelu": (lambda x, a, b: np.where(x >= 0, x, a * x), lambda x, a, b: np.where(x >= 0, 1.0, a)),
    "ThresholdedRelu": (lambda x, a, b: np.where(x > a, x, 0.0), lambda x, a, b: (x > a) * 1.0),
    "ScaledTanh": (lambda x, a, b: a * np.tanh(b * x), lambda x, a, b: a * b / np.cosh(b * x) ** 2),
    "HardSigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1),
                    lambda x, a, b: np.where((a * x + b > 0) & (a * x + b < 1), a, 0.0)),
    "Elu": (lambda x, a, b: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0))),
            lambda x, a, b: np.where(x >= 0, 1.0, a * np.exp(np.minimum(x, 0)))),
    "Softsign": (lambda x, a, b: x / (1 + np.abs(x)), lambda x, a, b: 1 / (1 + np.abs(x)) ** 2),
    "Softplus": (lambda x, a, b: np.logaddexp(0, x), lambda x, a, b: sigmoid(x)),
}


class Act:
    """One activation (ONNX name, alpha, beta) applied after clamping to ±clip (None: no
    clamp). ``d(z)`` is the derivative with respect to z, zero where the clamp cuts."""

    def __init__(self, name, alpha=0.0, beta=0.0, clip=None):
        self.f, self.df = _ACT[name]
        self.a, self.b, self.clip = alpha, beta, clip

    def __call__(self, z):
        return self.f(z if self.clip is None else np.clip(z, -self.clip, self.clip), self.a, self.b)

    def d(self, z):
        if self.clip is None:
            return self.df(z, self.a, self.b)
        return self.df(np.clip(z, -self.clip, self.clip), self.a, self.b) * (np.abs(z) <= self.clip)


def _acts(defaults, acts, clip, d):
    """The Act objects of direction d: acts is None (the defaults) or one list of
    (name, alpha, beta) per direction (a single list: both directions)."""
    spec = [(n, 0.0, 0.0) for n in defaults] if acts is None else acts[min(d, len(acts) - 1)]
    return [Act(n, a, b, clip) for n, a, b in spec]


class _Cell:
    """Cells whose activations differ per direction give ``direction(d)`` a copy for d."""

    def direction(self, d):
        return self


# ---- cells ----------------------------------------------------------------------------
def _lstm_gates(cell, w, z, c):
    """The LSTM's gates from the pre-activations z (4H), with the variants: peepholes add
    p_i⊙c, p_f⊙c to z_i, z_f (p_o⊙c' to z_o: see ``_lstm_out``), clip inside the Act
    objects, input_forget f = 1 − i. Returns i, f, g, c', the (peepholed) z_i, z_f, z_g."""
    H = c.shape[0]
    zi, zf, zg = z[:H], z[H:2 * H], z[2 * H:3 * H]
    if cell.peephole:
        p = w["peephole"]
        zi, zf = zi + p[:H] * c, zf + p[H:2 * H] * c
    i, g = cell.fa(zi), cell.ga(zg)
    f = 1 - i if cell.input_forget else cell.fa(zf)
    return i, f, g, f * c + i * g, (zi, zf, zg)


def _lstm_out(cell, w, z, c_new):
    """o and its pre-activation z_o (with p_o⊙c')."""
    H = c_new.shape[0]
    zo = z[3 * H:]
    if cell.peephole:
        zo = zo + w["peephole"][2 * H:] * c_new
    return cell.fa(zo), zo


def _lstm_back(cell, w, saved, dc, dc_new, do, dw):
    """From the gradients of c' (dc, carried, and dc_new, through h; o's peephole not yet
    added) and of o (do), the gradients dz (4H) and of c, filling dw's peephole. saved: the
    step's (x, h, c, i, f, g, o, c', (z_i, z_f, z_g, z_o), …)."""
    _, _, c, i, f, g, _, c_new, (zi, zf, zg, zo) = saved[:9]
    H = c.shape[0]
    dzo = do * cell.fa.d(zo)
    dct = dc + dc_new
    if cell.peephole:
        dct = dct + dzo * w["peephole"][2 * H:]
    dzi = dct * g
    if cell.input_forget:
        dzi, dzf = dzi - dct * c, np.zeros(H)
    else:
        dzf = dct * c * cell.fa.d(zf)
    dzi = dzi * cell.fa.d(zi)
    dzg = dct * i * cell.ga.d(zg)
    dc_prev = dct * f
    if cell.peephole:
        p = w["peephole"]
        dc_prev = dc_prev + dzi * p[:H] + dzf * p[H:2 * H]
        dw["peephole"] = np.concatenate([dzi * c, dzf * c, dzo * c_new])
    return np.concatenate([dzi, dzf, dzg, dzo]), dc_prev


class LSTMCell(_Cell):
    """i = σ(W_ii x + b_ii + W_hi h + b_hi), f = σ(…), g = tanh(…), o = σ(…),
    c' = f⊙c + i⊙g, h' = o⊙tanh(c'). State (h, c); output h.

    Variants, each with its gradients:
    peephole: i and f add p_i⊙c, p_f⊙c and o adds p_o⊙c' (``peephole`` = p_i, p_f, p_o);
    clip: every gate pre-activation clamped to [-clip, clip] just before its activation;
    input_forget: f = 1 − i; proj: h' = W_hr (o⊙tanh(c'));
    acts: per direction, [(name, alpha, beta)] for (f, g, h) in place of σ, tanh, tanh.
    """
    G, n_states = 4, 2

    def __init__(self, peephole=False, clip=None, input_forget=False, proj=False, acts=None, d=0):
        self.peephole, self.clip, self.input_forget, self.proj = peephole, clip, input_forget, proj
        self.acts = acts
        self.fa, self.ga, self.ha = _acts(("Sigmoid", "Tanh", "Tanh"), acts, clip, d)
        self.hact = _acts(("Sigmoid", "Tanh", "Tanh"), acts, None, d)[2]  # h(c) is not clipped

    def direction(self, d):
        return type(self)(self.peephole, self.clip, self.input_forget, self.proj, self.acts, d)

    def step(self, w, x, state):
        h, c = state
        z = w["weight_ih"] @ x + w["bias_ih"] + w["weight_hh"] @ h + w["bias_hh"]
        i, f, g, c_new, zs = _lstm_gates(self, w, z, c)
        o, zo = _lstm_out(self, w, z, c_new)
        m = o * self.hact(c_new)
        h_new = w["weight_hr"] @ m if self.proj else m
        return (h_new, c_new), (x, h, c, i, f, g, o, c_new, zs + (zo,), m)

    def step_back(self, w, saved, dstate):
        x, h, c, i, f, g, o, c_new, zs, m = saved
        dh, dc = dstate
        dw = {}
        if self.proj:
            dw["weight_hr"] = np.outer(dh, m)
            dh = w["weight_hr"].T @ dh
        dz, dc_prev = _lstm_back(self, w, saved, dc, dh * o * self.hact.d(c_new),
                                 dh * self.hact(c_new), dw)
        dw.update(weight_ih=np.outer(dz, x), weight_hh=np.outer(dz, h), bias_ih=dz, bias_hh=dz)
        return w["weight_ih"].T @ dz, (w["weight_hh"].T @ dz, dc_prev), dw


class GRUCell(_Cell):
    """r = σ(W_ir x + b_ir + W_hr h + b_hr), z = σ(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r⊙(W_hn h + b_hn))      (linear_before_reset, PyTorch)
    n = tanh(W_in x + b_in + W_hn (r⊙h) + b_hn)      (otherwise, ONNX's default)
    h' = (1 − z)⊙n + z⊙h. clip: pre-activations clamped to ±clip; acts: per direction,
    [(name, alpha, beta)] for (f, g) in place of σ (r, z) and tanh (n)."""
    G, n_states = 3, 1

    def __init__(self, linear_before_reset=True, clip=None, acts=None, d=0):
        self.lbr, self.clip, self.acts = linear_before_reset, clip, acts
        self.fa, self.ga = _acts(("Sigmoid", "Tanh"), acts, clip, d)

    def direction(self, d):
        return GRUCell(self.lbr, self.clip, self.acts, d)

    def step(self, w, x, state):
        (h,) = state
        H = h.shape[0]
        Wi, Wh, bi, bh = w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"]
        gi = Wi @ x + bi
        zr = gi[:H] + Wh[:H] @ h + bh[:H]
        zz = gi[H:2 * H] + Wh[H:2 * H] @ h + bh[H:2 * H]
        r, z = self.fa(zr), self.fa(zz)
        if self.lbr:
            hn = Wh[2 * H:] @ h + bh[2 * H:]
            zn = gi[2 * H:] + r * hn
        else:
            zn = gi[2 * H:] + Wh[2 * H:] @ (r * h) + bh[2 * H:]
            hn = None
        n = self.ga(zn)
        h_new = (1 - z) * n + z * h
        return (h_new,), (x, h, r, z, n, hn, (zr, zz, zn))

    def step_back(self, w, saved, dstate):
        x, h, r, z, n, hn, (zr, zz, zn) = saved
        (dh,) = dstate
        H = h.shape[0]
        Wh = w["weight_hh"]
        dn = dh * (1 - z)
        dz = dh * (h - n)
        dh_prev = dh * z
        dn_pre = dn * self.ga.d(zn)
        dz_pre = dz * self.fa.d(zz)
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
        dr_pre = dr * self.fa.d(zr)
        dWh[:H] = np.outer(dr_pre, h)
        dWh[H:2 * H] = np.outer(dz_pre, h)
        dh_prev = dh_prev + Wh[:H].T @ dr_pre + Wh[H:2 * H].T @ dz_pre
        dgi = np.concatenate([dr_pre, dz_pre, dn_pre])
        dw = dict(weight_ih=np.outer(dgi, x), weight_hh=dWh, bias_ih=dgi,
                  bias_hh=np.concatenate([dr_pre, dz_pre, dbh_n]))
        return w["weight_ih"].T @ dgi, (dh_prev,), dw


class RNNCell(_Cell):
    """h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu (``nonlinearity``), or per
    direction [(name, alpha, beta)] (``acts``); clip: the pre-activation clamped to ±clip."""
    G, n_states = 1, 1

    def __init__(self, nonlinearity="tanh", clip=None, acts=None, d=0):
        self.nonlinearity, self.clip, self.acts = nonlinearity, clip, acts
        (self.f,) = _acts(("Relu" if nonlinearity == "relu" else "Tanh",), acts, clip, d)

    def direction(self, d):
        return RNNCell(self.nonlinearity, self.clip, self.acts, d)

    def step(self, w, x, state):
        (h,) = state
        pre = w["weight_ih"] @ x + w["bias_ih"] + w["weight_hh"] @ h + w["bias_hh"]
        h_new = self.f(pre)
        return (h_new,), (x, h, pre, h_new)

    def step_back(self, w, saved, dstate):
        x, h, pre, h_new = saved
        (dh,) = dstate
        dpre = dh * self.f.d(pre)
        dw = dict(weight_ih=np.outer(dpre, x), weight_hh=np.outer(dpre, h), bias_ih=dpre, bias_hh=dpre)
        return w["weight_ih"].T @ dpre, (w["weight_hh"].T @ dpre,), dw


def layer_norm(a, eps=1e-5):
    """(a − mean a)/√(var a + eps) and its 1/√(var a + eps)."""
    rstd = 1.0 / np.sqrt(a.var() + eps)
    return (a - a.mean()) * rstd, rstd


def layer_norm_back(dn, n, rstd):
    """The gradient of a from that of n = layer_norm(a)."""
    return rstd * (dn - dn.mean() - n * (dn * n).mean())


class LayerNormLSTMCell(LSTMCell):
    """z = γ_ih⊙LN(W_ih x) + b_ih + γ_hh⊙LN(W_hh h) + b_hh; i, f, g, o from z as the LSTM;
    c' = f⊙c + i⊙g; h' = o⊙tanh(γ_c⊙LN(c') + β_c). γ: ``ln_weight_ih``, ``ln_weight_hh``,
    ``ln_weight_c``; β_c: ``ln_bias_c`` (zero when absent).

    The LSTM's variants enter after the normalisations: peepholes add to the normalised z
    (o's reads c', not LN(c')), clip clamps the final pre-activations, input_forget sets
    f = 1 − i, acts replace σ, tanh and the h function (applied to γ_c⊙LN(c') + β_c), proj
    multiplies o⊙h(·) by W_hr."""

    def step(self, w, x, state):
        h, c = state
        xn, rx = layer_norm(w["weight_ih"] @ x)
        hn, rh = layer_norm(w["weight_hh"] @ h)
        z = w["ln_weight_ih"] * xn + w["bias_ih"] + w["ln_weight_hh"] * hn + w["bias_hh"]
        i, f, g, c_new, zs = _lstm_gates(self, w, z, c)
        o, zo = _lstm_out(self, w, z, c_new)
        cn, rc = layer_norm(c_new)
        a = w["ln_weight_c"] * cn + w.get("ln_bias_c", 0)
        m = o * self.hact(a)
        h_new = w["weight_hr"] @ m if self.proj else m
        return (h_new, c_new), (x, h, c, i, f, g, o, c_new, zs + (zo,), m, xn, rx, hn, rh, cn,
                                rc, a)

    def step_back(self, w, saved, dstate):
        x, h, c, i, f, g, o, c_new, zs, m, xn, rx, hn, rh, cn, rc, a = saved
        dh, dc = dstate
        dw = {}
        if self.proj:
            dw["weight_hr"] = np.outer(dh, m)
            dh = w["weight_hr"].T @ dh
        da = dh * o * self.hact.d(a)
        dz, dc_prev = _lstm_back(self, w, saved, dc, layer_norm_back(da * w["ln_weight_c"], cn, rc),
                                 dh * self.hact(a), dw)
        dxw = layer_norm_back(dz * w["ln_weight_ih"], xn, rx)
        dhw = layer_norm_back(dz * w["ln_weight_hh"], hn, rh)
        dw.update(weight_ih=np.outer(dxw, x), weight_hh=np.outer(dhw, h), bias_ih=dz, bias_hh=dz,
                  ln_weight_ih=dz * xn, ln_weight_hh=dz * hn, ln_weight_c=da * cn, ln_bias_c=da)
        return w["weight_ih"].T @ dxw, (w["weight_hh"].T @ dhw, dc_prev), dw


class Zoneout(_Cell):
    """Zoneout around any cell (Krueger et al., 2017): each state s' = m⊙s + (1 − m)⊙s̃,
    s̃ the cell's new state. ``masks[(k, d, b, t)]``: one (n,) mask per state, 0/1 in
    training or p everywhere for inference; the driver says where it is in ``where``."""

    def __init__(self, cell, masks):
        self.cell, self.masks = cell, masks
        self.G, self.n_states = cell.G, cell.n_states

    def direction(self, d):
        return Zoneout(self.cell.direction(d), self.masks)

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
            cd = cell.direction(d)
            for b in range(B):
                state = tuple(np.array(s[k * D + d, b], np.float64) for s in init)
                for t in _order(lengths[b], d == 1):
                    cd.where = (k, d, b, t)  # for cells that need it (Zoneout's masks)
                    state, saved = cd.step(w, inp[t, b], state)
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
            cd = cell.direction(d)
            for b in range(B):
                dstate = [np.array(g[k * D + d, b], np.float64) for g in dfinal]
                for t in reversed(list(_order(lengths[b], d == 1))):
                    dstate[0] = dstate[0] + dout[t, b, d * H:(d + 1) * H]
                    dx, dstate, dw = cd.step_back(w, cache["saved"][(k, d, b, t)], tuple(dstate))
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
