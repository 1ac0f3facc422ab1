"""Elman RNN kernels: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu, or with
ONNX's ``clip`` or another activation, ``acts`` (one row (code, alpha, beta), see
nlstm.kernels.activations; (0, 3) for tanh/relu) of the pre-activation clamped to ±clip.
The pre-activations stay in ``pre`` for backward.

Time and state slots as in :mod:`nlstm.kernels.slots`, per-step block products as in
:mod:`nlstm.kernels.blocks`; the layer does the input projection and the weight-gradient
products, as for the LSTM.
"""
import numpy as np

from .activations import cast_like, dgate, gate, tanh
from .blocks import (active_rows, add_recurrent, copy_out, matmul_nt, row_nn_add, row_out,
                     scatter_rows)
from .config import inlined_kernel, kernel
from .simd import vwidth, wide
from .table import array1, array2, array3, flag
from .tiles import FROM_OUT_AND_BIAS, panel_rows, row_blocks
from .slots import (begin_rows, copy_rows, end_rows, slots, step_inputs_finite, step_layer_rows,
                    step_time, zero_padding, zero_rows_past)


# ---- the cell's equations, each written once, inlined into every path ---------------------


@inlined_kernel
def _activate(pre, h_new, relu, acts, clip):
    """h_new = act(pre): tanh or relu, or with ``acts`` (1, 3) its activation of pre
    clamped to ±clip; pre, h_new: (H,). acts (0, 3): tanh or relu."""
    wide()
    if acts.shape[0] > 0:
        for j in range(pre.shape[0]):
            h_new[j] = gate(acts[0], pre[j], clip)
    elif relu:
        for j in range(pre.shape[0]):
            h_new[j] = max(pre[j], 0)
    else:
        for j in range(pre.shape[0]):
            h_new[j] = tanh(pre[j])


@inlined_kernel
def _activate_back(d, dy, dc, h_new, relu, acts, clip, out):
    """The pre-activations' gradient: d ← (dy + dc) ⊙ act'(pre) (d holds pre on entry, read
    before it is written), also into out; h_new: act(pre); all (H,)."""
    wide()
    if acts.shape[0] > 0:
        for j in range(d.shape[0]):
            d[j] = (dy[j] + dc[j]) * dgate(acts[0], d[j], h_new[j], clip)
            out[j] = d[j]
    else:
        for j in range(d.shape[0]):
            dh = dy[j] + dc[j]
            if relu:
                d[j] = dh if h_new[j] > 0 else dh - dh
            else:
                d[j] = dh - dh * h_new[j] * h_new[j]
            out[j] = d[j]


@kernel
def _forward_row(b, y, h, pre, w_hh_t, bias, lengths, reverse, col, relu, acts, clip, wf):
    """``rnn_forward``'s recurrence for the single batch row b: each step's product goes
    straight into its pre-activations, without the active-row bookkeeping (as the LSTM's
    ``_forward_row``); with wf (as for ``rnn_forward``), by the one-row tile over its panels
    (``tiles.row_blocks``)."""
    wide()
    L = lengths[b]
    B, H = h.shape[1], h.shape[2]
    W = vwidth(pre)
    pf = pre.reshape(pre.size)
    hf = h.reshape(h.size)
    last = H - (-(-H // (4 * W)) - 1) * 4 * W  # the last panel's columns
    for step in range(L):
        t = step_time(step, L, reverse)
        p, o = slots(t, reverse)
        g = pre[t, b]
        if wf.shape[0] > 0:
            row_blocks(pf, (t * B + b) * H, W, 4 * W, bias, hf, (p * B + b) * H, wf, H, 0,
                       -(-H // (4 * W)), step, FROM_OUT_AND_BIAS, last)
        else:
            for j in range(g.shape[0]):
                g[j] += bias[j]
            row_nn_add(g, h[p, b], w_hh_t, 0, g.shape[0])
        hn = h[o, b]
        _activate(g, hn, relu, acts, clip)
        row_out(y, t, b, col, hn)


@kernel
def rnn_forward_row(b, y, h, h_n, pre, w_hh_t, bias, h0, lengths, reverse, col, relu, acts,
                    clip, wf):
    """``rnn_forward`` for the one batch row b, as ``rnn_forward`` runs it, arguments as
    there. Its own kernel for the reason ``lstm.lstm_forward_row`` has one: a first one-row
    inference compiles only this path, not the panels and blocks of ``rnn_forward``."""
    begin_rows(b, b + 1, h, h0, lengths, reverse)
    zero_padding(b, b + 1, y, lengths, col, pre.shape[2])
    _forward_row(b, y, h, pre, w_hh_t, bias, lengths, reverse, col, relu, acts, clip, wf)
    end_rows(b, b + 1, h_n, h, lengths, reverse)


@kernel
def rnn_forward(b0, b1, y, h, h_n, pre, w_hh_t, bias, h0, lengths, reverse, col, relu, acts,
                clip, wf, rows, times, sp1, sg):
    """One direction of one layer over the whole sequence, for batch rows b0:b1.

    y: (T, B, Y) layer output; this direction writes columns col:col+H
    h: (T+1, B, H) state slots; h_n: (B, H) final state
    pre: (T, B, H) in: x·W_ihᵀ; out: pre-activations, with W_hh h and the biases added
    w_hh_t: (H, H) = W_hhᵀ; bias: (H,) b_ih + b_hh; h0: (B, H); lengths: (B,) int64;
    reverse, relu: bool; col: int; acts: (1, 3) or (0, 3); clip: scalar (inf when off)
    rows, times: (B,) int64 scratch; sp1, sg: (B, H) scratch
    wf: W_hhᵀ packed by ``tiles.pack_panels`` for the per-step product, or empty (the
    products of nlstm.kernels.blocks)
    """
    T = pre.shape[0]
    H = pre.shape[2]
    begin_rows(b0, b1, h, h0, lengths, reverse)
    zero_padding(b0, b1, y, lengths, col, H)
    if b1 - b0 == 1:
        _forward_row(b0, y, h, pre, w_hh_t, bias, lengths, reverse, col, relu, acts, clip, wf)
        T = 0  # done
    for step in range(T):
        n = active_rows(step, b0, b1, lengths, reverse, rows, times)
        if n == 0:
            break
        add_recurrent(pre, h, w_hh_t, bias, rows, times, n, reverse, wf, sp1, sg)
        for i in range(n):
            p, o = slots(times[i], reverse)
            _activate(pre[times[i], rows[i]], h[o, rows[i]], relu, acts, clip)
        copy_out(y, h, rows, times, n, reverse, col)
    end_rows(b0, b1, h_n, h, lengths, reverse)


def rnn_forward_args(*, y, h, h_n, pre, w_hh_t, bias, h0, lengths, reverse, col, relu, acts, clip,
                     wf):
    """The arguments of ``rnn_forward`` after b0, b1 and before the scratch (which
    nlstm.kernels.parallel's drivers add per part), and of ``rnn_forward_row`` after b, by
    name."""
    return y, h, h_n, pre, w_hh_t, bias, h0, lengths, reverse, col, relu, acts, clip, wf


@kernel
def rnn_backward(b0, b1, dpre, dh0, dy, dh_n, h, w_hh_t, lengths, reverse, col, relu, acts, clip,
                 wc, rows, times, sp1, sg):
    """Backward through time for one direction of one layer, for batch rows b0:b1.

    dpre: (T, B, H) in: the forward's pre-activations (read with acts); out: their gradients
    (zero past each length)
    dh0: (B, H) out: gradient of the initial state, also the running carry
    dy: (T, B, Y) gradient of the layer output (columns col:col+H); dh_n: (B, H)
    h, w_hh_t, lengths, reverse, col, relu, acts, clip: as in ``rnn_forward``; scratch as there
    wc: W_hh packed by ``tiles.pack_panels`` for the carry, or empty (then dot products along
    W_hhᵀ's rows, ``blocks.matmul_nt``)
    """
    wide()
    T = dpre.shape[0]
    H = dpre.shape[2]
    copy_rows(b0, b1, dh0, dh_n)
    zero_rows_past(b0, b1, dpre, lengths)
    for step in range(T - 1, -1, -1):
        n = active_rows(step, b0, b1, lengths, reverse, rows, times)
        if n == 0:
            continue
        for i in range(n):
            b = rows[i]
            t = times[i]
            p, o = slots(t, reverse)
            _activate_back(dpre[t, b], dy[t, b, col:col + H], dh0[b], h[o, b], relu, acts, clip,
                           sg[i])
        if wc.shape[0] > 0:
            panel_rows(dh0, sg, rows, n, wc, 0, H, 0, H, True)
        else:
            matmul_nt(sp1, sg, w_hh_t, n, 0, H)
            scatter_rows(dh0, sp1, rows, n)


def rnn_backward_args(*, dpre, dh0, dy, dh_n, h, w_hh_t, lengths, reverse, col, relu, acts, clip,
                      wc):
    """``rnn_backward``'s arguments after b0, b1 and before the scratch, by name."""
    return dpre, dh0, dy, dh_n, h, w_hh_t, lengths, reverse, col, relu, acts, clip, wc


@kernel
def rnn_step(k, check, x, h, h_out, w_ih_t, w_hh_t, b_ih, b_hh, relu, pre):
    """One time step of layer k. x: (B, I) the input of layer 0 (layer k > 0 reads
    h_out[k-1]); h, h_out: (L, B, H), read / written at [k]; w_ih_t: (I, H); w_hh_t: (H, H);
    pre: (H,) scratch. With ``check``, returns False having written nothing if the inputs
    are not finite; else True."""
    return _step(k, check, x, h, h_out, w_ih_t, w_hh_t, b_ih, b_hh, relu, pre[:0].reshape(0, 3),
                 cast_like(pre, np.inf), pre)


@kernel
def rnn_step_options(k, check, x, h, h_out, w_ih_t, w_hh_t, b_ih, b_hh, relu, acts, clip, pre):
    """``rnn_step`` with an activation and clip (as for ``rnn_forward``)."""
    return _step(k, check, x, h, h_out, w_ih_t, w_hh_t, b_ih, b_hh, relu, acts, clip, pre)


def rnn_step_args(*, w_ih_t, w_hh_t, b_ih, b_hh, relu, options, pre):
    """The arguments after (k, check, x, h, h_out), by name: of ``rnn_step`` when options is
    None, else of ``rnn_step_options`` (options: (acts, clip)); pre: (H,) scratch."""
    return (w_ih_t, w_hh_t, b_ih, b_hh, relu, *(() if options is None else options), pre)


@kernel
def rnn_step_table(k, check, x, t):
    """``rnn_step`` with its arguments after (k, check, x) as one table (``table.encode``
    of h, h_out and ``rnn_step_args``): a stream's call."""
    return rnn_step(k, check, x, array3(t, 0, x), array3(t, 1, x), array2(t, 2, x),
                    array2(t, 3, x), array1(t, 4, x), array1(t, 5, x), flag(t, 6),
                    array1(t, 7, x))


@kernel
def _step(k, check, x, h, h_out, w_ih_t, w_hh_t, b_ih, b_hh, relu, acts, clip, pre):
    if check and not step_inputs_finite(k, x, h, h):
        return False
    inp, hk, hn = step_layer_rows(k, x, h, h_out)
    H = hk.shape[1]
    for b in range(inp.shape[0]):
        for j in range(H):  # the biases first, as in the LSTM's step
            pre[j] = b_ih[j] + b_hh[j]
        row_nn_add(pre, inp[b], w_ih_t, 0, H)
        row_nn_add(pre, hk[b], w_hh_t, 0, H)
        _activate(pre, hn[b], relu, acts, clip)
    return True
