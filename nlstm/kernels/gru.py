"""GRU kernels, gates r, z, n (PyTorch's order), in two forms:

- ``lbr`` (PyTorch; ONNX ``linear_before_reset=1``): n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
- not ``lbr`` (ONNX's default): n = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)

then h' = (1 − z) ⊙ n + z ⊙ h. The layer folds b_ih, b_hr, b_hz (and b_hn when not
``lbr``) into the input projection. ``aux`` saves what backward needs of the n gate:
W_hn h + b_hn with ``lbr``, r ⊙ h without. Slots as in :mod:`nlstm.kernels.slots`.
"""
from .activations import sigmoid, tanh
from .config import kernel
from .slots import begin_rows, end_rows, slots, step_time, zero_padding, zero_rows_past


@kernel
def _cell(g, hp, aux, h_new, w_hh, b_hh, lbr):
    """One row's step. g: (3H,) projection in, post-activation r, z, n out; hp: (H,) state
    before; aux: (H,) out (see module docstring); h_new: (H,) out; w_hh: (3H, H)."""
    H = hp.shape[0]
    for j in range(2 * H):
        acc = g[j]
        wj = w_hh[j]
        for k in range(H):
            acc += wj[k] * hp[k]
        g[j] = sigmoid(acc)
    if lbr:
        for j in range(H):
            acc = b_hh[2 * H + j]
            wj = w_hh[2 * H + j]
            for k in range(H):
                acc += wj[k] * hp[k]
            aux[j] = acc
            g[2 * H + j] = tanh(g[2 * H + j] + g[j] * acc)
    else:
        for j in range(H):
            aux[j] = g[j] * hp[j]
        for j in range(H):
            acc = g[2 * H + j]
            wj = w_hh[2 * H + j]
            for k in range(H):
                acc += wj[k] * aux[k]
            g[2 * H + j] = tanh(acc)
    for j in range(H):
        n = g[2 * H + j]
        h_new[j] = n + g[H + j] * (hp[j] - n)


@kernel
def gru_forward(b0, b1, y, h, h_n, gates, aux, w_hh, b_hh, h0, lengths, reverse, col, lbr):
    """One direction of one layer over the whole sequence, for batch rows b0:b1.

    y: (T, B, Y) layer output; this direction writes columns col:col+H
    h: (T+1, B, H) state slots; h_n: (B, H) final state
    gates: (T, B, 3H) in: input projection with folded biases; out: r, z, n
    aux: (T, B, H) out (see module docstring); w_hh: (3H, H); b_hh: (3H,)
    h0: (B, H); lengths: (B,) int64; reverse, lbr: bool; col: int
    """
    T = gates.shape[0]
    H = gates.shape[2] // 3
    begin_rows(b0, b1, h, h0, lengths, reverse)
    zero_padding(b0, b1, y, lengths, col, H)
    zero_rows_past(b0, b1, aux, lengths)  # W_hn's gradient product reads every row of aux
    for step in range(T):
        for b in range(b0, b1):
            L = lengths[b]
            if step >= L:
                continue
            t = step_time(step, L, reverse)
            p, o = slots(t, reverse)
            _cell(gates[t, b], h[p, b], aux[t, b], h[o, b], w_hh, b_hh, lbr)
            for j in range(H):
                y[t, b, col + j] = h[o, b, j]
    end_rows(b0, b1, h_n, h, lengths, reverse)


@kernel
def gru_backward(b0, b1, dgates, dgates_hh, dh0, dy, dh_n, gates, aux, h, w_hh, lengths,
                 reverse, col, lbr, work):
    """Backward through time for one direction of one layer, for batch rows b0:b1.

    dgates: (T, B, 3H) out: gradients of the input-side pre-activations (may alias gates)
    dgates_hh: (T, B, 3H) out: gradients of the hidden-side pre-activations: the same as
               dgates for r and z; for n, d(W_hn h + b_hn) with ``lbr``, else d(W_hn (r⊙h))
    dh0: (B, H) out, also the running carry; dy: (T, B, Y) (columns col:col+H); dh_n: (B, H)
    gates, aux, h, w_hh, lengths, reverse, col, lbr: as in ``gru_forward``
    work: (2H,) scratch
    """
    T = gates.shape[0]
    H = gates.shape[2] // 3
    carry = work[:H]
    drh = work[H:]
    for b in range(b0, b1):
        for j in range(H):
            dh0[b, j] = dh_n[b, j]
    zero_rows_past(b0, b1, dgates, lengths)
    zero_rows_past(b0, b1, dgates_hh, lengths)
    for step in range(T - 1, -1, -1):
        for b in range(b0, b1):
            L = lengths[b]
            if step >= L:
                continue
            t = step_time(step, L, reverse)
            p, o = slots(t, reverse)
            g = gates[t, b]
            dg = dgates[t, b]  # may alias g: every read of index j precedes its write
            dgh = dgates_hh[t, b]
            hp = h[p, b]
            ax = aux[t, b]
            for j in range(H):
                dh = dy[t, b, col + j] + dh0[b, j]
                r = g[j]
                z = g[H + j]
                n = g[2 * H + j]
                dn = dh - dh * z
                dn_pre = dn - dn * n * n
                dz_pre = dh * (hp[j] - n) * (z - z * z)
                carry[j] = dh * z
                dg[H + j] = dz_pre
                dgh[H + j] = dz_pre
                dg[2 * H + j] = dn_pre
                if lbr:
                    dr_pre = dn_pre * ax[j] * (r - r * r)
                    dg[j] = dr_pre
                    dgh[j] = dr_pre
                    dgh[2 * H + j] = dn_pre * r
                else:
                    dgh[2 * H + j] = dn_pre
            if not lbr:
                # d(r⊙h) = W_hnᵀ dn_pre, then split into r's and h's parts.
                for k in range(H):
                    drh[k] = 0
                for j in range(H):
                    a = dg[2 * H + j]
                    wj = w_hh[2 * H + j]
                    for k in range(H):
                        drh[k] += a * wj[k]
                for j in range(H):
                    r = g[j]  # still r: only index j of g is written in this iteration
                    dr_pre = drh[j] * hp[j] * (r - r * r)
                    dg[j] = dr_pre
                    dgh[j] = dr_pre
                    carry[j] += drh[j] * r
            rows = 3 * H if lbr else 2 * H
            for j in range(rows):
                a = dgh[j]
                wj = w_hh[j]
                for k in range(H):
                    carry[k] += a * wj[k]
            for k in range(H):
                dh0[b, k] = carry[k]


@kernel
def gru_step(h_out, x, h, w_ih, w_hh, b_ih, b_hh, lbr, pre):
    """One time step of one layer. h_out, h: (B, H); x: (B, I); pre: (4H,) scratch."""
    B, I = x.shape
    H = h.shape[1]
    g = pre[:3 * H]
    aux = pre[3 * H:]
    for b in range(B):
        xb = x[b]
        for j in range(3 * H):
            acc = b_ih[j]
            if j < 2 * H or not lbr:
                acc += b_hh[j]
            wi = w_ih[j]
            for k in range(I):
                acc += wi[k] * xb[k]
            g[j] = acc
        _cell(g, h[b], aux, h_out[b], w_hh, b_hh, lbr)
