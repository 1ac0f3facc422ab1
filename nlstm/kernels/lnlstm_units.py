"""The LayerNorm LSTM's and the zoneout LSTM's passes for a batch of one row, split across
threads by hidden units (as :mod:`nlstm.kernels.lstm_units` does for the plain LSTM).

Each of ``parts`` threads owns the hidden units j0:j1 (``units.unit_range``) and runs the
one-row tile over its own unit blocks of the packed W_hhᵀ. Without normalisation its
product goes straight into its units' gates, and one barrier per step (before the next
step reads the whole h) is all the parts share. LayerNorm normalises W_hh h over all 4H
gates and c̃ over all H units, so each step has two barriers, and each part sends its
share's moments (mean and squared deviations) with its barrier, in its counter's cache
line (``sync.barrier_sending``); every part combines them (Chan et al.'s pairwise formula,
in part order: the same bits in every part). After the second barrier every unit's o and
c̃ are written, so each part computes the whole new h itself into its own row, for its
next product, and writes only its own units of the outputs: no third barrier for h.
Backward likewise: without LayerNorm one barrier (the carry, rows j0:j1 of W_hhᵀ against
every gate's gradient, reads them all); with it two, each sending the part's sums for the
means of LN(c̃)'s and of LN(W_hh h)'s gradients, after which each part computes every
gate's dr itself for its carry.

Measured at long (T = 4000, H = 128, 2 threads; bench/RESULTS.md, stop 26): three barriers
a step with the moments in a line of their own, against two with them in the counter's
line, gave the same outputs bit for bit and 0-5% less time.

The cell's equations are the one-thread kernels' (``lnlstm._gates``, ``_out_units``,
``add_normalized``, ``_back_ln``, ``_back_gates``, inlined). Plain cell only (no variant options,
no projection); H a multiple of the vector width (the tiles). Slots as in
:mod:`nlstm.kernels.slots`; gate order i, f, g, o.
"""
import numpy as np

from .activations import cast_like
from .blocks import row_dots_alternating, same
from .config import kernel
from .lnlstm import (EPS, _back_gates, _back_ln, _gates, _out_units, _zoneout, add_normalized,
                     split_dh)
from .simd import vwidth, wide
from .slots import (begin_rows, end_rows, saved_at, slots, step_time, zero_padding,
                    zero_rows_past)
from .sync import SLOTS, barrier, barrier_sending, received
from .tiles import FROM_OUT_AND_BIAS, FROM_ZERO, row_blocks
from .units import copy, unit_range


# Each part sends two pairs with its meetings (slots 0 and 1: the moments or sums of the two
# normalisations), in its counter's cache line.
if SLOTS < 2:
    raise ImportError(f"lnlstm_units sends 2 pairs per part with its meetings; a cache line "
                      f"of tuning.CACHE_LINE_BYTES holds {SLOTS}")


@kernel
def share_moments(a, j0, j1, H, blocks):
    """The moments of this part's share of a: units j0:j1 of each of a's ``blocks`` blocks
    of H: their mean and sum of squared deviations from it."""
    wide()
    n = j1 - j0
    s = cast_like(a, 0)
    for q in range(blocks):
        aq = a[q * H + j0:q * H + j1]
        for j in range(n):
            s += aq[j]
    mean = s / cast_like(a, max(1, n * blocks))
    v = cast_like(a, 0)
    for q in range(blocks):
        aq = a[q * H + j0:q * H + j1]
        for j in range(n):
            d = aq[j] - mean
            v += d * d
    return mean, v


@kernel
def combined_moments(flags, slot, parts, H, blocks, eps, like):
    """The mean and rstd = 1/√(var + eps) of the whole of ``blocks`` blocks of H from every
    part's ``share_moments``, received as pair ``slot`` of ``sync.barrier_sending``:
    M2 = Σ M2_p + Σ n_p (mean_p − mean)² (Chan, Golub and LeVeque), summed in part order, in
    the dtype of ``like``."""
    n = cast_like(like, H * blocks)
    s = cast_like(like, 0)
    for p in range(parts):
        j0, j1 = unit_range(p, parts, H)
        mp, _ = received(flags, p, slot)
        s += cast_like(like, (j1 - j0) * blocks) * cast_like(like, mp)
    mean = s / n
    v = cast_like(like, 0)
    for p in range(parts):
        j0, j1 = unit_range(p, parts, H)
        mp, vp = received(flags, p, slot)
        d = cast_like(like, mp) - mean
        v += cast_like(like, vp) + cast_like(like, (j1 - j0) * blocks) * d * d
    return mean, cast_like(like, 1) / np.sqrt(v / n + cast_like(like, eps))


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
    ``tiles.pack_gates``; r: (4H,) and ct: (H,) scratch shared by the parts (W_hh h and c̃
    of the step); mine: (parts, 4, H) scratch, 4 rows per part (``ln`` only; forward uses
    3).

    Without ``ln``: the plain LSTM's split with zoneout, one barrier a step. With it, two:
    each part sends its share's moments of W_hh h, then of c̃, with its barrier; after the
    second, every unit's o and c̃ are written, and each part computes every unit's h itself
    (mine[part, 0 or 1], alternating; the same bits in every part) for its next product,
    and writes its own units of the step's outputs.
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
        hm = mine[part]  # rows 0, 1: h (before, after); 2: LN(c̃)
        cur = 0
        for step in range(L):
            t = step_time(step, L, reverse)
            p, o = slots(t, reverse)
            g = gates[t, 0]
            if step == 0:  # the initial state, every unit (the parts met above)
                copy(hm[0], h[p, 0])
            row_blocks(r, 0, H, W, bias, mf, (part * 4 + cur) * H, wp, K, j0 // W, j1 // W,
                       step, FROM_ZERO)
            m, v = share_moments(r, j0, j1, H, 4)
            count += 1
            barrier_sending(flags, part, parts, count, 0, m, v)
            mean, rs = combined_moments(flags, 0, parts, H, 4, EPS, r)
            if part == 0:
                rstd[t, 0, 1] = rs
            for q in range(4):
                add_normalized(g, r, rhat[saved_at(rhat, t), 0], mean, rs, g_hh, bias, q * H + j0,
                               q * H + j1)
            cp = c[p, 0]
            _gates(g[j0:j1], g[H + j0:H + j1], g[2 * H + j0:2 * H + j1],
                   g[3 * H + j0:3 * H + j1], cp[j0:j1], ct[j0:j1])
            m, v = share_moments(ct, j0, j1, H, 1)
            count += 1
            barrier_sending(flags, part, parts, count, 1, m, v)
            mean_c, rstd_c = combined_moments(flags, 1, parts, H, 1, EPS, ct)
            if part == 0:
                rstd[t, 0, 2] = rstd_c
            nxt = 1 - cur
            # every unit's h (c's zoneout below, for this part's units alone; c̃ stays)
            _out_units(g, cp, hm[cur], ct, hm[nxt], ct, True, g_c, b_c, hm[2], mean_c,
                       rstd_c, zh[t, 0] if zo_h else zero, zero, 0, H)
            _zoneout(zero, zero, zero, c[o, 0, j0:j1], ct[j0:j1], cp[j0:j1],
                     zc[t, 0, j0:j1] if zo_c else zero)
            copy(h[o, 0, j0:j1], hm[nxt, j0:j1])
            copy(chat[saved_at(chat, t), 0, j0:j1], hm[2, j0:j1])
            copy(y[t, 0, col + j0:col + j1], hm[nxt, j0:j1])
            cur = nxt
    end_rows(0, 1, h_n[:, j0:j1], h[:, :, j0:j1], lengths, reverse)
    end_rows(0, 1, c_n[:, j0:j1], c[:, :, j0:j1], lengths, reverse)


@kernel
def lnlstm_backward_units(part, parts, flags, dgates, dh0, dc0, dy, dh_n, dc_n, gates, c, w_hh_t,
                          lengths, reverse, col, ln, g_hh, g_c, b_c, rhat, chat, rstd, dr, du,
                          zh, zc, dht, keep, sd, mine):
    """``lnlstm_backward`` of the plain cell for B = 1, the units j0:j1 of this ``part``.

    Arrays as for ``lnlstm_backward`` (B = 1; dgates may be ``gates``; no variant options);
    flags and mine as for ``lnlstm_forward_units``; dht, keep: (H,) and sd: (4H,) scratch
    shared by the parts. Each step: the units' gate gradients; without ``ln`` a barrier
    (the carry reads every gate's gradient), then the carry for the units: rows j0:j1 of
    W_hhᵀ against every gate's gradient. With ``ln`` two barriers, each sending the part's
    sums: the first pass of the cell's gradient (its sums, for the means over every unit),
    then the gate gradients and dz ⊙ γ_hh into sd (its sums, for the means over the 4H
    gates); after the second every unit's dz ⊙ γ_hh is written, and each part computes the
    gradient of W_hh h, dr, for every gate itself (in mine[part], the same bits in every
    part) for its carry, and writes its own units of dr.
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
