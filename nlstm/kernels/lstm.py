"""LSTM kernels: the sequential part of the forward and backward passes.

The layer does the large products outside these kernels: the input projection of
all time steps (one GEMM, biases folded in) before ``lstm_forward``, and the weight
gradients and ``dx`` (one GEMM each over all steps) after ``lstm_backward``. The
kernels only carry h and c through time.

Time and state slots are as in :mod:`nlstm.kernels.slots`.

Rows of the batch are independent in the recurrence, so the kernels take a row range
``b0:b1``: the layer runs one call per thread on disjoint ranges (the kernels release
the GIL), with no synchronisation per time step and no parfor allocations.
Gate order is PyTorch's: i, f, g, o.
"""
from .activations import sigmoid, tanh
from .config import kernel
from .slots import begin_rows, end_rows, slots, step_time, zero_padding, zero_rows_past


@kernel
def _pointwise(g, c_prev, c_new, h_new):
    """Gate nonlinearities and the cell update for one row.

    g: (4H,) pre-activations in, post-activations out; c_prev, c_new, h_new: (H,).
    """
    H = c_prev.shape[0]
    for j in range(H):
        ig = sigmoid(g[j])
        fg = sigmoid(g[H + j])
        gg = tanh(g[2 * H + j])
        og = sigmoid(g[3 * H + j])
        g[j] = ig
        g[H + j] = fg
        g[2 * H + j] = gg
        g[3 * H + j] = og
        cn = fg * c_prev[j] + ig * gg
        c_new[j] = cn
        h_new[j] = og * tanh(cn)


@kernel
def _forward_rows(b0, b1, y, h, c, h_n, c_n, gates, w_hh, h0, c0, lengths, reverse, col):
    T = gates.shape[0]
    G = gates.shape[2]
    H = G // 4
    begin_rows(b0, b1, h, h0, lengths, reverse)
    begin_rows(b0, b1, c, c0, lengths, reverse)
    zero_padding(b0, b1, y, lengths, col, H)
    for step in range(T):
        for b in range(b0, b1):
            L = lengths[b]
            if step >= L:
                continue
            t = step_time(step, L, reverse)
            p, o = slots(t, reverse)
            g = gates[t, b]
            hp = h[p, b]
            for j in range(G):
                acc = g[j]
                wj = w_hh[j]
                for k in range(H):
                    acc += wj[k] * hp[k]
                g[j] = acc
            _pointwise(g, c[p, b], c[o, b], h[o, b])
            for j in range(H):
                y[t, b, col + j] = h[o, b, j]
    end_rows(b0, b1, h_n, h, lengths, reverse)
    end_rows(b0, b1, c_n, c, lengths, reverse)


@kernel
def lstm_forward(b0, b1, y, h, c, h_n, c_n, gates, w_hh, h0, c0, lengths, reverse, col):
    """One direction of one layer over the whole sequence, for batch rows b0:b1.

    y: (T, B, Y) layer output; this direction writes columns col:col+H, zero past each length
    h, c: (T+1, B, H) state slots (see module docstring)
    h_n, c_n: (B, H) final state of each row
    gates: (T, B, 4H) in: x·W_ihᵀ + b_ih + b_hh; out: post-activation gates i, f, g, o
    w_hh: (4H, H); h0, c0: (B, H); lengths: (B,) int64 in 0..T; reverse: bool; col: int
    """
    _forward_rows(b0, b1, y, h, c, h_n, c_n, gates, w_hh, h0, c0, lengths, reverse, col)


@kernel
def _backward_rows(b0, b1, dgates, dh0, dc0, dy, dh_n, dc_n, gates, h, c, w_hh,
                   lengths, reverse, col, work):
    T = gates.shape[0]
    G = gates.shape[2]
    H = G // 4
    for b in range(b0, b1):
        for j in range(H):
            dh0[b, j] = dh_n[b, j]
            dc0[b, j] = dc_n[b, j]
    zero_rows_past(b0, b1, dgates, lengths)
    # dh0/dc0 carry the running gradient of each row's state, back to the start.
    for step in range(T - 1, -1, -1):
        for b in range(b0, b1):
            L = lengths[b]
            if step >= L:
                continue
            t = step_time(step, L, reverse)
            p, o = slots(t, reverse)
            g = gates[t, b]
            dg = dgates[t, b]  # may alias g: every read of index j precedes its write
            for j in range(H):
                dh = dy[t, b, col + j] + dh0[b, j]
                ig = g[j]
                fg = g[H + j]
                gg = g[2 * H + j]
                og = g[3 * H + j]
                tc = tanh(c[o, b, j])
                dc = dc0[b, j] + dh * (og - og * tc * tc)
                dg[j] = dc * gg * (ig - ig * ig)
                dg[H + j] = dc * c[p, b, j] * (fg - fg * fg)
                dg[2 * H + j] = dc * (ig - ig * gg * gg)
                dg[3 * H + j] = dh * tc * (og - og * og)
                dc0[b, j] = dc * fg
            for k in range(H):
                work[k] = 0
            for j in range(G):
                a = dg[j]
                wj = w_hh[j]
                for k in range(H):
                    work[k] += a * wj[k]
            for k in range(H):
                dh0[b, k] = work[k]


@kernel
def lstm_backward(b0, b1, dgates, dh0, dc0, dy, dh_n, dc_n, gates, h, c, w_hh, lengths, reverse,
                  col, work):
    """Backward through time for one direction of one layer, for batch rows b0:b1.

    dgates: (T, B, 4H) out: gradients of the gate pre-activations (zero past each
            length); may be the same array as ``gates``
    dh0, dc0: (B, H) out: gradients of the initial state
    dy: (T, B, Y) gradient of the layer output; this direction reads columns col:col+H
    dh_n, dc_n: (B, H) gradients of the final state
    gates, h, c, w_hh, lengths, reverse, col: as saved and given by ``lstm_forward``
    work: (H,) scratch, one per concurrent call
    """
    _backward_rows(b0, b1, dgates, dh0, dc0, dy, dh_n, dc_n, gates, h, c, w_hh,
                   lengths, reverse, col, work)


@kernel
def lstm_step(h_out, c_out, x, h, c, w_ih, w_hh, b_ih, b_hh, pre):
    """One time step of one layer, for streaming.

    h_out, c_out: (B, H) new state; x: (B, I); h, c: (B, H) state before the step
    w_ih: (4H, I); w_hh: (4H, H); b_ih, b_hh: (4H,); pre: (4H,) scratch
    """
    B, I = x.shape
    G = w_hh.shape[0]
    H = G // 4
    for b in range(B):
        xb = x[b]
        hb = h[b]
        for j in range(G):
            acc = b_ih[j] + b_hh[j]
            wi = w_ih[j]
            for k in range(I):
                acc += wi[k] * xb[k]
            wh = w_hh[j]
            for k in range(H):
                acc += wh[k] * hb[k]
            pre[j] = acc
        _pointwise(pre, c[b], c_out[b], h_out[b])
