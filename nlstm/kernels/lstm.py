"""LSTM kernels: the sequential part of the forward and backward passes.

The layer does the large products outside these kernels: the input projection of
all time steps (one GEMM, biases folded in) before ``lstm_forward``, and the weight
gradients and ``dx`` (one GEMM each over all steps) after ``lstm_backward``. The
kernels only carry the state through time. Time and state slots are as in
:mod:`nlstm.kernels.slots`; gate order is PyTorch's: i, f, g, o.

Rows of the batch are independent in the recurrence, so the kernels take a row range
``b0:b1``: the layer runs one call per thread on disjoint ranges (the kernels release
the GIL), with no synchronisation per time step and no parfor allocations. Within a
range, each step multiplies all active rows by the recurrent weights at once
(:mod:`nlstm.kernels.blocks`).

Variants, each off by default and checked once per row and step, outside the
vectorised loops (``opt`` is an ``Options`` tuple):
- peepholes (ONNX ``P``): i and f add p_i⊙c_{t-1} and p_f⊙c_{t-1}, o adds p_o⊙c_t;
- clip (ONNX ``clip``): gate pre-activations clamped to [-clip, clip];
- input_forget (ONNX): f = 1 - i;
- projection (PyTorch ``proj_size``): h = W_hr (o⊙tanh c), so h has P features;
- activations (ONNX ``activations``): f, g, h other than σ, tanh, tanh, as rows
  (code, alpha, beta) of ``acts`` (see nlstm.kernels.activations); the pre-activations are
  then saved in ``pre`` (as with clip) for backward's derivatives.
"""
from collections import namedtuple

import numpy as np

from .activations import cast_like, dgate, gate, gates_inplace, sigmoid, tanh
from .config import inlined_kernel, kernel
from .blocks import (active_rows, add_recurrent, copy_out, matmul_nn, matmul_nt,
                     row_dots_alternating, row_nn, row_nn_add, row_out, same, scatter_rows)
from .slots import (begin_rows, copy_rows, end_rows, slots, step_inputs_finite, step_layer_rows,
                    step_time, zero_padding, zero_rows_past)
from .simd import vwidth, wide
from .table import array1, array2, array3
from .units import gather_blocks_add
from .tiles import (FROM_OUT, FROM_OUT_AND_BIAS, FROM_ZERO, depth_chunk, gates_far,
                    padded_stride, panel_rows, prefetch_span, row_blocks, tile_height, tile_row,
                    tile_rows2, tile_rows3, tile_rows4)

# peep: (3H,) p_i, p_f, p_o, or empty; clip: scalar, inf when off; input_forget, proj: bool;
# w_hr_t: (H, P) = W_hrᵀ, or empty; acts: (3, 3) rows (code, alpha, beta) of f, g, h, or
# (0, 3) for σ, tanh, tanh
Options = namedtuple("Options", "peep clip input_forget proj w_hr_t acts")


@kernel
def _clamp(g, lo, hi):
    for j in range(g.shape[0]):
        g[j] = min(max(g[j], lo), hi)


@inlined_kernel
def _cell(zi, zf, zz, zo, cp):
    """The plain cell's math for one unit: the pre-activations of i, f, g, o and c_{t-1} in;
    the gates i, f, g, o, c_t and o⊙tanh(c_t) out."""
    i = sigmoid(zi)
    f = sigmoid(zf)
    z = tanh(zz)
    o = sigmoid(zo)
    cv = f * cp + i * z
    return i, f, z, o, cv, o * tanh(cv)


@inlined_kernel
def _cell_units(g, c_prev, c_new, m, j0, j1):
    """The plain cell (σ, tanh, tanh; no variant options) for hidden units j0:j1 of one row:
    g: (4H,) pre-activations in, post-activation gates i, f, g, o out; c_prev, c_new,
    m: (H,); m: o⊙tanh(c_new) out. Sliced to j0:j1 first, so the loop runs from 0."""
    wide()
    H = c_prev.shape[0]
    gi, gf, gg, go = g[j0:j1], g[H + j0:H + j1], g[2 * H + j0:2 * H + j1], g[3 * H + j0:3 * H + j1]
    cp, cn, mu = c_prev[j0:j1], c_new[j0:j1], m[j0:j1]
    for j in range(j1 - j0):
        gi[j], gf[j], gg[j], go[j], cn[j], mu[j] = _cell(gi[j], gf[j], gg[j], go[j], cp[j])


@inlined_kernel
def _cell_units_from(s, g, c_prev, c_new, m, H):
    """``_cell_units`` for all H units with the pre-activations read from s (4H,) and the
    gates written to g (4H,), another array: one loop doing both in place in one array and
    from another did not vectorise (10x slower)."""
    wide()
    si, sf, sz, so = s[:H], s[H:2 * H], s[2 * H:3 * H], s[3 * H:4 * H]
    gi, gf, gg, go = g[:H], g[H:2 * H], g[2 * H:3 * H], g[3 * H:4 * H]
    for j in range(H):
        gi[j], gf[j], gg[j], go[j], c_new[j], m[j] = _cell(si[j], sf[j], sz[j], so[j], c_prev[j])


@kernel
def _pointwise(g, c_prev, c_new, m, opt, pre):
    """Gate nonlinearities and the cell update for one row.

    g: (4H,) pre-activations in, post-activations out; c_prev, c_new: (H,);
    m: (H,) out: o⊙h(c_new) (the new h unless projected); pre: (4H,) out: the
    pre-activations before clipping (only with clip or activations).
    """
    wide()
    H = c_prev.shape[0]
    peep = opt.peep.shape[0] > 0
    if not (peep or opt.clip < np.inf or opt.input_forget or opt.acts.shape[0] > 0):
        _cell_units(g, c_prev, c_new, m, 0, H)
        return
    # The gate blocks as views: an index such as H + j keeps Numba's negative-index
    # wraparound on every access, which kept LLVM from vectorising (see blocks.py).
    gi, gf, gg, go = g[:H], g[H:2 * H], g[2 * H:3 * H], g[3 * H:4 * H]
    p_i, p_f, p_o = opt.peep[:H], opt.peep[H:2 * H], opt.peep[2 * H:3 * H]  # empty unless peep
    if peep:
        for j in range(H):
            gi[j] += p_i[j] * c_prev[j]
            gf[j] += p_f[j] * c_prev[j]
    clip = opt.clip < np.inf
    gen = opt.acts.shape[0] > 0
    if gen:  # the general activations (clamped inside ``gate``): one slower pass
        fa, ga, ha = opt.acts[0], opt.acts[1], opt.acts[2]
        gates_inplace(g[:2 * H], pre[:2 * H], fa, opt.clip)
        gates_inplace(gg, pre[2 * H:3 * H], ga, opt.clip)
    elif clip:
        for j in range(3 * H):
            pre[j] = g[j]
        # The output gate's clip must wait for its peephole, which reads c_new.
        _clamp(g[:3 * H], -opt.clip, opt.clip)
    if not gen:
        for j in range(H):
            gi[j] = sigmoid(gi[j])
            gf[j] = sigmoid(gf[j])
            gg[j] = tanh(gg[j])
    if opt.input_forget:
        one = cast_like(g, 1)
        for j in range(H):
            gf[j] = one - gi[j]
    for j in range(H):
        c_new[j] = gf[j] * c_prev[j] + gi[j] * gg[j]
    if peep:
        for j in range(H):
            go[j] += p_o[j] * c_new[j]
    if gen:
        gates_inplace(go, pre[3 * H:4 * H], fa, opt.clip)
        for j in range(H):
            m[j] = go[j] * gate(ha, c_new[j], np.inf)
        return
    if clip:
        pre_o = pre[3 * H:4 * H]
        for j in range(H):
            pre_o[j] = go[j]
        _clamp(go, -opt.clip, opt.clip)
    for j in range(H):
        og = sigmoid(go[j])
        go[j] = og
        m[j] = og * tanh(c_new[j])


@kernel
def _forward_row(b, y, h, c, gates, w_hh_t, bias, lengths, reverse, col, opt, pre):
    """``lstm_forward``'s recurrence for the single batch row b (no projection): each
    step's product goes straight into its gates, without the bookkeeping of active rows
    (0.1-0.15 µs a step less: the S forward kernel went from 106 to 92-97 µs).
    opt: the variant options, or None for the plain cell: Numba then drops the branch
    that calls ``_pointwise`` before compiling (see ``lstm_forward_row``)."""
    L = lengths[b]
    H = c.shape[2]
    for step in range(L):
        t = step_time(step, L, reverse)
        p, o = slots(t, reverse)
        g = gates[t, b]
        for j in range(g.shape[0]):
            g[j] += bias[j]
        row_nn_add(g, h[p, b], w_hh_t, 0, g.shape[0])
        hn = h[o, b]
        if opt is None:
            _cell_units(g, c[p, b], c[o, b], hn, 0, H)
        else:
            save = opt.clip < np.inf or opt.acts.shape[0] > 0
            _pointwise(g, c[p, b], c[o, b], hn, opt, pre[t, b] if save else pre[0, 0])
        row_out(y, t, b, col, hn)


@kernel
def _forward_row_tiled(b, y, h, c, gates, wp, bias, lengths, reverse, col):
    """``_forward_row`` for the plain cell with packed weights: each step's product by the
    one-row tile over the unit blocks, in alternating order (``tiles.row_blocks``)."""
    T, B, G = gates.shape
    H = G // 4
    W = vwidth(gates)
    K = h.shape[2]
    gf = gates.reshape(gates.size)
    hf = h.reshape(h.size)
    L = lengths[b]
    far = gates_far(gates)
    for step in range(L):
        t = step_time(step, L, reverse)
        p, o = slots(t, reverse)
        if far and step + 1 < L:
            prefetch_span(gf, (step_time(step + 1, L, reverse) * B + b) * G, G)
        row_blocks(gf, (t * B + b) * G, H, W, bias, hf, (p * B + b) * K, wp, K, 0, H // W, step,
                   FROM_OUT_AND_BIAS)
        hn = h[o, b]
        _cell_units(gates[t, b], c[p, b], c[o, b], hn, 0, H)
        row_out(y, t, b, col, hn)


@kernel
def lstm_forward_row(b, y, h, c, h_n, c_n, gates, w_hh_t, bias, h0, c0, lengths, reverse, col,
                     wp):
    """``lstm_forward`` for the one batch row b of the plain cell (no variant options), as
    ``lstm_forward`` runs it, arguments as there (wp: W_hhᵀ packed for the one-row tile,
    or empty for the row loops). A one-row batch (S inference, the first call of most
    users) needs only this path, and Numba compiles every path of a kernel whether it runs
    or not: this one compiles in a few seconds, ``lstm_forward`` (the variants' general
    activations, the blocks of rows) in over twenty."""
    begin_rows(b, b + 1, h, h0, lengths, reverse)
    begin_rows(b, b + 1, c, c0, lengths, reverse)
    zero_padding(b, b + 1, y, lengths, col, h.shape[2])
    if wp.shape[0] > 0:
        _forward_row_tiled(b, y, h, c, gates, wp, bias, lengths, reverse, col)
    else:
        _forward_row(b, y, h, c, gates, w_hh_t, bias, lengths, reverse, col, None, None)
    end_rows(b, b + 1, h_n, h, lengths, reverse)
    end_rows(b, b + 1, c_n, c, lengths, reverse)


def lstm_forward_row_args(*, y, h, c, h_n, c_n, gates, w_hh_t, bias, h0, c0, lengths, reverse,
                          col, wp):
    """``lstm_forward_row``'s arguments after b, by name (as for ``lstm_forward``)."""
    return y, h, c, h_n, c_n, gates, w_hh_t, bias, h0, c0, lengths, reverse, col, wp


@kernel
def _add_bias_rows(of, S, bias, rows, times, n, B, G):
    """of (flat gates, or a gathered scratch with rows at stride S, as ``step_tiles``): each
    active row += bias."""
    wide()
    for i in range(n):
        o = i * S if S else (times[i] * B + rows[i]) * G
        dst = of[o:o + G]
        for j in range(G):
            dst[j] += bias[j]


@kernel
def _gather_rows(st, S, gates, bias, rows, times, n):
    """Row i of the scratch st (flat, rows at stride S) = gates[times[i], rows[i]] + bias,
    for the n active rows."""
    G = gates.shape[2]
    for i in range(n):
        gather_blocks_add(st[i * S:i * S + G], gates[times[i], rows[i]], bias, 1, G, 0, G)


@kernel
def step_tiles(out, S, h, wp, bias, rows, times, n, reverse, start0):
    """One step's recurrent product for the n active rows through packed weights (see
    nlstm.kernels.tiles): for each block of W hidden units, the rows in tiles
    (``tiles.tile_height``), over depth chunks. out: the gates (T, B, 4H), row i's product
    added at gates[times[i], rows[i]] (S = 0), or a gathered scratch, row i at out's flat
    element i·S (S > 0: ``tiles.padded_stride`` keeps its rows apart in L1);
    h: (T+1, B, K) state slots; wp: W_hhᵀ packed by ``tiles.pack_gates``; start0: what the
    first depth chunk starts from (``tiles.FROM_*``; bias read with FROM_OUT_AND_BIAS)."""
    B, K = h.shape[1], h.shape[2]
    G = wp.shape[0] // K
    H = G // 4
    W = vwidth(out)
    kc = depth_chunk(out)
    R = tile_height(out)
    of = out.reshape(out.size)
    hf = h.reshape(h.size)
    if start0 == FROM_OUT_AND_BIAS:
        # The bias goes in by a pass of its own, and the tiles never see the bias array:
        # given one, the tiles ran at 55-60% of their rate without (79 against 140 GFLOP/s
        # at L's shapes in one process; same inner loop, the cause not found).
        _add_bias_rows(of, S, bias, rows, times, n, B, G)
        start0 = FROM_OUT
    for u in range(H // W):
        u0 = u * W
        # depth chunks only when tiles of 4 rows share the weights (see tuning.PANEL_BYTES)
        step_k = kc if n >= 4 else K
        for k0 in range(0, K, step_k):
            m = min(step_k, K - k0)
            wo = (u * K + k0) * 4 * W
            start = start0 if k0 == 0 else FROM_OUT
            i = 0
            while i + R <= n:  # then a pair, then single rows (see tiles.tile_height)
                o0, a0 = _tile_row_at(i, rows, times, B, G, K, reverse, S)
                o1, a1 = _tile_row_at(i + 1, rows, times, B, G, K, reverse, S)
                o2, a2 = _tile_row_at(i + 2, rows, times, B, G, K, reverse, S)
                if R == 4:
                    o3, a3 = _tile_row_at(i + 3, rows, times, B, G, K, reverse, S)
                    tile_rows4(of, o0 + u0, o1 + u0, o2 + u0, o3 + u0, H, of, 0, hf, a0 + k0,
                               a1 + k0, a2 + k0, a3 + k0, wp, wo, m, start)
                else:
                    tile_rows3(of, o0 + u0, o1 + u0, o2 + u0, H, of, 0, hf, a0 + k0, a1 + k0,
                               a2 + k0, wp, wo, m, start)
                i += R
            if i + 2 <= n:
                o0, a0 = _tile_row_at(i, rows, times, B, G, K, reverse, S)
                o1, a1 = _tile_row_at(i + 1, rows, times, B, G, K, reverse, S)
                tile_rows2(of, o0 + u0, o1 + u0, H, of, 0, hf, a0 + k0, a1 + k0, wp, wo, m,
                           start)
                i += 2
            for r in range(i, n):
                o, a = _tile_row_at(r, rows, times, B, G, K, reverse, S)
                tile_row(of, o + u0, H, of, 0, hf, a + k0, wp, wo, m, start)


@inlined_kernel
def _tile_row_at(i, rows, times, B, G, K, reverse, S):
    """``step_tiles``' active row i: the flat offsets of its gate row (in the gates, or row i
    of the gathered scratch, at stride S) and of its previous state h_{t-1} in the slots."""
    b = rows[i]
    t = times[i]
    o = i * S if S else (t * B + b) * G
    return o, (slots(t, reverse)[0] * B + b) * K


@kernel
def _forward_tiled(b0, b1, y, h, c, gates, wp, bias, lengths, reverse, col, rows, times, sg):
    """``lstm_forward``'s recurrence for the plain cell with packed weights: each step, the
    active rows' gates and bias gathered into the scratch sg (rows at ``tiles.padded_stride``:
    at XL's 8 KB gate rows the tiles ran 0.84x as fast in place), the product added there in
    tiles (``step_tiles``), then the cell's math from there into the gates (which keep the
    post-activation gates, in the same order of sums as a row alone)."""
    T, B, G = gates.shape
    H = G // 4
    S = padded_stride(G, gates.itemsize)
    st = sg.reshape(sg.size)
    for step in range(T):
        n = active_rows(step, b0, b1, lengths, reverse, rows, times)
        if n == 0:
            break  # lengths only shrink the active set as steps go on
        _gather_rows(st, S, gates, bias, rows, times, n)
        step_tiles(st, S, h, wp, bias, rows, times, n, reverse, FROM_OUT)
        for r in range(n):
            b = rows[r]
            p, o = slots(times[r], reverse)
            _cell_units_from(st[r * S:r * S + G], gates[times[r], b], c[p, b], c[o, b], h[o, b],
                             H)
        copy_out(y, h, rows, times, n, reverse, col)


@kernel
def lstm_forward(b0, b1, y, h, c, h_n, c_n, gates, w_hh_t, bias, h0, c0, lengths, reverse, col,
                 peep, clip, input_forget, proj, w_hr_t, acts, pre, m, wp, wf, rows, times, sp1,
                 sp2, sg, sh):
    """One direction of one layer over the whole sequence, for batch rows b0:b1.

    y: (T, B, Y) layer output; this direction writes columns col:col+P (P = H unprojected)
    h: (T+1, B, P), c: (T+1, B, H) state slots; h_n: (B, P), c_n: (B, H) final states
    gates: (T, B, 4H) in: x·W_ihᵀ; out: post-activation gates i, f, g, o
    w_hh_t: (P, 4H) = W_hhᵀ; bias: (4H,) b_ih + b_hh; h0: (B, P); c0: (B, H);
    lengths: (B,) int64 in 0..T; reverse: bool
    peep, clip, input_forget, proj, w_hr_t, acts: the fields of ``Options`` (passed flat:
    Numba types a tuple argument in Python, which costs microseconds per call)
    pre: (T, B, 4H) out with clip or acts, else empty: pre-activations before clipping
    m: (T, B, H) out with projection, else empty: o⊙tanh(c) of every step
    rows, times: (B,) int64 scratch; sp1, sp2: (B, P), sg: (``tiles.padded_rows(B, 4H)``,
    4H), sh: (B, H) scratch (one set per concurrent call; see nlstm.kernels.blocks)
    wp: W_hhᵀ packed for the tiles (``tiles.pack_gates``), plain cell only, or empty
    wf: W_hhᵀ packed as panels (``tiles.pack_panels``) for blocks of rows where wp is
    empty (H off the vector width, the variants), or empty (see ``blocks.add_recurrent``)
    """
    opt = Options(peep, clip, input_forget, proj, w_hr_t, acts)
    T = gates.shape[0]
    P = h.shape[2]
    begin_rows(b0, b1, h, h0, lengths, reverse)
    begin_rows(b0, b1, c, c0, lengths, reverse)
    zero_padding(b0, b1, y, lengths, col, P)
    if opt.proj:
        zero_rows_past(b0, b1, m, lengths)
    save = opt.clip < np.inf or opt.acts.shape[0] > 0
    if b1 - b0 == 1 and wp.shape[0] > 0:
        # One row: a matrix-vector product per step, bound by how fast W_hh streams from
        # the caches (see tiles.row_blocks)
        _forward_row_tiled(b0, y, h, c, gates, wp, bias, lengths, reverse, col)
        T = 0  # done
    elif b1 - b0 == 1 and not opt.proj:
        _forward_row(b0, y, h, c, gates, w_hh_t, bias, lengths, reverse, col, opt, pre)
        T = 0  # done
    elif wp.shape[0] > 0:
        _forward_tiled(b0, b1, y, h, c, gates, wp, bias, lengths, reverse, col, rows, times, sg)
        T = 0  # done
    for step in range(T):
        n = active_rows(step, b0, b1, lengths, reverse, rows, times)
        if n == 0:
            break  # lengths only shrink the active set as steps go on
        add_recurrent(gates, h, w_hh_t, bias, rows, times, n, reverse, wf, sp1, sg)
        for i in range(n):
            b = rows[i]
            t = times[i]
            p, o = slots(t, reverse)
            g = gates[t, b]
            pre_tb = pre[t, b] if save else pre[0, 0]
            if opt.proj:
                _pointwise(g, c[p, b], c[o, b], sh[i], opt, pre_tb)
                for j in range(sh.shape[1]):
                    m[t, b, j] = sh[i, j]
            else:
                _pointwise(g, c[p, b], c[o, b], h[o, b], opt, pre_tb)
        if opt.proj:
            matmul_nn(sp2, sh, opt.w_hr_t, n, 0, P)
            for i in range(n):
                p, o = slots(times[i], reverse)
                for j in range(P):
                    h[o, rows[i], j] = sp2[i, j]
        copy_out(y, h, rows, times, n, reverse, col)
    end_rows(b0, b1, h_n, h, lengths, reverse)
    end_rows(b0, b1, c_n, c, lengths, reverse)


def lstm_forward_args(*, y, h, c, h_n, c_n, gates, w_hh_t, bias, h0, c0, lengths, reverse, col,
                      opt, pre, m, wp, wf):
    """``lstm_forward``'s arguments after b0, b1 and before the scratch (which
    nlstm.kernels.parallel's drivers add per part), by name; opt: an ``Options``."""
    return (y, h, c, h_n, c_n, gates, w_hh_t, bias, h0, c0, lengths, reverse, col, *opt, pre, m,
            wp, wf)


@inlined_kernel
def _cell_back(g, dg, dm, dc, c_prev, c_new, j0, j1):
    """The plain cell's backward for one row and step (no variant options), for hidden
    units j0:j1, a branch-free loop the compiler vectorises. g: (4H,) post-activation gates
    i, f, g, o; dg: (4H,) out: gate pre-activation gradients (may alias g: index j of each
    block is read before it is written); dm: (H,) gradient of o⊙tanh(c_t); dc: (H,) in: the
    carried gradient of c_t, out: that of c_{t-1}; c_prev, c_new: (H,). Sliced to j0:j1
    first, so the loop runs from 0 (see nlstm.kernels.blocks)."""
    wide()
    H = dm.shape[0]
    gi, gf, gg, go = g[j0:j1], g[H + j0:H + j1], g[2 * H + j0:2 * H + j1], g[3 * H + j0:3 * H + j1]
    dmu, dcu, cp, cn = dm[j0:j1], dc[j0:j1], c_prev[j0:j1], c_new[j0:j1]
    if same(dg, g):  # in place (the layers' case): the gates named once (see blocks.same)
        _cell_back_loop(gi, gf, gg, go, gi, gf, gg, go, dmu, dcu, cp, cn)
        return
    di, df, dgg, do = (dg[j0:j1], dg[H + j0:H + j1], dg[2 * H + j0:2 * H + j1],
                       dg[3 * H + j0:3 * H + j1])
    _cell_back_loop(gi, gf, gg, go, di, df, dgg, do, dmu, dcu, cp, cn)


@inlined_kernel
def _cell_back_loop(gi, gf, gg, go, di, df, dgg, do, dmu, dcu, cp, cn):
    """``_cell_back``'s loop over its units' slices (each (n,)), reading index j of the
    gates before writing index j of the gradients."""
    for j in range(dmu.shape[0]):
        ig = gi[j]
        fg = gf[j]
        gv = gg[j]
        og = go[j]
        tc = tanh(cn[j])
        d = dcu[j] + dmu[j] * (og - og * tc * tc)
        di[j] = d * gv * (ig - ig * ig)
        df[j] = d * cp[j] * (fg - fg * fg)
        dgg[j] = d * (ig - ig * gv * gv)
        do[j] = dmu[j] * tc * (og - og * og)
        dcu[j] = d * fg


@kernel
def _pointwise_back(g, dg, dm, dc, c_prev, c_new, opt, pre):
    """``_cell_back`` for the cell with variant options (``_pointwise``'s backward), one row
    and step, all units: arrays as there; opt: the ``Options``; pre: (4H,) the saved
    pre-activations with clip or activations, else empty."""
    wide()
    H = dm.shape[0]
    zero = cast_like(g, 0)
    one = cast_like(g, 1)
    clip = opt.clip < np.inf
    peep = opt.peep.shape[0] > 0
    gen = opt.acts.shape[0] > 0
    for j in range(H):
        og = g[3 * H + j]
        ig = g[j]
        fg = g[H + j]
        gg = g[2 * H + j]
        cn = c_new[j]
        # The gates' derivatives: from the saved outputs for σ and tanh, else from the
        # pre-activations (zero where clip cut them).
        if gen:
            fa, ga, ha = opt.acts[0], opt.acts[1], opt.acts[2]
            tc = gate(ha, cn, np.inf)
            s_c = dgate(ha, cn, tc, np.inf)
            s_o = dgate(fa, pre[3 * H + j], og, opt.clip)
            s_i = dgate(fa, pre[j], ig, opt.clip)
            s_f = dgate(fa, pre[H + j], fg, opt.clip)
            s_g = dgate(ga, pre[2 * H + j], gg, opt.clip)
        else:
            tc = tanh(cn)
            s_c = one - tc * tc
            s_o = og - og * og
            s_i = ig - ig * ig
            s_f = fg - fg * fg
            s_g = one - gg * gg
            if clip:
                if abs(pre[3 * H + j]) > opt.clip:
                    s_o = zero
                if abs(pre[j]) > opt.clip:
                    s_i = zero
                if abs(pre[H + j]) > opt.clip:
                    s_f = zero
                if abs(pre[2 * H + j]) > opt.clip:
                    s_g = zero
        dzo = dm[j] * tc * s_o
        d = dc[j] + dm[j] * og * s_c
        if peep:
            d += dzo * opt.peep[2 * H + j]
        cp = c_prev[j]
        dzi = d * gg
        dzf = d * cp * s_f
        if opt.input_forget:
            dzi -= d * cp
            dzf = zero
        dzi *= s_i
        dzg = d * ig * s_g
        dg[j] = dzi
        dg[H + j] = dzf
        dg[2 * H + j] = dzg
        dg[3 * H + j] = dzo
        dcp = d * fg
        if peep:
            dcp += dzi * opt.peep[j] + dzf * opt.peep[H + j]
        dc[j] = dcp


@kernel
def _backward_row(b, dgates, dh, dc, dy, gates, c, w_hh_t, lengths, reverse, col, dm, wc):
    """``lstm_backward``'s pass for the single batch row b of the plain cell: each step's
    gate gradients written straight into dgates and the carry straight into dh[b] (no
    gathering of active rows, no copies). dm: (H,) scratch; wc: W_hh packed for the carry
    tiles (``tiles.pack_panels``), or empty."""
    wide()
    L = lengths[b]
    T, B, G = gates.shape
    H = G // 4
    P = dh.shape[1]
    S = 4 * vwidth(dm)
    dhb, dcb = dh[b], dc[b]
    dhf = dh.reshape(dh.size)
    dgf = dgates.reshape(dgates.size)
    for step in range(L - 1, -1, -1):
        t = step_time(step, L, reverse)
        p, o = slots(t, reverse)
        dyt = dy[t, b, col:col + H]  # sliced: loops from 0 (see blocks.py)
        for j in range(H):
            dm[j] = dyt[j] + dhb[j]
        dg = dgates[t, b]  # may alias gates[t, b] (see _cell_back)
        _cell_back(gates[t, b], dg, dm, dcb, c[p, b], c[o, b], 0, H)
        if wc.shape[0] > 0:  # the carry: dz · W_hh, panels in alternating order
            row_blocks(dhf, b * P, S // 4, S, dhf, dgf, (t * B + b) * G, wc, G, 0, P // S, step,
                       FROM_ZERO)
        else:
            row_dots_alternating(dhb, w_hh_t, dg, 0, G, 0, dhb.shape[0], step)


@kernel
def lstm_backward_row(b, dgates, dh0, dc0, dy, dh_n, dc_n, gates, c, w_hh_t, lengths, reverse,
                      col, dm):
    """``lstm_backward`` for the one batch row b of the plain cell, as ``lstm_backward`` runs
    it, arguments as there; dm: (H,) scratch. Its own kernel for the reason
    ``lstm_forward_row`` has one: a first one-row training step compiles only this path."""
    copy_rows(b, b + 1, dh0, dh_n)
    copy_rows(b, b + 1, dc0, dc_n)
    zero_rows_past(b, b + 1, dgates, lengths)
    _backward_row(b, dgates, dh0, dc0, dy, gates, c, w_hh_t, lengths, reverse, col, dm, dm[:0])


def lstm_backward_row_args(*, dgates, dh0, dc0, dy, dh_n, dc_n, gates, c, w_hh_t, lengths,
                           reverse, col, dm):
    """``lstm_backward_row``'s arguments after b, by name."""
    return dgates, dh0, dc0, dy, dh_n, dc_n, gates, c, w_hh_t, lengths, reverse, col, dm


@kernel
def lstm_backward(b0, b1, dgates, dh0, dc0, dy, dh_n, dc_n, gates, h, c, w_hh_t, lengths, reverse,
                  col, peep, clip, input_forget, proj, w_hr_t, acts, pre, m, dh_all, wc,
                  rows, times, sp1, sp2, sg, sh):
    """Backward through time for one direction of one layer, for batch rows b0:b1.

    dgates: (T, B, 4H) out: gradients of the gate pre-activations (zero past each
            length); may be the same array as ``gates``
    dh0: (B, P), dc0: (B, H) out: gradients of the initial state, also the running carry
    dy: (T, B, Y) gradient of the layer output; this direction reads columns col:col+P
    dh_n: (B, P), dc_n: (B, H) gradients of the final state
    gates, h, c, w_hh_t, lengths, reverse, col, the option fields, pre, m: as given to
    ``lstm_forward``
    dh_all: (T, B, P) out with projection, else empty: the gradient of each step's h
    rows, times, sp1, sp2, sg, sh: scratch as for ``lstm_forward``
    wc: W_hh packed for the carry tiles (``tiles.pack_panels``), or empty (then dot products
    along W_hhᵀ's rows, ``blocks.matmul_nt``)
    """
    wide()
    opt = Options(peep, clip, input_forget, proj, w_hr_t, acts)
    T = gates.shape[0]
    G = gates.shape[2]
    H = G // 4
    P = h.shape[2]
    clip = opt.clip < np.inf
    peep = opt.peep.shape[0] > 0
    gen = opt.acts.shape[0] > 0
    plain = not (clip or peep or opt.input_forget or gen)
    copy_rows(b0, b1, dh0, dh_n)
    copy_rows(b0, b1, dc0, dc_n)
    zero_rows_past(b0, b1, dgates, lengths)
    if opt.proj:
        zero_rows_past(b0, b1, dh_all, lengths)
    if b1 - b0 == 1 and plain and not opt.proj:  # one row: the loops, as in lstm_forward
        _backward_row(b0, dgates, dh0, dc0, dy, gates, c, w_hh_t, lengths, reverse, col, sh[0],
                      wc[:0])
        T = 0  # done
    for step in range(T - 1, -1, -1):
        n = active_rows(step, b0, b1, lengths, reverse, rows, times)
        if n == 0:
            continue
        # sh[i]: the gradient of o⊙tanh(c_t), through the projection if there is one.
        if opt.proj:
            for i in range(n):
                b = rows[i]
                t = times[i]
                for j in range(P):
                    v = dy[t, b, col + j] + dh0[b, j]
                    dh_all[t, b, j] = v
                    sp2[i, j] = v
            matmul_nt(sh, sp2, opt.w_hr_t, n, 0, P)
        else:
            for i in range(n):
                b = rows[i]
                dyt = dy[times[i], b, col:col + H]  # sliced: loops from 0 (see blocks.py)
                for j in range(H):
                    sh[i, j] = dyt[j] + dh0[b, j]
        for i in range(n):
            b = rows[i]
            t = times[i]
            p, o = slots(t, reverse)
            g = gates[t, b]
            dg = dgates[t, b]  # may alias g: every read of index j precedes its write
            dm = sh[i]
            if plain:
                _cell_back(g, dg, dm, dc0[b], c[p, b], c[o, b], 0, H)
            else:
                _pointwise_back(g, dg, dm, dc0[b], c[p, b], c[o, b], opt,
                                pre[t, b] if gen or clip else g[:0])
            for j in range(G):
                sg[i, j] = dg[j]
        # the carry: dz · W_hh for every active row at once
        if wc.shape[0] > 0:
            panel_rows(dh0, sg, rows, n, wc, 0, P, 0, G, True)
        else:
            matmul_nt(sp1, sg, w_hh_t, n, 0, G)
            scatter_rows(dh0, sp1, rows, n)


def lstm_backward_args(*, dgates, dh0, dc0, dy, dh_n, dc_n, gates, h, c, w_hh_t, lengths, reverse,
                       col, opt, pre, m, dh_all, wc):
    """``lstm_backward``'s arguments after b0, b1 and before the scratch, by name; opt: an
    ``Options``."""
    return (dgates, dh0, dc0, dy, dh_n, dc_n, gates, h, c, w_hh_t, lengths, reverse, col, *opt,
            pre, m, dh_all, wc)


@kernel
def lstm_step(k, check, x, h, c, h_out, c_out, w_ih_t, w_hh_t, b_ih, b_hh, work):
    """One time step of layer k of the plain cell (no variant options), for streaming.

    x: (B, I) the input of layer 0 (layer k > 0 reads h_out[k-1]); h, c: (L, B, H) the
    state before, read at [k]; h_out, c_out: the new state, same shapes, written at [k]
    w_ih_t: (I, 4H) = W_ihᵀ; w_hh_t: (H, 4H) = W_hhᵀ; b_ih, b_hh: (4H,); work: (9H,) scratch
    check: first make sure the inputs are finite; if they are not, return False having
    written nothing. Returns True after the step.
    (Six fewer arguments than ``lstm_step_options``: each costs Numba's dispatch about
    0.1 µs, and a step is a few microseconds.)
    """
    return _step(k, check, x, h, c, h_out, c_out, w_ih_t, w_hh_t, b_ih, b_hh, None, work)


@kernel
def lstm_step_options(k, check, x, h, c, h_out, c_out, w_ih_t, w_hh_t, b_ih, b_hh, peep, clip,
                      input_forget, proj, w_hr_t, acts, work):
    """``lstm_step`` with the variant options: peep, clip, input_forget, proj, w_hr_t, acts
    are the fields of ``Options``; h, h_out: (L, B, P) with a projection, w_hh_t: (P, 4H)."""
    opt = Options(peep, clip, input_forget, proj, w_hr_t, acts)
    return _step(k, check, x, h, c, h_out, c_out, w_ih_t, w_hh_t, b_ih, b_hh, opt, work)


def lstm_step_args(*, w_ih_t, w_hh_t, b_ih, b_hh, opt, work):
    """The arguments after (k, check, x, h, c, h_out, c_out), by name: of ``lstm_step`` when
    opt is None (the plain cell), else of ``lstm_step_options`` (opt an ``Options``)."""
    if opt is None:
        return w_ih_t, w_hh_t, b_ih, b_hh, work
    return (w_ih_t, w_hh_t, b_ih, b_hh, *opt, work)


@kernel
def lstm_step_table(k, check, x, t):
    """``lstm_step`` with its arguments after (k, check, x) as one table (``table.encode`` of
    h, c, h_out, c_out and ``lstm_step_args``): a stream's call."""
    return lstm_step(k, check, x, array3(t, 0, x), array3(t, 1, x), array3(t, 2, x),
                     array3(t, 3, x), array2(t, 4, x), array2(t, 5, x), array1(t, 6, x),
                     array1(t, 7, x), array1(t, 8, x))


@kernel
def _step(k, check, x, h, c, h_out, c_out, w_ih_t, w_hh_t, b_ih, b_hh, opt, work):
    """The step of ``lstm_step`` (opt None: the plain cell, whose code alone is compiled
    then) and ``lstm_step_options`` (opt an ``Options``)."""
    wide()
    if check and not step_inputs_finite(k, x, h, c):
        return False
    inp, hk, hn = step_layer_rows(k, x, h, h_out)
    ck, cn = c[k], c_out[k]
    G = w_hh_t.shape[1]
    H = G // 4
    g = work[:G]
    pre = work[G:2 * G]
    m = work[2 * G:2 * G + H]
    for b in range(inp.shape[0]):
        for j in range(G):  # the biases first: no pass to zero g, none to add them after
            g[j] = b_ih[j] + b_hh[j]
        row_nn_add(g, inp[b], w_ih_t, 0, G)
        row_nn_add(g, hk[b], w_hh_t, 0, G)
        if opt is None:  # the plain cell (see _forward_row)
            _cell_units(g, ck[b], cn[b], hn[b], 0, H)
        elif opt.proj:
            _pointwise(g, ck[b], cn[b], m, opt, pre)
            row_nn(hn[b], m, opt.w_hr_t, 0, hn.shape[1])
        else:
            _pointwise(g, ck[b], cn[b], hn[b], opt, pre)
    return True
