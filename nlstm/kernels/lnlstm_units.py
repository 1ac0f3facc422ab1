"""The LayerNorm LSTM's and the zoneout LSTM's passes for a batch of one row, split across
threads by hidden units (as :mod:`nlstm.kernels.lstm_units` does for the plain LSTM).

Each of ``parts`` threads owns the hidden units j0:j1 (``units.unit_range``) and runs the
one-row tile over its own unit blocks of the packed W_hhᵀ. Without normalisation its
product goes straight into its units' gates, and one barrier per step (before the next
step reads the whole h) is all the parts share. LayerNorm needs two more: LN(W_hh h)
normalises over all 4H gates and LN(c̃) over all H units, so the parts write their units'
W_hh h and c̃ into their own units of shared rows, each publishes its share's moments
(mean and squared deviations, one cache line per part in ``sums``), they meet, and each
combines every part's moments (Chan et al.'s pairwise formula, in part order: the same bits
in every part) and goes on with its own units. Reading the other parts' halves of the rows
instead moved them across the cores every step (measured alone: reading 2 KB another core
has just written, W_hh h at H = 128, took 1.3 µs). Backward likewise: each part takes its
units' gate gradients and carries dh for its units (rows j0:j1 of W_hhᵀ against every gate's
gradient) after one barrier; LayerNorm adds two, after which the parts combine their sums
for the means of LN(c̃)'s and of LN(W_hh h)'s gradients.

The cell's equations are the one-thread kernels' (``lnlstm._gates``, ``_out_units``,
``add_normalized``, ``_back_ln``, ``_back_gates``, inlined). Plain cell only (no variant options,
no projection); H a multiple of the vector width (the tiles). Slots as in
:mod:`nlstm.kernels.slots`; gate order i, f, g, o.
"""
import numpy as np

from .activations import cast_like
from .blocks import row_dots
from .config import kernel
from .lnlstm import EPS, _back_gates, _back_ln, _gates, _out_units, add_normalized, split_dh
from .simd import vwidth, wide
from .slots import begin_rows, end_rows, slots, step_time, zero_padding, zero_rows_past
from .sync import SUMS_STRIDE, barrier
from .tiles import FROM_OUT_AND_BIAS, FROM_ZERO, row_blocks
from .units import copy, unit_range


@kernel
def publish_moments(sums, slot, part, a, j0, j1, H, blocks):
    """The moments of this part's share of a: units j0:j1 of each of a's ``blocks`` blocks
    of H. Their mean and sum of squared deviations from it go to sums[part·SUMS_STRIDE +
    slot] and the next element."""
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
    sums[part * SUMS_STRIDE + slot] = mean
    sums[part * SUMS_STRIDE + slot + 1] = v


@kernel
def combined_moments(sums, slot, parts, H, blocks, eps):
    """The mean and rstd = 1/√(var + eps) of the whole of ``blocks`` blocks of H from every
    part's ``publish_moments`` at ``slot``: M2 = Σ M2_p + Σ n_p (mean_p − mean)² (Chan, Golub
    and LeVeque), summed in part order."""
    n = cast_like(sums, H * blocks)
    s = cast_like(sums, 0)
    for p in range(parts):
        j0, j1 = unit_range(p, parts, H)
        s += cast_like(sums, (j1 - j0) * blocks) * sums[p * SUMS_STRIDE + slot]
    mean = s / n
    v = cast_like(sums, 0)
    for p in range(parts):
        j0, j1 = unit_range(p, parts, H)
        d = sums[p * SUMS_STRIDE + slot] - mean
        v += sums[p * SUMS_STRIDE + slot + 1] + cast_like(sums, (j1 - j0) * blocks) * d * d
    return mean, cast_like(sums, 1) / np.sqrt(v / n + cast_like(sums, eps))


@kernel
def combined_means(sums, slot, parts, n):
    """The means over n elements of the two sums every part published at ``slot`` (summed
    in part order)."""
    s1 = cast_like(sums, 0)
    s2 = cast_like(sums, 0)
    for p in range(parts):
        s1 += sums[p * SUMS_STRIDE + slot]
        s2 += sums[p * SUMS_STRIDE + slot + 1]
    inv_n = cast_like(sums, 1.0 / n)
    return s1 * inv_n, s2 * inv_n


@kernel
def lnlstm_forward_units(part, parts, flags, y, h, c, h_n, c_n, gates, wp, bias, h0, c0,
                         lengths, reverse, col, ln, g_hh, g_c, b_c, rhat, chat, rstd, zh, zc,
                         r, ct, sums):
    """``lnlstm_forward`` of the plain cell for B = 1, the units j0:j1 of this ``part``.

    Every part is called at once, each on its own thread, with the same arrays (shapes and
    meanings as for ``lnlstm_forward``, B = 1; no variant options); flags:
    (parts·sync.STRIDE,) int64 zeros; wp: W_hhᵀ packed by ``tiles.pack_gates``;
    r: (4H,) and ct: (H,) scratch shared by the parts (W_hh h and c̃ of the step; each
    part reads only its own units of them); sums: (parts·SUMS_STRIDE,) scratch shared by
    the parts (their moments).
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
    mean_c = rstd_c = cast_like(bias, 0)  # (bias[0] * 0 is float64: a float32 times an int)
    for step in range(L):
        t = step_time(step, L, reverse)
        p, o = slots(t, reverse)
        g = gates[t, 0]
        # the unit blocks in alternating order (see tiles.row_blocks)
        if ln:  # W_hh h alone, normalised below
            row_blocks(r, 0, H, W, bias, hf, p * K, wp, K, j0 // W, j1 // W, step, FROM_ZERO)
        else:
            row_blocks(gf, t * G, H, W, bias, hf, p * K, wp, K, j0 // W, j1 // W, step,
                       FROM_OUT_AND_BIAS)
        if ln:
            publish_moments(sums, 0, part, r, j0, j1, H, 4)
            count += 1
            barrier(flags, part, parts, count)  # the moments need every part's share
            mean, rs = combined_moments(sums, 0, parts, H, 4, EPS)
            if part == 0:
                rstd[t, 0, 1] = rs
            for q in range(4):
                add_normalized(g, r, rhat[t, 0], mean, rs, g_hh, bias, q * H + j0, q * H + j1)
        cp = c[p, 0]
        _gates(g[j0:j1], g[H + j0:H + j1], g[2 * H + j0:2 * H + j1], g[3 * H + j0:3 * H + j1],
               cp[j0:j1], ct[j0:j1])
        if ln:
            publish_moments(sums, 2, part, ct, j0, j1, H, 1)
            count += 1
            barrier(flags, part, parts, count)  # LN(c̃)'s moments: every part's share
            mean_c, rstd_c = combined_moments(sums, 2, parts, H, 1, EPS)
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
                          zh, zc, dht, keep, sd, sums):
    """``lnlstm_backward`` of the plain cell for B = 1, the units j0:j1 of this ``part``.

    Arrays as for ``lnlstm_backward`` (B = 1; dgates may be ``gates``; no variant options);
    flags and sums as for ``lnlstm_forward_units``; dht, keep: (H,) and sd: (4H,) scratch
    (each part uses its own units of them). Each step: the units' first pass of the cell's
    gradient (``ln``), its sums published, a barrier, the means over every unit, the units'
    gate gradients; with ``ln`` their dz ⊙ γ_hh into sd and its sums published, a barrier,
    the means over the 4H gates, the units' dr; a barrier (the carry reads every gate's
    gradient); then the carry for the units: rows j0:j1 of W_hhᵀ against it.
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
            p1, p2 = _back_ln(go, vu, chu, g_c[j0:j1], b_c[j0:j1], du[t, 0, j0:j1], do)
            sums[part * SUMS_STRIDE] = p1
            sums[part * SUMS_STRIDE + 1] = p2
            count += 1
            barrier(flags, part, parts, count)  # the means: every part's sums
            s1, s2 = combined_means(sums, 0, parts, H)
        _back_gates(g[j0:j1], g[H + j0:H + j1], g[2 * H + j0:2 * H + j1], go, dg[j0:j1],
                    dg[H + j0:H + j1], dg[2 * H + j0:2 * H + j1], do, vu, dcu, c[p, 0, j0:j1],
                    ln, chu, rs, s1, s2, zc[t, 0, j0:j1] if zo else zero)
        src = dg
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
            sums[part * SUMS_STRIDE + 2] = p1
            sums[part * SUMS_STRIDE + 3] = p2
            count += 1
            barrier(flags, part, parts, count)  # the means: every part's sums
            m1, m2 = combined_means(sums, 2, parts, G)
            r1, src = rstd[t, 0, 1], dr[t, 0]
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
