"""GRU kernels, gates r, z, n (PyTorch's order), in two forms:

- ``lbr`` (PyTorch; ONNX ``linear_before_reset=1``): n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
- not ``lbr`` (ONNX's default): n = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)

then h' = (1 − z) ⊙ n + z ⊙ h; with zoneout (a mask zm, (T, B, H), else empty) each unit
keeps its previous value with the mask's weight, h' ← zm ⊙ h + (1 − zm) ⊙ h'. The layer
folds b_ih, b_hr, b_hz (and b_hn when not ``lbr``) into the input projection. ``aux``
saves what backward needs of the n gate: W_hn h + b_hn with ``lbr``, r ⊙ h without (an
inference of one row keeps it in one row, ``slots.saved_at``).
Slots as in :mod:`nlstm.kernels.slots`, per-step block products as in
:mod:`nlstm.kernels.blocks` (without ``lbr`` the n block's product waits for r, so it runs
as a second product over W_hhᵀ's last H columns).

With ONNX's ``clip`` or activations other than σ and tanh, ``acts`` holds the rows
(code, alpha, beta) of f (r and z) and g (n) (see nlstm.kernels.activations), ``clip`` the
bound of the pre-activations (inf when off), and ``pre`` saves every pre-activation for
backward; else ``acts`` is (0, 3) and the σ/tanh loops run.
"""
import numpy as np

from .activations import cast_like, dgate, gates_inplace, sigmoid, tanh
from .blocks import (active_rows, copy_out, matmul_nn, matmul_nt, row_nn, row_out,
                     same, scatter_rows)
from .config import inlined_kernel, kernel
from .simd import vwidth, wide
from .table import array1, array2, array3, flag, number
from .tiles import FROM_ZERO, panel_rows, row_blocks
from .slots import (begin_rows, copy_rows, end_rows, saved_at, slots, step_inputs_finite,
                    step_layer_rows, step_time, zero_padding, zero_rows_past)
from .units import copy


# ---- the GRU's equations, each written once ---------------------------------------------
# Inlined into every path (the batched, one-row, unit-split and streaming-step loops), on
# views sliced to the units at hand so that each loop runs from 0 (see blocks.py). acts is
# None for σ and tanh (Numba then compiles only those loops), else as for ``gru_forward``.


@inlined_kernel
def _general(acts):
    """Whether ``acts`` asks for the general activations (else it is None or (0, 3): σ and
    tanh)."""
    return acts is not None and acts.shape[0] > 0


@inlined_kernel
def _gates_rz(g, s, acts, clip, pre):
    """r and z: g ← f(g + s), g, s: (2n,) the r and z blocks of n units side by side (or any
    such pair of views); pre: (2n,) out with the general activations (the pre-activations)."""
    wide()
    gen = _general(acts)
    for j in range(g.shape[0]):
        v = g[j] + s[j]
        g[j] = v if gen else sigmoid(v)
    if gen:
        gates_inplace(g, pre, acts[0], clip)


@inlined_kernel
def _gate_n(gn, r, sn, bn, ax, acts, clip, pre):
    """n ``lbr``: a = W_hn h + b_hn (sn + bn), saved in ax; gn ← g(gn + r ⊙ a). Without
    ``lbr`` (bn empty): gn ← g(gn + sn), sn = W_hn (r ⊙ h) (b_hn folded into gn).
    All (n,); pre: (n,) out with the general activations. (σ and tanh run in the same pass,
    the general activations in a second one.)"""
    wide()
    gen = _general(acts)
    if bn.shape[0] > 0:
        for j in range(gn.shape[0]):
            a = sn[j] + bn[j]
            ax[j] = a
            v = gn[j] + r[j] * a
            gn[j] = v if gen else tanh(v)
    else:
        for j in range(gn.shape[0]):
            v = gn[j] + sn[j]
            gn[j] = v if gen else tanh(v)
    if gen:
        gates_inplace(gn, pre, acts[1], clip)


@inlined_kernel
def _reset_h(rh, ax, r, hp):
    """Without ``lbr``: r ⊙ h_{t-1} into rh (the n block's product reads it) and ax (its
    gradient reads it); all (n,)."""
    wide()
    for j in range(rh.shape[0]):
        a = r[j] * hp[j]
        ax[j] = a
        rh[j] = a


@inlined_kernel
def _new_h(hn, n, z, hp):
    """h' = (1 − z) ⊙ n + z ⊙ h_{t-1}, written n + z ⊙ (h_{t-1} − n); all (n,)."""
    wide()
    for j in range(hn.shape[0]):
        v = n[j]
        hn[j] = v + z[j] * (hp[j] - v)


@inlined_kernel
def _cell(g, s, bn, ax, hp, hn):
    """The ``lbr`` cell with σ and tanh for n units: g: (3n,) r, z, n pre-activations (input
    side, biases folded) in, post-activations out; s: (3n,) h·W_hhᵀ; bn: (n,) b_hn;
    ax: (n,) out (see the module docstring); hp: h_{t-1}, hn: h_t out, (n,)."""
    n = hp.shape[0]
    _gates_rz(g[:2 * n], s[:2 * n], None, 0, g[:0])
    _gate_n(g[2 * n:], g[:n], s[2 * n:], bn, ax, None, 0, g[:0])
    _new_h(hn, g[2 * n:], g[n:2 * n], hp)


@inlined_kernel
def _cell_back(dy, dc, zm, g, pre, ax, hp, dg, dgh, direct, lbr, acts, clip):
    """``_cell_back_loop``, with the gates named once where dg is g (see blocks.same: the
    layers' case, else LLVM's overlap check sends the loop to its scalar version)."""
    if same(dg[0], g[0]):
        _cell_back_loop(dy, dc, zm, g, pre, ax, hp, g, dgh, direct, lbr, acts, clip)
    else:
        _cell_back_loop(dy, dc, zm, g, pre, ax, hp, dg, dgh, direct, lbr, acts, clip)


@inlined_kernel
def _cell_back_loop(dy, dc, zm, g, pre, ax, hp, dg, dgh, direct, lbr, acts, clip):
    """The cell's backward for n units of one row and step. dy, dc: (n,) the gradients of
    h_t from the output and from the next step; zm: (n,) the zoneout mask, or empty;
    g: the r, z, n post-activations, a tuple of three (n,) views; pre: likewise, the
    pre-activations with the general activations (else any views); ax, hp: (n,) as the
    forward saved them, and h_{t-1}; dg, dgh: tuples of three (n,) views, out (see
    ``gru_backward``; dg may alias g: index j of each is read before it is written);
    direct: (n,) out: the direct paths to h_{t-1}, z ⊙ dh (plus zoneout's). Without
    ``lbr``, r's gradients wait for the n block's product (``_reset_back``)."""
    wide()
    gr, gz, gn = g
    dr, dz, dn = dg
    dhr, dhz, dhn = dgh
    pr, pz, pn = pre
    one = cast_like(hp, 1)
    zero = cast_like(hp, 0)
    zo = zm.shape[0] > 0
    for j in range(hp.shape[0]):
        dh = dy[j] + dc[j]
        keep = zm[j] * dh if zo else zero  # zoneout's direct path to h_{t-1}
        dh -= keep
        r = gr[j]
        z = gz[j]
        nn = gn[j]
        # the gates' derivatives: from their outputs for σ and tanh, else from the saved
        # pre-activations (zero where clip cut them)
        if _general(acts):
            s_r = dgate(acts[0], pr[j], r, clip)
            s_z = dgate(acts[0], pz[j], z, clip)
            s_n = dgate(acts[1], pn[j], nn, clip)
        else:
            s_r = r - r * r
            s_z = z - z * z
            s_n = one - nn * nn
        dn_pre = (dh - dh * z) * s_n
        dz_pre = dh * (hp[j] - nn) * s_z
        direct[j] = dh * z + keep
        dz[j] = dz_pre
        dhz[j] = dz_pre
        dn[j] = dn_pre
        if lbr:
            dr_pre = dn_pre * ax[j] * s_r
            dr[j] = dr_pre
            dhr[j] = dr_pre
            dhn[j] = dn_pre * r
        else:
            dhn[j] = dn_pre


@inlined_kernel
def _reset_back(drh, r, pre_r, hp, dr, dhr, sgr, direct, acts, clip):
    """Without ``lbr``: r's gradient from drh = d(r ⊙ h_{t-1}) (W_hnᵀ times n's), into dr,
    dhr and sgr, and h_{t-1}'s share r ⊙ drh added to direct; all (n,) (dr may alias r)."""
    wide()
    gen = _general(acts)
    for j in range(hp.shape[0]):
        rj = r[j]
        s_r = dgate(acts[0], pre_r[j], rj, clip) if gen else rj - rj * rj
        d = drh[j]
        dr_pre = d * hp[j] * s_r
        dr[j] = dr_pre
        dhr[j] = dr_pre
        sgr[j] = dr_pre
        direct[j] += d * rj


@kernel
def _forward_row(b, y, h, gates, aux, w_hh_t, b_hh, lengths, reverse, col, zm, s, wf):
    """``gru_forward``'s recurrence for the single batch row b, ``lbr`` form: no
    active-row bookkeeping or copy of h, and the gate loops over sliced blocks so that each
    runs from 0 (see blocks.py). s: (3H,) scratch for the product; wf: as for
    ``gru_forward`` (with it, the one-row tile over its panels, ``tiles.row_blocks``)."""
    wide()
    L = lengths[b]
    B, H = h.shape[1], h.shape[2]
    W = vwidth(s)
    hf = h.reshape(h.size)
    bn = b_hh[2 * H:]
    last = 3 * H - (-(-3 * H // (4 * W)) - 1) * 4 * W  # the last panel's columns
    for step in range(L):
        t = step_time(step, L, reverse)
        p, o = slots(t, reverse)
        hp = h[p, b]
        if wf.shape[0] > 0:
            row_blocks(s, 0, W, 4 * W, s, hf, (p * B + b) * H, wf, H, 0, -(-3 * H // (4 * W)),
                       step, FROM_ZERO, last)
        else:
            row_nn(s, hp, w_hh_t, 0, 3 * H)
        hn = h[o, b]
        _cell(gates[t, b], s, bn, aux[saved_at(aux, t), b], hp, hn)
        if zm.shape[0] > 0:
            _zone_out(hn, hp, zm[t, b])
        row_out(y, t, b, col, hn)


@inlined_kernel
def _zone_out(hn, hp, m):
    """Zoneout: hn ← m ⊙ hp + (1 − m) ⊙ hn, written hn + m ⊙ (hp − hn); all (n,) (the
    streaming step passes its expectation, a constant m = p)."""
    wide()
    for j in range(hn.shape[0]):
        v = hn[j]
        hn[j] = v + m[j] * (hp[j] - v)


@kernel
def gru_forward_row(b, y, h, h_n, gates, aux, w_hh_t, b_hh, h0, lengths, reverse, col, zm, s,
                    wf):
    """``gru_forward`` for the one batch row b of the ``lbr`` form with σ and tanh, as
    ``gru_forward`` runs it, arguments as there; s: (3H,) scratch. Its own kernel for the
    reason ``lstm.lstm_forward_row`` has one: a first one-row inference compiles only this
    path, not the general activations, panels and blocks of ``gru_forward``."""
    H = h.shape[2]
    begin_rows(b, b + 1, h, h0, lengths, reverse)
    zero_padding(b, b + 1, y, lengths, col, H)
    zero_rows_past(b, b + 1, aux, lengths)  # as gru_forward
    _forward_row(b, y, h, gates, aux, w_hh_t, b_hh, lengths, reverse, col, zm, s, wf)
    end_rows(b, b + 1, h_n, h, lengths, reverse)


def gru_forward_row_args(*, y, h, h_n, gates, aux, w_hh_t, b_hh, h0, lengths, reverse, col, zm,
                         s, wf):
    """``gru_forward_row``'s arguments after b, by name (as for ``gru_forward``)."""
    return y, h, h_n, gates, aux, w_hh_t, b_hh, h0, lengths, reverse, col, zm, s, wf


@kernel
def gru_forward(b0, b1, y, h, h_n, gates, aux, w_hh_t, b_hh, h0, lengths, reverse, col, lbr, zm,
                acts, clip, pre, wf, rows, times, sp1, sp2, sp3, sg):
    """One direction of one layer over the whole sequence, for batch rows b0:b1.

    y: (T, B, Y) layer output; this direction writes columns col:col+H
    h: (T+1, B, H) state slots; h_n: (B, H) final state
    gates: (T, B, 3H) in: input projection with folded biases; out: r, z, n
    aux: (T, B, H) out (see module docstring); w_hh_t: (H, 3H) = W_hhᵀ; b_hh: (3H,)
    h0: (B, H); lengths: (B,) int64; reverse, lbr: bool; col: int
    zm: (T, B, H) zoneout mask, or empty
    acts: (2, 3) or (0, 3); clip: scalar; pre: (T, B, 3H) out with acts, else empty
    rows, times: (B,) int64 scratch; sp1, sp2, sp3: (B, H), sg: (B, 3H) scratch
    wf: W_hhᵀ packed by ``tiles.pack_panels`` for the per-step products (H a multiple of the
    panel width), or empty (the products of nlstm.kernels.blocks)
    """
    wide()
    T = gates.shape[0]
    H = gates.shape[2] // 3
    begin_rows(b0, b1, h, h0, lengths, reverse)
    zero_padding(b0, b1, y, lengths, col, H)
    zero_rows_past(b0, b1, aux, lengths)  # W_hn's gradient product reads every row of aux
    gen = acts.shape[0] > 0
    if b1 - b0 == 1 and lbr and not gen:
        _forward_row(b0, y, h, gates, aux, w_hh_t, b_hh, lengths, reverse, col, zm, sg[0], wf)
        T = 0  # done
    bn = b_hh[2 * H:] if lbr else b_hh[:0]  # without lbr, b_hn is folded into the gates
    for step in range(T):
        n = active_rows(step, b0, b1, lengths, reverse, rows, times)
        if n == 0:
            break
        for i in range(n):
            p, o = slots(times[i], reverse)
            copy(sp1[i], h[p, rows[i]])
        if wf.shape[0] > 0:
            panel_rows(sg, sp1, rows, n, wf, 0, 3 * H if lbr else 2 * H, 0, H, False)
        else:
            matmul_nn(sg, sp1, w_hh_t, n, 0, 3 * H if lbr else 2 * H)
        for i in range(n):
            g = gates[times[i], rows[i]]
            pt = pre[times[i], rows[i]] if gen else g[:0]
            ax = aux[times[i], rows[i]]
            _gates_rz(g[:2 * H], sg[i, :2 * H], acts, clip, pt[:2 * H])
            if lbr:
                _gate_n(g[2 * H:], g[:H], sg[i, 2 * H:], bn, ax, acts, clip, pt[2 * H:])
            else:
                _reset_h(sp2[i], ax, g[:H], sp1[i])
        if not lbr:
            if wf.shape[0] > 0:
                panel_rows(sg, sp2, rows, n, wf, 2 * H, 3 * H, 0, H, False)
            else:
                matmul_nn(sg, sp2, w_hh_t, n, 2 * H, 3 * H)
            for i in range(n):
                g = gates[times[i], rows[i]]
                pt = pre[times[i], rows[i]] if gen else g[:0]
                _gate_n(g[2 * H:], g[:H], sg[i, 2 * H:], bn, aux[times[i], rows[i]], acts, clip,
                        pt[2 * H:])
        for i in range(n):
            b = rows[i]
            t = times[i]
            p, o = slots(t, reverse)
            g = gates[t, b]
            _new_h(h[o, b], g[2 * H:], g[H:2 * H], sp1[i])
            if zm.shape[0] > 0:
                _zone_out(h[o, b], sp1[i], zm[t, b])
        copy_out(y, h, rows, times, n, reverse, col)
    end_rows(b0, b1, h_n, h, lengths, reverse)


def gru_forward_args(*, y, h, h_n, gates, aux, w_hh_t, b_hh, h0, lengths, reverse, col, lbr, zm,
                     acts, clip, pre, wf):
    """``gru_forward``'s arguments after b0, b1 and before the scratch (which
    nlstm.kernels.parallel's drivers add per part), by name."""
    return (y, h, h_n, gates, aux, w_hh_t, b_hh, h0, lengths, reverse, col, lbr, zm, acts, clip,
            pre, wf)


@kernel
def gru_backward(b0, b1, dgates, dgates_hh, dh0, dy, dh_n, gates, aux, h, w_hh_t, lengths, reverse,
                 col, lbr, zm, acts, clip, pre, wc, rows, times, sp1, sp2, sp3, sg):
    """Backward through time for one direction of one layer, for batch rows b0:b1.

    dgates: (T, B, 3H) out: gradients of the input-side pre-activations (may alias gates)
    dgates_hh: (T, B, 3H) out: gradients of the hidden-side pre-activations: the same as
               dgates for r and z; for n, d(W_hn h + b_hn) with ``lbr``, else d(W_hn (r⊙h))
    dh0: (B, H) out, also the running carry; dy: (T, B, Y) (columns col:col+H); dh_n: (B, H)
    gates, aux, h, w_hh_t, lengths, reverse, col, lbr, zm: as in ``gru_forward``; scratch
    as there
    acts, clip, pre: as given to ``gru_forward``
    wc: W_hh packed by ``tiles.pack_panels`` for the carry products, or empty (then dot
    products along W_hhᵀ's rows, ``blocks.matmul_nt``)
    """
    wide()
    T = gates.shape[0]
    H = gates.shape[2] // 3
    gen = acts.shape[0] > 0
    zo = zm.shape[0] > 0
    copy_rows(b0, b1, dh0, dh_n)
    zero_rows_past(b0, b1, dgates, lengths)
    zero_rows_past(b0, b1, dgates_hh, lengths)
    for step in range(T - 1, -1, -1):
        n = active_rows(step, b0, b1, lengths, reverse, rows, times)
        if n == 0:
            continue
        for i in range(n):
            b = rows[i]
            t = times[i]
            p, o = slots(t, reverse)
            g = gates[t, b]
            dg = dgates[t, b]  # may alias g (see _cell_back)
            dgh = dgates_hh[t, b]
            pt = pre[t, b] if gen else g[:0]
            _cell_back(dy[t, b, col:col + H], dh0[b], zm[t, b] if zo else zm[0, 0, :0],
                       (g[:H], g[H:2 * H], g[2 * H:]), (pt[:H], pt[H:2 * H], pt[2 * H:]),
                       aux[t, b], h[p, b], (dg[:H], dg[H:2 * H], dg[2 * H:]),
                       (dgh[:H], dgh[H:2 * H], dgh[2 * H:]), sp3[i], lbr, acts, clip)
            copy(sg[i], dgh)
        if not lbr:
            # d(r⊙h) = W_hnᵀ dn_pre, then split into r's and h's parts.
            if wc.shape[0] > 0:
                panel_rows(sp1, sg, rows, n, wc, 0, H, 2 * H, 3 * H, False)
            else:
                matmul_nt(sp1, sg, w_hh_t, n, 2 * H, 3 * H)
            for i in range(n):
                b = rows[i]
                t = times[i]
                p, o = slots(t, reverse)
                pt = pre[t, b] if gen else sg[i, :0]
                _reset_back(sp1[i], gates[t, b, :H], pt[:H], h[p, b], dgates[t, b, :H],
                            dgates_hh[t, b, :H], sg[i, :H], sp3[i], acts, clip)
        if wc.shape[0] > 0:
            panel_rows(sp2, sg, rows, n, wc, 0, H, 0, 3 * H if lbr else 2 * H, False)
        else:
            matmul_nt(sp2, sg, w_hh_t, n, 0, 3 * H if lbr else 2 * H)
        for i in range(n):
            for k in range(H):
                sp2[i, k] += sp3[i, k]
        scatter_rows(dh0, sp2, rows, n)


def gru_backward_args(*, dgates, dgates_hh, dh0, dy, dh_n, gates, aux, h, w_hh_t, lengths, reverse,
                      col, lbr, zm, acts, clip, pre, wc):
    """``gru_backward``'s arguments after b0, b1 and before the scratch, by name."""
    return (dgates, dgates_hh, dh0, dy, dh_n, gates, aux, h, w_hh_t, lengths, reverse, col, lbr,
            zm, acts, clip, pre, wc)


@kernel
def gru_step(k, check, x, h, h_out, w_ih_t, w_hh_t, b_ih, b_hh, lbr, p, work):
    """One time step of layer k. x: (B, I) the input of layer 0 (layer k > 0 reads
    h_out[k-1]); h, h_out: (L, B, H), read / written at [k]; w_ih_t: (I, 3H); w_hh_t: (H, 3H);
    p: zoneout's probability (its expectation: h' ← p·h + (1 − p)·h'); work: (7H,) scratch.
    With ``check``, returns False having written nothing if the inputs are not finite; else
    True."""
    none = work[:0].reshape(0, 3)
    return _step(k, check, x, h, h_out, w_ih_t, w_hh_t, b_ih, b_hh, lbr, p, none,
                 cast_like(work, np.inf), work)


@kernel
def gru_step_options(k, check, x, h, h_out, w_ih_t, w_hh_t, b_ih, b_hh, lbr, p, acts, clip,
                     work):
    """``gru_step`` with activations and clip (as for ``gru_forward``); work: (10H,)."""
    return _step(k, check, x, h, h_out, w_ih_t, w_hh_t, b_ih, b_hh, lbr, p, acts, clip, work)


def gru_step_args(*, w_ih_t, w_hh_t, b_ih, b_hh, lbr, p, options, work):
    """The arguments after (k, check, x, h, h_out), by name: of ``gru_step`` when options is
    None, else of ``gru_step_options`` (options: (acts, clip))."""
    return (w_ih_t, w_hh_t, b_ih, b_hh, lbr, p, *(() if options is None else options), work)


@kernel
def gru_step_table(k, check, x, t):
    """``gru_step`` with its arguments after (k, check, x) as one table (``table.encode``
    of h, h_out and ``gru_step_args``): a stream's call."""
    return gru_step(k, check, x, array3(t, 0, x), array3(t, 1, x), array2(t, 2, x),
                    array2(t, 3, x), array1(t, 4, x), array1(t, 5, x), flag(t, 6),
                    number(t, 7, x), array1(t, 8, x))


@kernel
def _step(k, check, x, h, h_out, w_ih_t, w_hh_t, b_ih, b_hh, lbr, p, acts, clip, work):
    wide()
    if check and not step_inputs_finite(k, x, h, h):
        return False
    inp, hk, hn = step_layer_rows(k, x, h, h_out)
    H = hk.shape[1]
    gen = acts.shape[0] > 0
    g = work[:3 * H]
    s = work[3 * H:6 * H]
    rh = work[6 * H:7 * H]
    pre = work[7 * H:10 * H] if gen else work[:0]  # discarded: nothing to differentiate
    bn = b_hh[2 * H:] if lbr else b_hh[:0]
    for b in range(inp.shape[0]):
        hb = hk[b]
        row_nn(g, inp[b], w_ih_t, 0, 3 * H)
        row_nn(s, hb, w_hh_t, 0, 3 * H if lbr else 2 * H)
        # the biases the layer folds into the input projection (see the module docstring)
        for j in range(2 * H):
            g[j] = g[j] + b_ih[j] + b_hh[j]
        gn = g[2 * H:]
        for j in range(H):
            gn[j] = gn[j] + b_ih[2 * H + j] if lbr else gn[j] + b_ih[2 * H + j] + b_hh[2 * H + j]
        _gates_rz(g[:2 * H], s[:2 * H], acts, clip, pre[:2 * H])
        if not lbr:
            _reset_h(rh, rh, g[:H], hb)
            row_nn(s, rh, w_hh_t, 2 * H, 3 * H)
        _gate_n(gn, g[:H], s[2 * H:], bn, rh, acts, clip, pre[2 * H:])
        hb_new = hn[b]
        _new_h(hb_new, gn, g[H:2 * H], hb)
        for j in range(H):  # zoneout's expectation (``_zone_out`` with every m[j] = p)
            v = hb_new[j]
            hb_new[j] = v + p * (hb[j] - v)
    return True
