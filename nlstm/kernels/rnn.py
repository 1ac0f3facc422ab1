"""Elman RNN kernels: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu.

Time and state slots are as in :mod:`nlstm.kernels.slots`; the layer does the input
projection and the weight-gradient products, as for the LSTM.
"""
from .activations import tanh
from .config import kernel
from .slots import begin_rows, end_rows, slots, step_time, zero_padding, zero_rows_past


@kernel
def _activate(pre, h_new, relu):
    """h_new = act(pre); pre, h_new: (H,)."""
    H = pre.shape[0]
    if relu:
        for j in range(H):
            h_new[j] = max(pre[j], 0)
    else:
        for j in range(H):
            h_new[j] = tanh(pre[j])


@kernel
def rnn_forward(b0, b1, y, h, h_n, pre, w_hh, h0, lengths, reverse, col, relu):
    """One direction of one layer over the whole sequence, for batch rows b0:b1.

    y: (T, B, Y) layer output; this direction writes columns col:col+H
    h: (T+1, B, H) state slots; h_n: (B, H) final state
    pre: (T, B, H) in: x·W_ihᵀ + b_ih + b_hh; out: pre-activations with W_hh h added
    w_hh: (H, H); h0: (B, H); lengths: (B,) int64; reverse, relu: bool; col: int
    """
    T = pre.shape[0]
    H = pre.shape[2]
    begin_rows(b0, b1, h, h0, lengths, reverse)
    zero_padding(b0, b1, y, lengths, col, H)
    for step in range(T):
        for b in range(b0, b1):
            L = lengths[b]
            if step >= L:
                continue
            t = step_time(step, L, reverse)
            p, o = slots(t, reverse)
            g = pre[t, b]
            hp = h[p, b]
            for j in range(H):
                acc = g[j]
                wj = w_hh[j]
                for k in range(H):
                    acc += wj[k] * hp[k]
                g[j] = acc
            _activate(g, h[o, b], relu)
            for j in range(H):
                y[t, b, col + j] = h[o, b, j]
    end_rows(b0, b1, h_n, h, lengths, reverse)


@kernel
def rnn_backward(b0, b1, dpre, dh0, dy, dh_n, h, w_hh, lengths, reverse, col, relu, work):
    """Backward through time for one direction of one layer, for batch rows b0:b1.

    dpre: (T, B, H) out: gradients of the pre-activations (zero past each length)
    dh0: (B, H) out: gradient of the initial state, also the running carry
    dy: (T, B, Y) gradient of the layer output (columns col:col+H); dh_n: (B, H)
    h, w_hh, lengths, reverse, col, relu: as in ``rnn_forward``; work: (H,) scratch
    """
    T = dpre.shape[0]
    H = dpre.shape[2]
    for b in range(b0, b1):
        for j in range(H):
            dh0[b, j] = dh_n[b, j]
    zero_rows_past(b0, b1, dpre, lengths)
    for step in range(T - 1, -1, -1):
        for b in range(b0, b1):
            L = lengths[b]
            if step >= L:
                continue
            t = step_time(step, L, reverse)
            p, o = slots(t, reverse)
            d = dpre[t, b]
            ho = h[o, b]
            for j in range(H):
                dh = dy[t, b, col + j] + dh0[b, j]
                if relu:
                    d[j] = dh if ho[j] > 0 else 0
                else:
                    d[j] = dh - dh * ho[j] * ho[j]
            for k in range(H):
                work[k] = 0
            for j in range(H):
                a = d[j]
                wj = w_hh[j]
                for k in range(H):
                    work[k] += a * wj[k]
            for k in range(H):
                dh0[b, k] = work[k]


@kernel
def rnn_step(h_out, x, h, w_ih, w_hh, b_ih, b_hh, relu, pre):
    """One time step of one layer. h_out, h: (B, H); x: (B, I); pre: (H,) scratch."""
    B, I = x.shape
    H = h.shape[1]
    for b in range(B):
        xb = x[b]
        hb = h[b]
        for j in range(H):
            acc = b_ih[j] + b_hh[j]
            wi = w_ih[j]
            for k in range(I):
                acc += wi[k] * xb[k]
            wh = w_hh[j]
            for k in range(H):
                acc += wh[k] * hb[k]
            pre[j] = acc
        _activate(pre, h_out[b], relu)
