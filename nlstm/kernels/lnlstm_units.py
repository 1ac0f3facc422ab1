"""The LayerNorm LSTM's and the zoneout LSTM's passes for a batch of one row, split across
threads by hidden units (as :mod:`nlstm.kernels.lstm_units` does for the plain LSTM).

Each of ``parts`` threads owns the hidden units j0:j1 (``units.unit_range``) and runs the
one-row tile over its own unit blocks of the packed W_hhᵀ. Without normalisation its
product goes straight into its units' gates, and one barrier per step (before the next
step reads the whole h) is all the parts share. LayerNorm needs two more: LN(W_hh h)
normalises over all 4H gates and LN(c̃) over all H units, so the parts write their units'
W_hh h and c̃ into shared rows, meet, and then each computes the row's moments itself (a
few hundred additions, cheaper than another barrier) and goes on with its own units.
Backward likewise: each part takes its units' gate gradients and carries dh for its units
(rows j0:j1 of W_hhᵀ against every gate's gradient) after one barrier; LayerNorm adds two
(the means of LN(c̃)'s and of LN(W_hh h)'s gradients run over whole rows).

The cell's equations are the one-thread kernels' (``lnlstm._gates``, ``_out_units``,
``add_normalized``, ``_back_ln``, ``_back_gates``, inlined). Plain cell only (no variant options,
no projection); H a multiple of the vector width (the tiles). Slots as in
:mod:`nlstm.kernels.slots`; gate order i, f, g, o.
"""
from .activations import cast_like
from .blocks import row_dots
from .config import kernel
from .lnlstm import (EPS, _back_gates, _back_ln, _gates, _out_units, add_normalized, back_means,
                     moments, split_dh)
from .simd import vwidth, wide
from .slots import begin_rows, end_rows, slots, step_time, zero_padding, zero_rows_past
from .sync import barrier
from .tiles import FROM_OUT_AND_BIAS, FROM_ZERO, tile_row
from .units import copy, unit_range


@kernel
def lnlstm_forward_units(part, parts, flags, y, h, c, h_n, c_n, gates, wp, bias, h0, c0,
                         lengths, reverse, col, ln, g_hh, g_c, b_c, rhat, chat, rstd, zh, zc,
                         r, ct):
    """``lnlstm_forward`` of the plain cell for B = 1, the units j0:j1 of this ``part``.

    Every part is called at once, each on its own thread, with the same arrays (shapes and
    meanings as for ``lnlstm_forward``, B = 1; no variant options); flags:
    (parts·sync.STRIDE,) int64 zeros; wp: W_hhᵀ packed by ``tiles.pack_gates``;
    r: (4H,) and ct: (H,) scratch shared by the parts (W_hh h and c̃ of the step).
    """
    H = c.shape[2]
    G = 4 * H
    K = h.shape[2]
    W = vwidth(gates)
    j0, j1 = unit_range(part, parts, H)
    begin_rows(0, 1, h[:, :, j0:j1], h0[:, j0:j1], lengths, reverse)
    begin_rows(0, 1, c[:, :, j0:j1], c0[:, j0:j1], lengths, reverse)
    zero_padding(0, 1, y, lengths, col + j0, j1 - j0)
    if ln and part == 0:  # the gradient products read every row of these
        zero_rows_past(0, 1, rhat, lengths)
        zero_rows_past(0, 1, chat, lengths)
    L = lengths[0]
    count = 1
    barrier(flags, part, parts, count)
    gf = gates.reshape(gates.size)
    hf = h.reshape(h.size)
    zero = gates[0, 0, :0]
    mean_c = rstd_c = bias[0] * 0
    for step in range(L):
        t = step_time(step, L, reverse)
        p, o = slots(t, reverse)
        g = gates[t, 0]
        for u in range(j0 // W, j1 // W):
            if ln:  # W_hh h alone, normalised below
                tile_row(r, u * W, H, bias, u * W, hf, p * K, wp, u * K * 4 * W, K, FROM_ZERO)
            else:
                tile_row(gf, t * G + u * W, H, bias, u * W, hf, p * K, wp, u * K * 4 * W, K,
                         FROM_OUT_AND_BIAS)
        if ln:
            count += 1
            barrier(flags, part, parts, count)  # the moments read every gate of W_hh h
            mean, rs = moments(r, EPS)
            if part == 0:
                rstd[t, 0, 1] = rs
            for q in range(4):
                add_normalized(g, r, rhat[t, 0], mean, rs, g_hh, bias, q * H + j0, q * H + j1)
        cp = c[p, 0]
        _gates(g[j0:j1], g[H + j0:H + j1], g[2 * H + j0:2 * H + j1], g[3 * H + j0:3 * H + j1],
               cp[j0:j1], ct[j0:j1])
        if ln:
            count += 1
            barrier(flags, part, parts, count)  # LN(c̃)'s moments read every unit
            mean_c, rstd_c = moments(ct, EPS)
            if part == 0:
                rstd[t, 0, 2] = rstd_c
        _out_units(g, cp, h[p, 0], c[o, 0], h[o, 0], ct, ln, g_c, b_c,
                   chat[t, 0] if ln else zero, mean_c, rstd_c,
                   zh[t, 0] if zh.shape[0] > 0 else zero, zc[t, 0] if zc.shape[0] > 0 else zero,
                   j0, j1)
        copy(y[t, 0, col + j0:col + j1], h[o, 0, j0:j1])
        count += 1
        # the next step reads every unit of h (and overwrites r and ct)
        barrier(flags, part, parts, count)
    end_rows(0, 1, h_n[:, j0:j1], h[:, :, j0:j1], lengths, reverse)
    end_rows(0, 1, c_n[:, j0:j1], c[:, :, j0:j1], lengths, reverse)


@kernel
def lnlstm_backward_units(part, parts, flags, dgates, dh0, dc0, dy, dh_n, dc_n, gates, c, w_hh_t,
                          lengths, reverse, col, ln, g_hh, g_c, b_c, rhat, chat, rstd, dr, du,
                          zh, zc, dht, keep, sd):
    """``lnlstm_backward`` of the plain cell for B = 1, the units j0:j1 of this ``part``.

    Arrays as for ``lnlstm_backward`` (B = 1; dgates may be ``gates``; no variant options);
    flags as for ``lnlstm_forward_units``; dht, keep: (H,) and sd: (4H,) scratch shared by
    the parts. Each step: the units' first pass of the cell's gradient (``ln``), a barrier,
    the means over every unit, the units' gate gradients; with ``ln`` their dz ⊙ γ_hh into
    sd, a barrier, its means over the 4H gates, the units' dr; a barrier (the carry reads
    every gate's gradient); then the carry for the units: rows j0:j1 of W_hhᵀ against it.
    """
    wide()
    H = c.shape[2]
    G = 4 * H
    j0, j1 = unit_range(part, parts, H)
    n = j1 - j0
    copy(dh0[0, j0:j1], dh_n[0, j0:j1])
    copy(dc0[0, j0:j1], dc_n[0, j0:j1])
    if part == 0:  # rows past the length: no part writes there
        zero_rows_past(0, 1, dgates, lengths)
        if ln:
            zero_rows_past(0, 1, dr, lengths)
            zero_rows_past(0, 1, du, lengths)
    L = lengths[0]
    zo = zh.shape[0] > 0
    zero = dht[:0]
    count = 1
    barrier(flags, part, parts, count)
    dhu, dcu, ku = dh0[0, j0:j1], dc0[0, j0:j1], keep[j0:j1]
    for step in range(L - 1, -1, -1):
        t = step_time(step, L, reverse)
        p, o = slots(t, reverse)
        g, dg = gates[t, 0], dgates[t, 0]  # dg may alias g (see _cell_back_plain)
        dyu, vu = dy[t, 0, col + j0:col + j1], dht[j0:j1]
        split_dh(dyu, dhu, zh[t, 0, j0:j1] if zo else zero, ku, vu)
        go, do = g[3 * H + j0:3 * H + j1], dg[3 * H + j0:3 * H + j1]
        s1 = s2 = cast_like(dht, 0)
        rs = rstd[t, 0, 2] if ln else s1
        chu = chat[t, 0, j0:j1] if ln else zero
        if ln:
            _back_ln(go, vu, chu, g_c[j0:j1], b_c[j0:j1], du[t, 0, j0:j1], do)
            count += 1
            barrier(flags, part, parts, count)  # the means read every unit's gradient
            s1, s2 = back_means(dht, chat[t, 0])
        _back_gates(g[j0:j1], g[H + j0:H + j1], g[2 * H + j0:2 * H + j1], go, dg[j0:j1],
                    dg[H + j0:H + j1], dg[2 * H + j0:2 * H + j1], do, vu, dcu, c[p, 0, j0:j1],
                    ln, chu, rs, s1, s2, zc[t, 0, j0:j1] if zo else zero)
        src = dg
        if ln:  # dr = the gradient of W_hh h through LN(W_hh h)
            for q in range(4):
                a, b = q * H + j0, q * H + j1
                sq, dq, gq = sd[a:b], dg[a:b], g_hh[a:b]
                for j in range(n):
                    sq[j] = dq[j] * gq[j]
            count += 1
            barrier(flags, part, parts, count)  # the means read every gate
            m1, m2 = back_means(sd, rhat[t, 0])
            r1, xh, src = rstd[t, 0, 1], rhat[t, 0], dr[t, 0]
            for q in range(4):
                a, b = q * H + j0, q * H + j1
                sq, xq, oq = sd[a:b], xh[a:b], src[a:b]
                for j in range(n):
                    oq[j] = r1 * (sq[j] - m1 - xq[j] * m2)
        count += 1
        barrier(flags, part, parts, count)  # the carry reads every gate's gradient
        row_dots(dh0[0], w_hh_t, src, 0, G, j0, j1)  # dh of units j0:j1
        if zo:
            for j in range(n):
                dhu[j] += ku[j]
