"""The LayerNorm LSTM's and the zoneout LSTM's passes for a batch of one row, split across
threads by hidden units (as :mod:`nlstm.kernels.lstm_units` does for the plain LSTM).

Each of ``parts`` threads owns the hidden units j0:j1 (``units.unit_range``) and runs the
one-row tile over its own unit blocks of the packed W_hhᵀ. Without normalisation its
product goes straight into its units' gates, and one barrier per step (before the next
step reads the whole h) is all the parts share. LayerNorm normalises W_hh h over all 4H
gates and c̃ over all H units. Rather than meet again for each normalisation's moments,
every part runs the whole cell after the step's one barrier (W_hh h written by every
part, in a row shared by the parts, one of two by step parity): the moments, the gates,
c and h of every unit, on rows of its own, with the one-row kernel's functions
(``lnlstm_row``), so its sums and its bits are the one-row kernel's at any thread count.
It writes only its own units of the outputs, and keeps the whole h for its next product.
In inference it writes none of what only backward reads (the gates, LN(W_hh h), LN(c̃)):
both parts read every gate's input, and a part writing its units of those lines makes
the other core give them up each step (long inference 6-15% faster without them).

Backward meets twice a step, each part sending its share's sums with its barrier (in its
counter's cache line, ``sync.barrier_sending``), combined in part order: the first pass
of the cell's gradient (for the means over every unit), then the gate gradients and
dz ⊙ γ_hh (for the means over the 4H gates); after the second every part computes the
gradient of W_hh h, dr, for every gate itself for its carry. Run whole by every part
after one barrier instead, as forward runs, it took 12-14% longer: the gradient's passes
over the 4H gates cost more twice than the meeting (bench/RESULTS.md, stop 39).

Plain cell only (no variant options, no projection); H a multiple of the vector width
(the tiles). Slots as in :mod:`nlstm.kernels.slots`; gate order i, f, g, o.
"""
from .activations import cast_like
from .blocks import row_dots_alternating, same
from .config import kernel
from .lnlstm import (EPS, _back_gates, _back_ln, _cell_plain, _gates, _out_units,
                     add_normalized, moments, split_dh)
from .simd import vwidth, wide
from .slots import (begin_rows, end_rows, saved_at, slots, step_time, zero_padding,
                    zero_rows_past)
from .sync import SLOTS, barrier, barrier_sending, received
from .tiles import FROM_OUT_AND_BIAS, FROM_ZERO, row_blocks
from .units import copy, unit_range


# Backward's parts send two pairs with its meetings (slots 0 and 1: the sums of the two
# normalisations' gradients), in its counter's cache line.
if SLOTS < 2:
    raise ImportError(f"lnlstm_units sends 2 pairs per part with its meetings; a cache line "
                      f"of tuning.CACHE_LINE_BYTES holds {SLOTS}")


@kernel
def combined_means(flags, slot, parts, n, like):
    """The means over n elements of the two sums every part sent as pair ``slot`` (summed in
    part order, in the dtype of ``like``)."""
    s1 = cast_like(like, 0)
    s2 = cast_like(like, 0)
    for p in range(parts):
        a, b = received(flags, p, slot)
        s1 += cast_like(like, a)
        s2 += cast_like(like, b)
    inv_n = cast_like(like, 1.0 / n)
    return s1 * inv_n, s2 * inv_n


@kernel
def lnlstm_forward_units(part, parts, flags, y, h, c, h_n, c_n, gates, wp, bias, h0, c0,
                         lengths, reverse, col, ln, g_hh, g_c, b_c, rhat, chat, rstd, zh, zc,
                         r, ct, mine):
    """``lnlstm_forward`` of the plain cell for B = 1, the units j0:j1 of this ``part``.

    Every part is called at once, each on its own thread, with the same arrays (shapes and
    meanings as for ``lnlstm_forward``, B = 1; no variant options); flags:
    (parts·sync.STRIDE,) int64 zeros, cache-line aligned; wp: W_hhᵀ packed by
    ``tiles.pack_gates``; r: (2, 4H) scratch shared by the parts (W_hh h, by step parity;
    ``ln`` only); ct: (H,) scratch shared by the parts (c̃; without ``ln``); mine:
    (parts, 13, H) scratch, each part's own rows (``ln`` only).

    Without ``ln``: the plain LSTM's split with zoneout, one barrier a step. With it, also
    one: after it each part runs the whole cell in mine[part] (the gates, LN(W_hh h), h
    before and after, c, c̃, LN(c̃): the one-row kernel's bits) and writes its own units of
    the step's outputs.
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
    zo_h, zo_c = zh.shape[0] > 0, zc.shape[0] > 0
    none = cast_like(bias, 0)  # (bias[0] * 0 is float64: a float32 times an int)
    if not ln:
        for step in range(L):
            t = step_time(step, L, reverse)
            p, o = slots(t, reverse)
            g = gates[t, 0]
            # the unit blocks in alternating order (see tiles.row_blocks)
            row_blocks(gf, t * G, H, W, bias, hf, p * K, wp, K, j0 // W, j1 // W, step,
                       FROM_OUT_AND_BIAS)
            cp = c[p, 0]
            _gates(g[j0:j1], g[H + j0:H + j1], g[2 * H + j0:2 * H + j1],
                   g[3 * H + j0:3 * H + j1], cp[j0:j1], ct[j0:j1])
            _out_units(g, cp, h[p, 0], c[o, 0], h[o, 0], ct, False, g_c, b_c, zero, none, none,
                       zh[t, 0] if zo_h else zero, zc[t, 0] if zo_c else zero, j0, j1)
            copy(y[t, 0, col + j0:col + j1], h[o, 0, j0:j1])
            count += 1
            barrier(flags, part, parts, count)  # the next step reads every unit of h
    else:
        mf = mine.reshape(mine.size)
        at = part * mine.shape[1] * mine.shape[2]  # this part's rows, flat
        pg, rh = mf[at:at + G], mf[at + G:at + 2 * G]
        hs = at + 2 * G  # h, two rows: before and after the step, alternating
        cn, ctp = mf[hs + 2 * H:hs + 3 * H], mf[hs + 3 * H:hs + 4 * H]
        chp = mf[hs + 4 * H:hs + 5 * H]
        rf = r.reshape(r.size)
        save = rhat.shape[0] == gates.shape[0]  # training (inference passes one row of rhat)
        if L > 0:  # the initial state, every unit (the parts met above)
            copy(mf[hs:hs + H], h[slots(step_time(0, L, reverse), reverse)[0], 0])
        cur = 0
        for step in range(L):
            t = step_time(step, L, reverse)
            p, o = slots(t, reverse)
            # before the barrier: after it the parts write their units of the gates
            copy(pg, gates[t, 0])
            row_blocks(rf, cur * G, H, W, bias, mf, hs + cur * H, wp, K, j0 // W, j1 // W, step,
                       FROM_ZERO)
            count += 1
            barrier(flags, part, parts, count)  # every unit of W_hh h is written
            # the whole cell, as lnlstm_forward_row runs it, on this part's own rows
            rv = rf[cur * G:(cur + 1) * G]
            mean, rs = moments(rv, EPS)
            add_normalized(pg, rv, rh, mean, rs, g_hh, bias, 0, G)
            nxt = 1 - cur
            hp, hn = mf[hs + cur * H:hs + (cur + 1) * H], mf[hs + nxt * H:hs + (nxt + 1) * H]
            rs_c = _cell_plain(pg, c[p, 0], hp, cn, hn, ctp if zo_h or zo_c else cn, ln, g_c,
                               b_c, chp, zh[t, 0] if zo_h else zero, zc[t, 0] if zo_c else zero)
            if part == 0:
                rstd[t, 0, 1] = rs
                rstd[t, 0, 2] = rs_c
            if save:
                gt, rt = gates[t, 0], rhat[saved_at(rhat, t), 0]
                for q in range(4):
                    a, b = q * H + j0, q * H + j1
                    copy(gt[a:b], pg[a:b])
                    copy(rt[a:b], rh[a:b])
                copy(chat[saved_at(chat, t), 0, j0:j1], chp[j0:j1])
            copy(c[o, 0, j0:j1], cn[j0:j1])
            copy(h[o, 0, j0:j1], hn[j0:j1])
            copy(y[t, 0, col + j0:col + j1], hn[j0:j1])
            cur = nxt
    end_rows(0, 1, h_n[:, j0:j1], h[:, :, j0:j1], lengths, reverse)
    end_rows(0, 1, c_n[:, j0:j1], c[:, :, j0:j1], lengths, reverse)


@kernel
def lnlstm_backward_units(part, parts, flags, dgates, dh0, dc0, dy, dh_n, dc_n, gates, c, w_hh_t,
                          lengths, reverse, col, ln, g_hh, g_c, b_c, rhat, chat, rstd, dr, du,
                          zh, zc, dht, keep, sd, mine):
    """``lnlstm_backward`` of the plain cell for B = 1, the units j0:j1 of this ``part``.

    Arrays as for ``lnlstm_backward`` (B = 1; dgates may be ``gates``; no variant options);
    flags as for ``lnlstm_forward_units``; mine: (parts, 4, H) scratch, each part's own
    rows; dht, keep: (H,) and sd: (4H,) scratch shared by the parts. Each step: the units'
    gate gradients; without ``ln`` a barrier (the carry reads every gate's gradient), then
    the carry for the units: rows j0:j1 of W_hhᵀ against every gate's gradient. With
    ``ln`` two barriers, each sending the part's sums: the first pass of the cell's
    gradient (its sums, for the means over every unit), then the gate gradients and
    dz ⊙ γ_hh into sd (its sums, for the means over the 4H gates); after the second every
    unit's dz ⊙ γ_hh is written, and each part computes the gradient of W_hh h, dr, for
    every gate itself (in mine[part], the same bits in every part) for its carry, and
    writes its own units of dr.
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
    mf = mine.reshape(mine.size)
    drm = mf[part * G:(part + 1) * G]  # every gate's dr, this part's copy
    # dgates is gates in the layers: the loops then name each gate slice once, or LLVM's
    # run-time overlap check sends them to its scalar loop (see blocks.same)
    inplace = same(dgates, gates)
    count = 1
    barrier(flags, part, parts, count)
    dhu, dcu, ku = dh0[0, j0:j1], dc0[0, j0:j1], keep[j0:j1]
    for step in range(L - 1, -1, -1):
        t = step_time(step, L, reverse)
        p, o = slots(t, reverse)
        g, dg = gates[t, 0], dgates[t, 0]
        dyu, vu = dy[t, 0, col + j0:col + j1], dht[j0:j1]
        split_dh(dyu, dhu, zh[t, 0, j0:j1] if zo else zero, ku, vu)
        go, do = g[3 * H + j0:3 * H + j1], dg[3 * H + j0:3 * H + j1]
        s1 = s2 = cast_like(dht, 0)
        rs = rstd[t, 0, 2] if ln else s1
        chu = chat[t, 0, j0:j1] if ln else zero
        gi, gf, gg = g[j0:j1], g[H + j0:H + j1], g[2 * H + j0:2 * H + j1]
        cpu, zcu = c[p, 0, j0:j1], zc[t, 0, j0:j1] if zo else zero
        if ln:
            gcu, bcu, duu = g_c[j0:j1], b_c[j0:j1], du[t, 0, j0:j1]
            if inplace:  # the gates named once (see blocks.same)
                p1, p2 = _back_ln(go, vu, chu, gcu, bcu, duu, go)
            else:
                p1, p2 = _back_ln(go, vu, chu, gcu, bcu, duu, do)
            count += 1
            barrier_sending(flags, part, parts, count, 0, p1, p2)
            s1, s2 = combined_means(flags, 0, parts, H, dht)
        if inplace:
            _back_gates(gi, gf, gg, go, gi, gf, gg, go, vu, dcu, cpu, ln, chu, rs, s1, s2, zcu)
        else:
            _back_gates(gi, gf, gg, go, dg[j0:j1], dg[H + j0:H + j1], dg[2 * H + j0:2 * H + j1],
                        do, vu, dcu, cpu, ln, chu, rs, s1, s2, zcu)
        if ln:  # dr = the gradient of W_hh h through LN(W_hh h)
            xh = rhat[t, 0]
            p1 = p2 = cast_like(sd, 0)
            for q in range(4):
                a, b = q * H + j0, q * H + j1
                sq, dq, gq, xq = sd[a:b], dg[a:b], g_hh[a:b], xh[a:b]
                for j in range(n):
                    v = dq[j] * gq[j]
                    sq[j] = v  # kept: see normalize_back
                    p1 += v
                    p2 += v * xq[j]
            count += 1
            barrier_sending(flags, part, parts, count, 1, p1, p2)
            m1, m2 = combined_means(flags, 1, parts, G, sd)
            r1 = rstd[t, 0, 1]
            for j in range(G):  # every gate (the other parts' sd: written before they sent)
                drm[j] = r1 * (sd[j] - m1 - xh[j] * m2)
            drt = dr[t, 0]
            for q in range(4):
                copy(drt[q * H + j0:q * H + j1], drm[q * H + j0:q * H + j1])
            row_dots_alternating(dh0[0], w_hh_t, drm, 0, G, j0, j1, step)  # dh of units j0:j1
        else:
            count += 1
            barrier(flags, part, parts, count)  # the carry reads every gate's gradient
            row_dots_alternating(dh0[0], w_hh_t, dg, 0, G, j0, j1, step)
        if zo:
            for j in range(n):
                dhu[j] += ku[j]
