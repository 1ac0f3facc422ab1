"""The LayerNorm LSTM's and the zoneout LSTM's passes for one batch row of the plain cell (no
variant options, no projection), on the one-row tile (as ``lstm.lstm_forward_row`` and
``lstm_backward_row`` run the plain LSTM's one row).

A one-row step is a matrix-vector product that streams all of W_hh from the caches, then the
cell's pointwise math over a few hundred values. Here the product runs through the packed
weights (``tiles.row_blocks``, blocks in alternating order), W_hh h straight into the slot it
is saved in (LN(W_hh h) normalises it in place) or, without the normalisation, into the
gates; the cell's math is ``lnlstm``'s (``_cell_plain``, ``_cell_back_plain``). The
forward's sums run in the order the batched kernels' tiles (``tiles.tile_row``,
``tile_rows4``) run them, so a row's outputs have the same bits alone as in a batch.
Backward carries dh through the rows of W_hhᵀ as the parameters hold it
(``blocks.row_dots_alternating``, as ``lstm_backward_row`` does), not through W_hh packed in
panels as the batched kernel does: packing took 5.5 µs a call at H = 64, and S training ran
2-10% faster without it (bench/RESULTS.md, stop 31). Its gradients agree with a batch's to
float32 rounding. Each kernel compiles only this path (seconds, against
``lnlstm_forward``'s minutes of variants). Arrays as for ``lnlstm.lnlstm_forward`` and
``lnlstm_backward``.
"""
from .activations import cast_like
from .blocks import row_dots_alternating, row_out
from .config import kernel
from .lnlstm import (EPS, _cell_back_plain, _cell_plain, add_normalized, input_back, moments,
                     scaled_back, split_dh)
from .simd import vwidth
from .slots import (begin_rows, copy_rows, end_rows, saved_at, slots, step_time,
                    zero_padding, zero_rows_past)
from .tiles import FROM_OUT_AND_BIAS, FROM_ZERO, row_blocks


@kernel
def lnlstm_forward_row(b, y, h, c, h_n, c_n, gates, wp, bias, h0, c0, lengths, reverse, col,
                       ln, g_hh, g_c, b_c, rhat, chat, rstd, zh, zc, ct):
    """``lnlstm_forward`` of the plain cell for the one batch row b.

    wp: W_hhᵀ packed by ``tiles.pack_gates`` (H a multiple of the vector width); ct: (H,)
    scratch (c̃, apart from c when zoneout keeps them apart); the rest as for
    ``lnlstm_forward`` (no variant options, no projection)."""
    T, B, G = gates.shape
    H = G // 4
    K = h.shape[2]
    W = vwidth(gates)
    begin_rows(b, b + 1, h, h0, lengths, reverse)
    begin_rows(b, b + 1, c, c0, lengths, reverse)
    zero_padding(b, b + 1, y, lengths, col, K)
    if ln:  # the gradient products read every row of these
        zero_rows_past(b, b + 1, rhat, lengths)
        zero_rows_past(b, b + 1, chat, lengths)
    zo = zh.shape[0] > 0
    none = ct[:0]
    gf = gates.reshape(gates.size)
    hf = h.reshape(h.size)
    rf = rhat.reshape(rhat.size)
    L = lengths[b]
    for step in range(L):
        t = step_time(step, L, reverse)
        p, o = slots(t, reverse)
        g = gates[t, b]
        ho = (p * B + b) * K
        if ln:  # W_hh h into its saved slot, normalised there
            ts = saved_at(rhat, t)
            r = rhat[ts, b]
            row_blocks(rf, (ts * B + b) * G, H, W, bias, hf, ho, wp, K, 0, H // W, step,
                       FROM_ZERO)
            mean, rs = moments(r, EPS)
            rstd[t, b, 1] = rs
            add_normalized(g, r, r, mean, rs, g_hh, bias, 0, G)
        else:
            row_blocks(gf, (t * B + b) * G, H, W, bias, hf, ho, wp, K, 0, H // W, step,
                       FROM_OUT_AND_BIAS)
        ch = chat[saved_at(chat, t), b] if ln else none
        rs = _cell_plain(g, c[p, b], h[p, b], c[o, b], h[o, b], ct if zo else c[o, b], ln, g_c,
                         b_c, ch, zh[t, b] if zo else none, zc[t, b] if zo else none)
        if ln:
            rstd[t, b, 2] = rs
        row_out(y, t, b, col, h[o, b])
    end_rows(b, b + 1, h_n, h, lengths, reverse)
    end_rows(b, b + 1, c_n, c, lengths, reverse)


@kernel
def lnlstm_backward_row(b, dgates, dh0, dc0, dy, dh_n, dc_n, gates, c, w_hh_t, lengths, reverse,
                        col, ln, g_hh, g_c, b_c, rhat, chat, rstd, dr, du, zh, zc, g_ih, xhat,
                        sums, dht, keep):
    """``lnlstm_backward`` of the plain cell for the one batch row b.

    w_hh_t: (H, 4H) W_hhᵀ, as the parameters hold it (not packed: see the module docstring);
    dht, keep: (H,) scratch; g_ih, xhat, sums: as for ``lnlstm_backward`` (sums (5, 4H), each
    step's ``input_back`` run here); the rest as for ``lnlstm_backward`` (no variant options,
    no projection; dgates may be ``gates``)."""
    T, B, G = gates.shape
    H = G // 4
    copy_rows(b, b + 1, dh0, dh_n)
    copy_rows(b, b + 1, dc0, dc_n)
    zero_rows_past(b, b + 1, dgates, lengths)
    if ln:
        zero_rows_past(b, b + 1, dr, lengths)
        zero_rows_past(b, b + 1, du, lengths)
    zo = zh.shape[0] > 0
    none = dht[:0]
    dhb, dcb = dh0[b], dc0[b]
    L = lengths[b]
    for step in range(L - 1, -1, -1):
        t = step_time(step, L, reverse)
        p, o = slots(t, reverse)
        dyt = dy[t, b, col:col + H]  # sliced: loops from 0 (see blocks.py)
        # keep: the gradient that reaches h_prev directly (zoneout)
        split_dh(dyt, dhb, zh[t, b] if zo else none, keep, dht)
        dg = dgates[t, b]
        rs = rstd[t, b, 2] if ln else cast_like(dg, 0)
        _cell_back_plain(gates[t, b], dg, dht, dcb, c[p, b], ln, g_c, b_c,
                         chat[t, b] if ln else none, rs, du[t, b] if ln else none,
                         zc[t, b] if zo else none)
        src = dg
        if ln:  # the carry goes through LN(W_hh h)
            scaled_back(dg, g_hh, rhat[t, b], rstd[t, b, 1], dr[t, b], none)
            input_back(dg, xhat[t, b], rstd[t, b, 0], g_ih, rhat[t, b], du[t, b], chat[t, b],
                       sums)
            src = dr[t, b]
        # the carry: dz · W_hh, groups of rows of W_hhᵀ in alternating order
        row_dots_alternating(dhb, w_hh_t, src, 0, G, 0, H, step)
        if zo:
            for j in range(H):
                dhb[j] += keep[j]
