"""Kernels of the LayerNorm LSTM (Ba, Kiros and Hinton, 2016, in haste's form) and of the
LSTM with zoneout (Krueger et al., 2017): the sequential part of their passes.

With layer normalisation (``ln``), per batch row and step, LN(a) = (a − mean a)/√(var a + ε):

    z  = γ_ih ⊙ LN(W_ih x) + b_ih + γ_hh ⊙ LN(W_hh h) + b_hh        (each over the 4H gates)
    i, f, g, o = σ(z_i), σ(z_f), tanh(z_g), σ(z_o)
    c̃ = f ⊙ c + i ⊙ g,    h̃ = o ⊙ tanh(γ_c ⊙ LN(c̃) + β_c)

without it, z = W_ih x + b_ih + W_hh h + b_hh and h̃ = o ⊙ tanh(c̃) (the plain LSTM). Zoneout
(masks ``zh``, ``zc``, (T, B, H), or empty for none) keeps each unit's previous value with
the mask's weight: h = zh ⊙ h_prev + (1 − zh) ⊙ h̃, c = zc ⊙ c_prev + (1 − zc) ⊙ c̃. Training
masks are 0 or 1; inference fills them with the probability p, which gives the expectation.
As in the paper, h̃ reads c̃, not the zoned-out c.

The layer does the whole-sequence products and the input side's normalisation outside the
recurrence (``normalize_input`` after the one big product); its backward (``input_back``)
runs inside the backward kernels, on each row as soon as its dz is known, except in the
unit split and with peepholes, which leave it to ``normalize_input_back`` before the dW_ih
and dx products. Slots as in :mod:`nlstm.kernels.slots`; gate order i, f, g, o. The
per-step products W_hh h and the backward carry run as the LSTM's do: on the micro-kernels of
:mod:`nlstm.kernels.tiles` (``lstm.step_tiles``, ``tiles.panel_rows``) for ranges of more than
one row when H fits them, else the block products of :mod:`nlstm.kernels.blocks` (one row:
its row loops). A one-row batch of the plain cell may split its units over threads instead
(:mod:`nlstm.kernels.lnlstm_units`, through the same pieces of the cell's step).
"""
import numba
import numpy as np

from .activations import cast_like, dact, dgate, gate, gates_inplace, sigmoid, tanh
from .blocks import (active_rows, add_recurrent, copy_out, matmul_nn, matmul_nt, row_dots, row_nn,
                     same)
from .config import inlined_kernel, kernel, options
from .lstm import step_tiles
from .simd import vadd, vfma, vload, vsplat, vsub, vsum, vwidth, wide
from .slots import (begin_rows, copy_rows, end_rows, saved_at, slots, step_inputs_finite,
                    step_layer_rows, zero_padding, zero_rows_past)
from .tiles import FROM_OUT_AND_BIAS, FROM_ZERO, padded_stride, panel_rows

EPS = 1e-5  # the ε of every normalisation (PyTorch's LayerNorm default)


@kernel
def moments(a, eps):
    """The mean of the vector a (n,) and rstd = 1/√(var a + eps). Two passes: the mean
    first, then the spread around it.

    The sums run on explicit vectors, whole vectors first and the tail after, each vector
    summed in a fixed order (``simd.vsum``): LLVM's reassociation would vectorise a scalar
    sum in whatever order the caller it is inlined into leads it to, and kernels that share
    these moments (the one-row kernel and the unit split) must get the same bits."""
    n = a.shape[0]
    W = vwidth(a)
    nv = n - n % W
    acc = vsplat(a, 0)
    for j in range(0, nv, W):
        acc = vadd(acc, vload(a, j))
    s = vsum(acc)
    for j in range(nv, n):
        s += a[j]
    inv_n = cast_like(a, 1.0 / n)  # float32 stays float32 (a division by n would not)
    mean = s * inv_n
    mv = vsplat(a, mean)
    acc = vsplat(a, 0)
    for j in range(0, nv, W):
        d = vsub(vload(a, j), mv)
        acc = vfma(d, d, acc)
    v = vsum(acc)
    for j in range(nv, n):
        dv = a[j] - mean
        v += dv * dv
    return mean, cast_like(a, 1) / np.sqrt(v * inv_n + cast_like(a, eps))


@kernel
def normalize(a, out, eps):
    """out = (a − mean a)·rstd, rstd = 1/√(var a + eps), over the vector a (n,); returns rstd.
    out may be a itself."""
    wide()
    mean, rstd = moments(a, eps)
    if same(out, a):  # in place (see ``same``)
        for j in range(a.shape[0]):
            a[j] = (a[j] - mean) * rstd
        return rstd
    for j in range(a.shape[0]):
        out[j] = (a[j] - mean) * rstd
    return rstd


@kernel
def add_normalized(g, r, rh, mean, rstd, gain, bias, c0, c1):
    """For j in c0:c1: rh[j] = (r[j] − mean)·rstd (LN(r), its moments given) and
    g[j] += gain[j]·rh[j] + bias[j]; all (G,). One pass."""
    wide()
    gc, rc, rhc, gn, bc = g[c0:c1], r[c0:c1], rh[c0:c1], gain[c0:c1], bias[c0:c1]
    if same(rh, r):  # in place (see ``same``)
        for j in range(c1 - c0):
            v = (rc[j] - mean) * rstd
            rc[j] = v
            gc[j] += gn[j] * v + bc[j]
        return
    for j in range(c1 - c0):
        v = (rc[j] - mean) * rstd
        rhc[j] = v
        gc[j] += gn[j] * v + bc[j]


@inlined_kernel
def split_dh(dy, dh, zm, keep, out):
    """The gradient of h_t, dy + dh, into out, over dy's n elements (the others: (≥n,));
    with a zoneout mask zm (else empty), the share zm ⊙ (dy + dh) that reaches h_{t-1}
    directly goes to keep instead."""
    if zm.shape[0] > 0:
        for j in range(dy.shape[0]):
            v = dy[j] + dh[j]
            keep[j] = zm[j] * v
            out[j] = v - keep[j]
    else:
        for j in range(dy.shape[0]):
            out[j] = dy[j] + dh[j]


@kernel
def normalize_back(dn, xhat, rstd, out):
    """The gradient of a from that of LN(a) (dn, (n,)), given xhat = LN(a) and its rstd:
    out = rstd·(dn − mean dn − xhat·mean(dn⊙xhat)). out may be dn itself.

    dn is read from memory in both passes, never recomputed: a product recomputed in the
    second pass can be contracted into an FMA that skips the rounding the first pass's sum
    saw, and rstd (1/√ε ≈ 316 for a row of equal values) multiplies the mismatch (measured:
    1e-3 relative error in float32 gradients where every row was constant). Callers that
    scale dn first store the scaled values (``scaled_back``)."""
    wide()
    s1, s2 = back_means(dn, xhat)
    apply_back(dn, xhat, rstd, s1, s2, out)


@kernel
def apply_back(dn, xhat, rstd, m1, m2, out):
    """``normalize_back``'s second pass, its means m1 = mean dn and m2 = mean(dn⊙xhat)
    given: out = rstd·(dn − m1 − xhat·m2). out may be dn or xhat."""
    wide()
    if same(out, dn):  # in place (see ``same``)
        for j in range(dn.shape[0]):
            dn[j] = rstd * (dn[j] - m1 - xhat[j] * m2)
        return
    if same(out, xhat):
        for j in range(dn.shape[0]):
            xhat[j] = rstd * (dn[j] - m1 - xhat[j] * m2)
        return
    for j in range(dn.shape[0]):
        out[j] = rstd * (dn[j] - m1 - xhat[j] * m2)


@kernel
def scaled_back(dz, gain, xhat, rstd, out, also):
    """The gradient of a where z = gain ⊙ LN(a) + ...: ``normalize_back`` of dn = dz⊙gain,
    in two passes (dn stored into out, as ``normalize_back`` asks, while its sums run; then
    the result over it), and copied into ``also`` in the second pass unless that is empty.
    All (n,); out may be dz itself."""
    wide()
    n = dz.shape[0]
    s1 = cast_like(dz, 0)
    s2 = cast_like(dz, 0)
    for j in range(n):
        v = dz[j] * gain[j]
        out[j] = v
        s1 += v
        s2 += v * xhat[j]
    inv_n = cast_like(dz, 1.0 / n)
    m1 = s1 * inv_n
    m2 = s2 * inv_n
    if also.shape[0] > 0:
        for j in range(n):
            w = rstd * (out[j] - m1 - xhat[j] * m2)
            out[j] = w
            also[j] = w
        return
    apply_back(out, xhat, rstd, m1, m2, out)


@kernel
def back_means(dn, xhat):
    """The means of dn and dn ⊙ xhat (both (n,)): what ``normalize_back`` subtracts."""
    wide()
    n = dn.shape[0]
    s1 = cast_like(dn, 0)
    s2 = cast_like(dn, 0)
    for j in range(n):
        s1 += dn[j]
        s2 += dn[j] * xhat[j]
    inv_n = cast_like(dn, 1.0 / n)
    return s1 * inv_n, s2 * inv_n


@kernel
def normalize_input(r0, r1, gates, xhat, rstd, gamma, beta, lengths):
    """The input side, for the flat rows r0:r1 of the T·B (step, batch row) pairs (row r is
    step r // B of batch row r % B: a whole sequence splits over threads however small B
    is): xhat = LN(W_ih x) and gates = γ_ih ⊙ xhat + b_ih at every valid step (zeros past
    each row's length, which the projection leaves unwritten). gates: (T, B, 4H) in:
    W_ih x; xhat: (T, B, 4H) out, or empty, (1, 1, 0) (inference: only backward reads it); rstd:
    (T, B, 3) out at [..., 0]; gamma, beta: (4H,)."""
    wide()
    B = gates.shape[1]
    keep = xhat.shape[2] > 0  # empty is (1, 1, 0)
    zero = cast_like(gates, 0)
    for r in range(r0, r1):
        t = r // B
        b = r - t * B
        g = gates[t, b]
        if t >= lengths[b]:
            for j in range(g.shape[0]):
                g[j] = zero
            if keep:
                xh = xhat[t, b]
                for j in range(g.shape[0]):
                    xh[j] = zero
            rstd[t, b, 0] = zero
            continue
        mean, rs = moments(g, EPS)
        rstd[t, b, 0] = rs
        if keep:
            xh = xhat[t, b]
            for j in range(g.shape[0]):  # one pass: LN(W_ih x) kept, and scaled and shifted
                v = (g[j] - mean) * rs
                xh[j] = v
                g[j] = gamma[j] * v + beta[j]
        else:
            for j in range(g.shape[0]):
                g[j] = gamma[j] * ((g[j] - mean) * rs) + beta[j]


@kernel
def normalize_input_back(r0, r1, dgates, xhat, rstd, gamma, lengths, rhat, du, chat, sums):
    """``input_back`` for the flat rows r0:r1 of the T·B (step, batch row) pairs, as in
    ``normalize_input`` (rows past their length skipped: dgates is zero there, and so is
    xhat from the forward). dgates (T, B, 4H) the gate gradients; xhat (T, B, 4H), rhat
    (T, B, 4H), du and chat (T, B, H) as the forward and backward kernels left them; rstd
    (T, B, 3): [..., 0] read; sums (5, 4H) this range's share of the LayerNorm parameters'
    gradients, added to."""
    wide()
    B = dgates.shape[1]
    for r in range(r0, r1):
        t = r // B
        b = r - t * B
        if t < lengths[b]:
            input_back(dgates[t, b], xhat[t, b], rstd[t, b, 0], gamma, rhat[t, b], du[t, b],
                       chat[t, b], sums)


@numba.njit(inline="always", **options())
def input_back(dg, xh, rs, gamma, rh, du, chat, sums):
    """One (step, row)'s input side of backward: xh = LN(W_ih x) (4H,) becomes the gradient
    of W_ih x (for the dW_ih and dx products) from the gate gradients dg (4H,), which is
    overwritten by dg⊙γ_ih (see ``normalize_back``); rs: that LN's rstd. On the way, the
    LayerNorm parameters' gradients are added into sums (5, 4H), one pass over what the
    row already reads: [0] Σ dz⊙xhat (γ_ih), [1] Σ dz⊙rhat (γ_hh), [2] Σ dz (b_ih and b_hh),
    [3, :H] Σ du⊙chat (γ_c), [4, :H] Σ du (β_c); rh: LN(W_hh h) (4H,); du, chat: (H,).
    Inlined: the batched backward kernel runs it for each row, right after the row's dz."""
    H = chat.shape[0]
    s_ih, s_hh, s_b, s_c, s_bc = sums[0], sums[1], sums[2], sums[3, :H], sums[4, :H]
    s1 = cast_like(dg, 0)
    s2 = cast_like(dg, 0)
    for j in range(dg.shape[0]):  # with the sums of normalize_back's first pass
        v = dg[j]
        s_ih[j] += v * xh[j]
        s_hh[j] += v * rh[j]
        s_b[j] += v
        w = v * gamma[j]
        dg[j] = w  # kept: see normalize_back
        s1 += w
        s2 += w * xh[j]
    for j in range(H):
        s_c[j] += du[j] * chat[j]
        s_bc[j] += du[j]
    inv_n = cast_like(dg, 1.0 / dg.shape[0])
    apply_back(dg, xh, rs, s1 * inv_n, s2 * inv_n, xh)


@kernel
def _zoneout(hn, hp, zh, cn, ct, cp, zc):
    """The step's end: hn += zh ⊙ (hp − hn) (zh empty: none), cn = ct + zc ⊙ (cp − ct) (zc
    empty: cn = ct); all (H,)."""
    if zh.shape[0] > 0:
        for j in range(hn.shape[0]):
            hn[j] += zh[j] * (hp[j] - hn[j])
    if zc.shape[0] > 0:
        for j in range(cn.shape[0]):
            cn[j] = ct[j] + zc[j] * (cp[j] - ct[j])
    elif not same(ct, cn):  # (c̃ is often the new c itself)
        for j in range(cn.shape[0]):
            cn[j] = ct[j]


@numba.njit(inline="always", **options())
def _gates(gi, gf, gg, go, cp, ct):
    """The gates' activations in place (gi, gf, gg, go: the pre-activations of i, f, g, o
    in, their values out) and c̃ = f⊙c + i⊙g (ct out; cp: the cell state before); all
    (n,): one row's units, or a range of them (``lnlstm_units``). Inlined: called as a
    function (a kernel of its own) the LayerNorm cell ran 1.5x slower at H = 64."""
    for j in range(cp.shape[0]):  # one pass: the gates stay in registers for c̃
        i = sigmoid(gi[j])
        f = sigmoid(gf[j])
        z = tanh(gg[j])
        gi[j] = i
        gf[j] = f
        gg[j] = z
        go[j] = sigmoid(go[j])
        ct[j] = f * cp[j] + i * z


@numba.njit(inline="always", **options())
def _out_units(g, cp, hp, cn, hn, ct, ln, g_c, b_c, chat, mean, rstd, zh, zc, j0, j1):
    """The step's end for units j0:j1: h̃ = o ⊙ tanh(γ_c ⊙ LN(c̃) + β_c) with ``ln`` (LN(c̃)
    from its mean and rstd, given: the moments run over every unit), else o ⊙ tanh(c̃); then
    zoneout. Arrays as for ``_cell_plain``. Inlined, as ``_gates``."""
    H = cp.shape[0]
    go, ctu, hnu = g[3 * H + j0:3 * H + j1], ct[j0:j1], hn[j0:j1]
    if ln:
        chu, gcu, bcu = chat[j0:j1], g_c[j0:j1], b_c[j0:j1]
        for j in range(j1 - j0):
            v = (ctu[j] - mean) * rstd
            chu[j] = v
            hnu[j] = go[j] * tanh(gcu[j] * v + bcu[j])
    else:
        for j in range(j1 - j0):
            hnu[j] = go[j] * tanh(ctu[j])
    # (an empty mask sliced stays empty)
    _zoneout(hnu, hp[j0:j1], zh[j0:j1], cn[j0:j1], ctu, cp[j0:j1], zc[j0:j1])


@kernel
def _cell_plain(g, cp, hp, cn, hn, ct, ln, g_c, b_c, chat, zh, zc):
    """``_cell`` without the variants: branch-free loops that LLVM vectorises (the variants'
    invariant branches inside ``_cell``'s loops kept it from doing so: 25% slower).

    g: (4H,) pre-activations in, post-activation gates i, f, g, o out; cp, hp: (H,) the state
    before; cn, hn: (H,) out, the state after; ct: (H,) out: c̃; chat: (H,) out with ``ln``:
    LN(c̃); g_c, b_c: (H,) γ_c, β_c; zh, zc: (H,) zoneout masks, or empty. Returns LN(c̃)'s
    rstd (0 without ``ln``)."""
    wide()
    H = cp.shape[0]
    _gates(g[:H], g[H:2 * H], g[2 * H:3 * H], g[3 * H:4 * H], cp, ct)
    mean = cast_like(g, 0)
    rs = cast_like(g, 0)
    if ln:
        mean, rs = moments(ct, EPS)
    _out_units(g, cp, hp, cn, hn, ct, ln, g_c, b_c, chat, mean, rs, zh, zc, 0, H)
    return rs


@numba.njit(inline="always", **options())
def _back_ln(go, dht, chat, g_c, b_c, du, do):
    """``_cell_back_plain``'s first pass with ``ln``, over views of n units (all or a
    range): du = the gradient of γ_c ⊙ LN(c̃) + β_c, do, and dht overwritten by that of
    LN(c̃). Returns the sums of dht and dht ⊙ chat over these units (not yet means)."""
    s1 = cast_like(dht, 0)
    s2 = cast_like(dht, 0)
    for j in range(dht.shape[0]):
        og = go[j]
        tu = tanh(g_c[j] * chat[j] + b_c[j])
        u = dht[j] * (og - og * tu * tu)
        du[j] = u
        do[j] = dht[j] * tu * (og - og * og)  # o is not read again
        v = u * g_c[j]
        dht[j] = v  # kept: see normalize_back
        s1 += v
        s2 += v * chat[j]
    return s1, s2


@numba.njit(inline="always", **options())
def _back_gates(gi, gf, gg, go, di, df, dgg, do, dht, dc, cp, ln, chat, rs, s1, s2, zc):
    """``_cell_back_plain``'s second pass over views of n units (all or a range): the gate
    gradients and the carried dc; with ``ln``, s1 and s2 the means over every unit of
    ``_back_ln``'s sums. zc: the units' zoneout mask, or empty."""
    zo = zc.shape[0] > 0
    one = cast_like(dht, 1)
    for j in range(dht.shape[0]):
        ig = gi[j]
        fg = gf[j]
        gv = gg[j]
        keep = zc[j] if zo else cast_like(dht, 0)
        d = dc[j] * (one - keep)  # the gradient of c̃
        if ln:
            d += rs * (dht[j] - s1 - chat[j] * s2)
        else:
            og = go[j]
            tc = tanh(gf[j] * cp[j] + ig * gv)  # c̃, recomputed
            d += dht[j] * (og - og * tc * tc)
            do[j] = dht[j] * tc * (og - og * og)
        di[j] = d * gv * (ig - ig * ig)
        df[j] = d * cp[j] * (fg - fg * fg)
        dgg[j] = d * (ig - ig * gv * gv)
        dc[j] = d * fg + dc[j] * keep


@kernel
def _cell_back_plain(g, dg, dht, dc, cp, ln, g_c, b_c, chat, rs, du, zc):
    """``_cell_back`` without the variants (see ``_cell_plain``).

    g: (4H,) post-activation gates; dg: (4H,) out: the pre-activation gradients dz (may
    alias g: each index of g is read before that index of dg is written); dht: (H,) the
    gradient of h̃ (with ``ln`` overwritten: that of LN(c̃)); dc: (H,) in: the gradient of
    the cell state after the step, out: before it; cp: (H,) the cell state before; chat,
    rs: LN(c̃) and its rstd (``ln``); du: (H,) out with ``ln``: the gradient of
    γ_c ⊙ LN(c̃) + β_c; zc: (H,) the cell's zoneout mask, or empty.
    """
    wide()
    H = cp.shape[0]
    gi, gf, gg, go = g[:H], g[H:2 * H], g[2 * H:3 * H], g[3 * H:4 * H]
    di, df, dgg, do = dg[:H], dg[H:2 * H], dg[2 * H:3 * H], dg[3 * H:4 * H]
    s1 = cast_like(g, 0)
    s2 = cast_like(g, 0)
    if same(dg, g):  # in place: the gates named once (see ``same``)
        if ln:
            s1, s2 = _back_ln(go, dht, chat, g_c, b_c, du, go)
            inv_h = cast_like(g, 1.0 / H)
            s1 *= inv_h
            s2 *= inv_h
        _back_gates(gi, gf, gg, go, gi, gf, gg, go, dht, dc, cp, ln, chat, rs, s1, s2, zc)
        return
    if ln:
        s1, s2 = _back_ln(go, dht, chat, g_c, b_c, du, do)
        inv_h = cast_like(g, 1.0 / H)
        s1 *= inv_h
        s2 *= inv_h
    _back_gates(gi, gf, gg, go, di, df, dgg, do, dht, dc, cp, ln, chat, rs, s1, s2, zc)


@kernel
def _act_o(go, pre_o, acts, clip, gen):
    """The output gate's activation (in place), after its peephole: acts[0] (``gen``), else
    σ, clamped to ±clip (pre-activations kept in pre_o when clip or acts are on)."""
    if gen:
        gates_inplace(go, pre_o, acts[0], clip)
        return
    if clip < np.inf:
        for j in range(go.shape[0]):
            pre_o[j] = go[j]
            go[j] = min(max(go[j], -clip), clip)
    for j in range(go.shape[0]):
        go[j] = sigmoid(go[j])


@kernel
def _cell(g, cp, hp, cn, hn, ct, ln, g_c, b_c, chat, zh, zc, peep, clip, input_forget, acts,
          pre):
    """The pointwise step of one row: variants, gates, cell, the cell's normalisation, zoneout.

    g: (4H,) pre-activations in, post-activation gates i, f, g, o out; cp, hp: (H,) the state
    before; cn, hn: (H,) out, the state after (hn: o⊙h(·) before a projection, which passes
    zh empty and applies it after); ct: (H,) out: c̃; chat: (H,) out with ``ln``:
    LN(c̃); g_c, b_c: (H,) γ_c, β_c; zh, zc: (H,) zoneout masks, or empty; peep: (3H,) or
    empty; clip: inf when off; acts: (3, 3) rows of f, g, h, or (0, 3); pre: (4H,) out with
    clip or acts: the pre-activations before the clamp. Returns LN(c̃)'s rstd (0 without
    ``ln``)."""
    H = cp.shape[0]
    gi, gf, gg, go = g[:H], g[H:2 * H], g[2 * H:3 * H], g[3 * H:4 * H]
    has_peep = peep.shape[0] > 0
    gen = acts.shape[0] > 0
    if has_peep:
        p_i, p_f = peep[:H], peep[H:2 * H]
        for j in range(H):
            gi[j] += p_i[j] * cp[j]
            gf[j] += p_f[j] * cp[j]
    if gen:
        gates_inplace(g[:2 * H], pre[:2 * H], acts[0], clip)
        gates_inplace(gg, pre[2 * H:3 * H], acts[1], clip)
    else:
        if clip < np.inf:
            for j in range(3 * H):
                pre[j] = g[j]
                g[j] = min(max(g[j], -clip), clip)
        for j in range(H):
            gi[j] = sigmoid(gi[j])
            gf[j] = sigmoid(gf[j])
            gg[j] = tanh(gg[j])
    if input_forget:
        one = cast_like(g, 1)
        for j in range(H):
            gf[j] = one - gi[j]
    for j in range(H):
        ct[j] = gf[j] * cp[j] + gi[j] * gg[j]
    if has_peep:
        p_o = peep[2 * H:3 * H]
        for j in range(H):
            go[j] += p_o[j] * ct[j]
    _act_o(go, pre[3 * H:4 * H], acts, clip, gen)  # pre is empty unless clip or acts
    rs = cast_like(g, 0)
    if ln:
        rs = normalize(ct, chat, EPS)
        if gen:
            for j in range(H):
                hn[j] = go[j] * gate(acts[2], g_c[j] * chat[j] + b_c[j], np.inf)
        else:
            for j in range(H):
                hn[j] = go[j] * tanh(g_c[j] * chat[j] + b_c[j])
    elif gen:
        for j in range(H):
            hn[j] = go[j] * gate(acts[2], ct[j], np.inf)
    else:
        for j in range(H):
            hn[j] = go[j] * tanh(ct[j])
    _zoneout(hn, hp, zh, cn, ct, cp, zc)
    return rs


@kernel
def _cell_back(g, dg, dht, dc, cp, ln, g_c, b_c, chat, rs, du, zc, peep, clip, input_forget,
               acts, pre):
    """The pointwise backward of one row and step.

    g: (4H,) post-activation gates; dg: (4H,) out: the pre-activation gradients dz (may
    alias g: each index of g is read before that index of dg is written); dht: (H,) the
    gradient of h̃ (overwritten: that of c̃ through h̃); dc:
    (H,) in: the gradient of the cell state after the step, out: before it; cp: (H,) the
    cell state before; chat, rs: LN(c̃) and its rstd (``ln``); du: (H,) out with ``ln``: the
    gradient of a = γ_c ⊙ LN(c̃) + β_c; zc: (H,) the cell's zoneout mask, or empty; peep,
    clip, input_forget, acts: as given to ``_cell``; pre: (4H,) its pre-activations (clip or
    acts). σ and tanh derivatives come from the saved outputs, the general ones from pre.
    """
    H = cp.shape[0]
    gi, gf, gg, go = g[:H], g[H:2 * H], g[2 * H:3 * H], g[3 * H:4 * H]
    di, df, dgg, do = dg[:H], dg[H:2 * H], dg[2 * H:3 * H], dg[3 * H:4 * H]
    zo = zc.shape[0] > 0
    has_peep = peep.shape[0] > 0
    gen = acts.shape[0] > 0
    clipped = clip < np.inf
    zero = cast_like(g, 0)
    one = cast_like(g, 1)
    for j in range(H):
        og = go[j]
        a = g_c[j] * chat[j] + b_c[j] if ln else gf[j] * cp[j] + gi[j] * gg[j]  # c̃ recomputed
        if gen:
            ta = gate(acts[2], a, np.inf)
            u = dht[j] * og * dact(int(acts[2, 0]), a, ta, acts[2, 1], acts[2, 2])
            so = dgate(acts[0], pre[3 * H + j], og, clip)
        else:
            ta = tanh(a)
            u = dht[j] * (og - og * ta * ta)
            so = og - og * og
            if clipped and abs(pre[3 * H + j]) > clip:
                so = zero
        do[j] = dht[j] * ta * so  # o is not read again
        if ln:
            du[j] = u
            dht[j] = u * g_c[j]  # stored before normalize_back reads it (see there)
        else:
            dht[j] = u
    if ln:  # dht: the gradient of c̃ through h̃
        normalize_back(dht, chat, rs, dht)
    for j in range(H):
        ig = gi[j]
        fg = gf[j]
        gv = gg[j]
        keep = zc[j] if zo else zero
        d = dc[j] * (one - keep) + dht[j]  # the gradient of c̃
        if has_peep:
            d += do[j] * peep[2 * H + j]
        if gen:
            s_i = dgate(acts[0], pre[j], ig, clip)
            s_f = dgate(acts[0], pre[H + j], fg, clip)
            s_g = dgate(acts[1], pre[2 * H + j], gv, clip)
        else:  # as the plain kernels write them (float32 rounds each form differently)
            s_i = ig - ig * ig
            s_f = fg - fg * fg
            s_g = one - gv * gv
            if clipped:
                if abs(pre[j]) > clip:
                    s_i = zero
                if abs(pre[H + j]) > clip:
                    s_f = zero
                if abs(pre[2 * H + j]) > clip:
                    s_g = zero
        dzi = d * gv
        dzf = d * cp[j] * s_f
        if input_forget:  # f = 1 − i
            dzi -= d * cp[j]
            dzf = zero
        dzi *= s_i
        di[j] = dzi
        df[j] = dzf
        dgg[j] = d * ig * s_g if gen or clipped else d * (ig - ig * gv * gv)
        dcp = d * fg + dc[j] * keep
        if has_peep:
            dcp += dzi * peep[j] + dzf * peep[H + j]
        dc[j] = dcp


@kernel
def lnlstm_forward(b0, b1, y, h, c, h_n, c_n, gates, w_hh_t, bias, h0, c0, lengths, reverse, col,
                   ln, g_hh, g_c, b_c, rhat, chat, rstd, zh, zc, peep, clip, input_forget, acts,
                   pre, ctil, proj, w_hr_t, m, wp, rows, times, sp1, sp2, sg, sh):
    """One direction of one layer over the whole sequence, for batch rows b0:b1.

    y: (T, B, Y) layer output; this direction writes columns col:col+H
    h, c: (T+1, B, H) state slots; h_n, c_n: (B, H) final states; h0, c0: (B, H)
    gates: (T, B, 4H) in: the input side (with ``ln``: γ_ih ⊙ LN(W_ih x) + b_ih, from
    ``normalize_input``; else W_ih x); out: post-activation gates i, f, g, o
    w_hh_t: (H, 4H) = W_hhᵀ; bias: (4H,) b_hh with ``ln``, else b_ih + b_hh
    lengths: (B,) int64; reverse, ln: bool; col: int
    g_hh: (4H,) γ_hh; g_c, b_c: (H,) γ_c, β_c (empty without ``ln``)
    rhat: (T, B, 4H) out: LN(W_hh h); chat: (T, B, H) out: LN(c̃); rstd: (T, B, 3) out at
    [..., 1] and [..., 2]: their rstd (all three empty without ``ln``); rhat and chat may
    have one time row instead (inference: every step writes that row, ``slots.saved_at``)
    zh, zc: (T, B, H) zoneout masks of h and c, or empty
    peep: (3H,) or empty; clip: inf when off; input_forget: bool; acts: (3, 3) or (0, 3)
    (as in :mod:`nlstm.kernels.lstm`); pre: (T, B, 4H) out with clip or acts: the
    pre-activations before the clamp, else empty; ctil: (T, B, H) out, or empty: c̃ (the
    peepholes' gradient needs it when zoneout keeps c̃ out of c)
    proj: bool; w_hr_t: (H, P) = W_hrᵀ, or empty; m: (T, B, H) out with ``proj``: o⊙h(·) of
    every step, else empty (with a projection h, h0, h_n, y and W_hh have P features:
    h = W_hr m, zoneout's zh applies to that)
    wp: W_hhᵀ packed for the tiles (``tiles.pack_gates``), or empty: each step's W_hh h
    then runs on the tiles for batch ranges of more than one row
    rows, times: (B,) int64 scratch; sp1, sp2: (B, H), sg: (``tiles.padded_rows(B, 4H)``, 4H),
    sh: (B, H) scratch
    """
    T = gates.shape[0]
    save = clip < np.inf or acts.shape[0] > 0
    variants = save or input_forget or peep.shape[0] > 0
    keep_ct = ctil.shape[2] > 0  # empty is (1, 1, 0)
    H = c.shape[2]
    P = h.shape[2]
    G = 4 * H
    begin_rows(b0, b1, h, h0, lengths, reverse)
    begin_rows(b0, b1, c, c0, lengths, reverse)
    zero_padding(b0, b1, y, lengths, col, P)
    if proj:
        zero_rows_past(b0, b1, m, lengths)
    zo = zh.shape[0] > 0
    none = sh[0, :0]
    # one row: the row loops (as lstm_forward: faster than the one-row tile)
    tiled = wp.shape[0] > 0 and b1 - b0 > 1
    st = sg.reshape(sg.size)
    if ln:  # the gradient products read every row of these
        zero_rows_past(b0, b1, rhat, lengths)
        zero_rows_past(b0, b1, chat, lengths)
    if keep_ct:  # and of this one
        zero_rows_past(b0, b1, ctil, lengths)
    for step in range(T):
        n = active_rows(step, b0, b1, lengths, reverse, rows, times)
        if n == 0:
            break  # lengths only shrink the active set as steps go on
        if ln:  # W_hh h into sg's rows, at stride S
            S = G
            if tiled:  # rows apart in L1, as lstm_forward's
                S = padded_stride(G, sg.itemsize)
                step_tiles(st, S, h, wp, bias, rows, times, n, reverse, FROM_ZERO)
            else:
                for i in range(n):
                    p, o = slots(times[i], reverse)
                    hp = h[p, rows[i]]
                    for k in range(P):
                        sp1[i, k] = hp[k]
                matmul_nn(sg, sp1, w_hh_t, n, 0, G)
            for i in range(n):
                b = rows[i]
                t = times[i]
                r = st[i * S:i * S + G]
                mean, rs = moments(r, EPS)
                rstd[t, b, 1] = rs
                add_normalized(gates[t, b], r, rhat[saved_at(rhat, t), b], mean, rs, g_hh, bias,
                               0, G)
        elif tiled:
            step_tiles(gates, 0, h, wp, bias, rows, times, n, reverse, FROM_OUT_AND_BIAS)
        else:
            add_recurrent(gates, h, w_hh_t, bias, rows, times, n, reverse, wp[:0], sp1, sg)
        for i in range(n):
            b = rows[i]
            t = times[i]
            p, o = slots(t, reverse)
            hn = m[t, b] if proj else h[o, b]
            zh_tb = zh[t, b] if zo and not proj else none
            zc_tb = zc[t, b] if zo else none
            if variants:
                ch = chat[saved_at(chat, t), b] if ln else none
                rs = _cell(gates[t, b], c[p, b], h[p, b], c[o, b], hn, sh[i], ln, g_c, b_c, ch,
                           zh_tb, zc_tb, peep, clip, input_forget, acts,
                           pre[t, b] if save else none)
            else:  # the callers branch: one function holding both is not inlined (see rnn.py)
                # (c̃ is the new c itself unless zoneout keeps them apart)
                rs = _cell_plain(gates[t, b], c[p, b], h[p, b], c[o, b], hn,
                                 sh[i] if zo else c[o, b], ln, g_c, b_c,
                                 chat[saved_at(chat, t), b] if ln else none, zh_tb, zc_tb)
            if proj:  # h = W_hr m, then zoneout on it
                ho = h[o, b]
                row_nn(ho, hn, w_hr_t, 0, P)
                if zo:
                    zm = zh[t, b]
                    hp = h[p, b]
                    for j in range(P):
                        ho[j] += zm[j] * (hp[j] - ho[j])
            if ln:
                rstd[t, b, 2] = rs
            if keep_ct:
                for j in range(H):
                    ctil[t, b, j] = sh[i, j]
        copy_out(y, h, rows, times, n, reverse, col)
    end_rows(b0, b1, h_n, h, lengths, reverse)
    end_rows(b0, b1, c_n, c, lengths, reverse)


@kernel
def lnlstm_backward(b0, b1, dgates, dh0, dc0, dy, dh_n, dc_n, gates, h, c, w_hh_t, lengths, reverse,
                    col, ln, g_hh, g_c, b_c, rhat, chat, rstd, dr, du, zh, zc, peep,
                    clip, input_forget, acts, pre, proj, w_hr_t, dh_all, wc, g_ih, xhat, rows,
                    times, sp1, sp2, sg, sh, sums):
    """Backward through time for one direction of one layer, for batch rows b0:b1.

    dgates: (T, B, 4H) out: the gradients dz of the gate pre-activations (zero past each
    length); may be the same array as ``gates``
    dh0, dc0: (B, H) out: gradients of the initial state, also the running carry
    dy: (T, B, Y) (columns col:col+H); dh_n, dc_n: (B, H) gradients of the final state
    dr: (T, B, 4H) out with ``ln``: the gradient of W_hh h; du: (T, B, H) out with ``ln``:
    that of γ_c ⊙ LN(c̃) + β_c (both empty without ``ln``)
    dh_all: (T, B, P) out with ``proj``: the gradient of each step's W_hr m, else empty
    wc: W_hh packed for the carry's panels (``tiles.pack_panels``), or empty (then dot
    products along W_hhᵀ's rows, ``blocks.matmul_nt``)
    g_ih: (4H,) γ_ih; xhat: (T, B, 4H) LN(W_ih x) from ``normalize_input``; sums: (5, 4H)
    this range's, or (5, 0): with ``ln`` and sums not empty, each row's ``input_back`` runs
    as soon as its dz is known (while dz, rhat and du are in cache): xhat becomes the
    gradient of W_ih x, dgates dz⊙γ_ih (so not with peepholes, whose gradients read dz
    after this kernel), and sums gains the range's share of the LayerNorm parameters'
    gradients
    the rest as given to ``lnlstm_forward`` (dh0, dh_n and dy have P features)
    """
    T = gates.shape[0]
    save = clip < np.inf or acts.shape[0] > 0
    variants = save or input_forget or peep.shape[0] > 0
    H = c.shape[2]
    P = h.shape[2]
    G = 4 * H
    zo = zh.shape[0] > 0
    fuse = ln and sums.shape[1] > 0
    none = sh[0, :0]
    copy_rows(b0, b1, dh0, dh_n)
    copy_rows(b0, b1, dc0, dc_n)
    zero_rows_past(b0, b1, dgates, lengths)
    if ln:
        zero_rows_past(b0, b1, dr, lengths)
        zero_rows_past(b0, b1, du, lengths)
    if proj:
        zero_rows_past(b0, b1, dh_all, lengths)
    for step in range(T - 1, -1, -1):
        n = active_rows(step, b0, b1, lengths, reverse, rows, times)
        if n == 0:
            continue
        for i in range(n):
            b = rows[i]
            t = times[i]
            p, o = slots(t, reverse)
            dyt = dy[t, b, col:col + P]  # sliced: loops from 0 (see blocks.py)
            dht = sh[i]
            dhp = sp1[i] if proj else dht  # the gradient of h̃ (sp1 is free until the carry)
            keep = sp2[i]  # the gradient that reaches h_prev directly (zoneout)
            split_dh(dyt, dh0[b], zh[t, b] if zo else none, keep, dhp)
            if proj:  # through h̃ = W_hr m: dm = W_hrᵀ dh̃
                da = dh_all[t, b]
                for j in range(P):
                    da[j] = dhp[j]
                row_dots(dht, w_hr_t, dhp, 0, P, 0, H)
            dg = dgates[t, b]
            chat_tb = chat[t, b] if ln else none
            rs = rstd[t, b, 2] if ln else cast_like(dg, 0)
            du_tb = du[t, b] if ln else none
            zc_tb = zc[t, b] if zo else none
            if variants:
                _cell_back(gates[t, b], dg, dht, dc0[b], c[p, b], ln, g_c, b_c, chat_tb, rs,
                           du_tb, zc_tb, peep, clip, input_forget, acts,
                           pre[t, b] if save else none)
            else:  # as in lnlstm_forward
                _cell_back_plain(gates[t, b], dg, dht, dc0[b], c[p, b], ln, g_c, b_c, chat_tb,
                                 rs, du_tb, zc_tb)
            src = sg[i]
            if not ln:
                for j in range(G):
                    src[j] = dg[j]
                continue
            scaled_back(dg, g_hh, rhat[t, b], rstd[t, b, 1], dr[t, b], src)
            if fuse:
                input_back(dg, xhat[t, b], rstd[t, b, 0], g_ih, rhat[t, b], du_tb, chat_tb,
                           sums)
        # the carry: dz · W_hh for every active row
        if wc.shape[0] > 0:
            if not zo:
                panel_rows(dh0, sg, rows, n, wc, 0, P, 0, G, True)
                continue
            panel_rows(sp1, sg, rows, n, wc, 0, P, 0, G, False)
        else:
            matmul_nt(sp1, sg, w_hh_t, n, 0, G)
        for i in range(n):
            dst = dh0[rows[i]]
            for k in range(P):
                dst[k] = sp1[i, k] + sp2[i, k] if zo else sp1[i, k]


@kernel
def lnlstm_step(k, check, x, h, c, h_out, c_out, w_ih_t, w_hh_t, b_ih, b_hh, ln, g_ih, g_hh,
                g_c, b_c, p, peep, clip, input_forget, acts, proj, w_hr_t, work):
    """One time step of layer k, for streaming (inference: zoneout as its expectation).

    x: (B, I) the input of layer 0 (layer k > 0 reads h_out[k-1]); h, c: (L, B, H) the state
    before, read at [k]; h_out, c_out: the new state, written at [k]; w_ih_t: (I, 4H);
    w_hh_t: (H, 4H); b_ih, b_hh, g_ih, g_hh: (4H,); g_c, b_c: (H,) (the γ, β empty without
    ``ln``); p: the zoneout probability (0: none); peep, clip, input_forget, acts: as for
    ``lnlstm_forward``; proj, w_hr_t: the projection (h, h_out: (L, B, P)); work: (16H,)
    scratch. With ``check``,
    returns False having written nothing if the inputs are not finite; else True."""
    if check and not step_inputs_finite(k, x, h, c):
        return False
    inp, hk, hn = step_layer_rows(k, x, h, h_out)
    ck, cn = c[k], c_out[k]
    G = w_hh_t.shape[1]
    H = G // 4
    g = work[:G]
    r = work[G:2 * G]
    ct = work[2 * G:2 * G + H]
    chat = work[2 * G + H:2 * G + 2 * H]
    zm = work[2 * G + 2 * H:2 * G + 3 * H]
    pre = work[2 * G + 3 * H:3 * G + 3 * H]
    m = work[3 * G + 3 * H:3 * G + 4 * H]
    P = hn.shape[1]
    zm_or_none = zm if p > 0 else zm[:0]
    for j in range(H):
        zm[j] = p
    for b in range(inp.shape[0]):
        row_nn(g, inp[b], w_ih_t, 0, G)
        row_nn(r, hk[b], w_hh_t, 0, G)
        if ln:
            normalize(g, g, EPS)
            normalize(r, r, EPS)
            for j in range(G):
                g[j] = g_ih[j] * g[j] + b_ih[j] + g_hh[j] * r[j] + b_hh[j]
        else:
            for j in range(G):
                g[j] += b_ih[j] + b_hh[j] + r[j]
        if proj:
            _cell(g, ck[b], hk[b], cn[b], m, ct, ln, g_c, b_c, chat, zm[:0], zm_or_none, peep,
                  clip, input_forget, acts, pre)
            hb = hn[b]
            row_nn(hb, m, w_hr_t, 0, P)
            if p > 0:
                for j in range(P):
                    hb[j] += p * (hk[b, j] - hb[j])
        elif clip < np.inf or input_forget or peep.shape[0] > 0 or acts.shape[0] > 0:
            _cell(g, ck[b], hk[b], cn[b], hn[b], ct, ln, g_c, b_c, chat, zm_or_none, zm_or_none,
                  peep, clip, input_forget, acts, pre)
        else:
            _cell_plain(g, ck[b], hk[b], cn[b], hn[b], ct, ln, g_c, b_c, chat, zm_or_none,
                        zm_or_none)
    return True
