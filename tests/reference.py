"""The float64 oracle: recurrent layers written straight from their equations.

Slow on purpose: one row and one time step at a time, no shared buffers, no tricks.
Arrays are time-major: x (T, B, I); states (L·D, B, H); params use PyTorch's names.
"""
import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _order(L, reverse):
    return range(L - 1, -1, -1) if reverse else range(L)


def lstm_forward(params, x, h0, c0, lengths, num_layers, bidirectional):
    """Returns y (T, B, D·H), h_n, c_n (L·D, B, H) and a cache for ``lstm_backward``.

    i = σ(W_ii x + b_ii + W_hi h + b_hi), f = σ(…), g = tanh(…), o = σ(…),
    c' = f⊙c + i⊙g, h' = o⊙tanh(c'). Past a row's length the output is zero.
    """
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(x, np.float64)
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = h0.shape[-1]
    h_n = np.zeros((num_layers * D, B, H))
    c_n = np.zeros_like(h_n)
    cache = {"x": x, "p": p, "lengths": lengths, "L": num_layers, "D": D, "steps": {}}
    inp = x
    for k in range(num_layers):
        y = np.zeros((T, B, D * H))
        for d in range(D):
            sfx = "_reverse" if d else ""
            Wih, Whh = p[f"weight_ih_l{k}{sfx}"], p[f"weight_hh_l{k}{sfx}"]
            bih = p.get(f"bias_ih_l{k}{sfx}", np.zeros(4 * H))
            bhh = p.get(f"bias_hh_l{k}{sfx}", np.zeros(4 * H))
            for b in range(B):
                h = np.array(h0[k * D + d, b], np.float64)
                c = np.array(c0[k * D + d, b], np.float64)
                for t in _order(lengths[b], d == 1):
                    z = Wih @ inp[t, b] + bih + Whh @ h + bhh
                    i, f, g, o = sigmoid(z[:H]), sigmoid(z[H:2 * H]), np.tanh(z[2 * H:3 * H]), sigmoid(z[3 * H:])
                    c_new = f * c + i * g
                    h_new = o * np.tanh(c_new)
                    cache["steps"][(k, d, b, t)] = (inp[t, b].copy(), h, c, i, f, g, o, c_new)
                    h, c = h_new, c_new
                    y[t, b, d * H:(d + 1) * H] = h
                h_n[k * D + d, b] = h
                c_n[k * D + d, b] = c
        cache[("y", k)] = y
        inp = y
    return y, h_n, c_n, cache


def lstm_backward(cache, dy, dh_n, dc_n):
    """Returns dx (T, B, I), dh0, dc0 (L·D, B, H) and the parameter gradients."""
    p, lengths, D = cache["p"], cache["lengths"], cache["D"]
    T, B, _ = cache["x"].shape
    H = dh_n.shape[-1]
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    dh0 = np.zeros_like(dh_n)
    dc0 = np.zeros_like(dc_n)
    dout = np.asarray(dy, np.float64)
    for k in reversed(range(cache["L"])):
        I = cache["x"].shape[2] if k == 0 else D * H
        dinp = np.zeros((T, B, I))
        for d in range(D):
            sfx = "_reverse" if d else ""
            Wih, Whh = p[f"weight_ih_l{k}{sfx}"], p[f"weight_hh_l{k}{sfx}"]
            for b in range(B):
                dh = np.array(dh_n[k * D + d, b], np.float64)
                dc = np.array(dc_n[k * D + d, b], np.float64)
                for t in reversed(list(_order(lengths[b], d == 1))):
                    xin, h_prev, c_prev, i, f, g, o, c_new = cache["steps"][(k, d, b, t)]
                    dh = dh + dout[t, b, d * H:(d + 1) * H]
                    tc = np.tanh(c_new)
                    do = dh * tc
                    dc = dc + dh * o * (1 - tc ** 2)
                    di, df, dg = dc * g, dc * c_prev, dc * i
                    dz = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g ** 2), do * o * (1 - o)])
                    grads[f"weight_ih_l{k}{sfx}"] += np.outer(dz, xin)
                    grads[f"weight_hh_l{k}{sfx}"] += np.outer(dz, h_prev)
                    if f"bias_ih_l{k}{sfx}" in grads:
                        grads[f"bias_ih_l{k}{sfx}"] += dz
                        grads[f"bias_hh_l{k}{sfx}"] += dz
                    dinp[t, b] += Wih.T @ dz
                    dh = Whh.T @ dz
                    dc = dc * f
                dh0[k * D + d, b] = dh
                dc0[k * D + d, b] = dc
        dout = dinp
    return dout, dh0, dc0, grads
