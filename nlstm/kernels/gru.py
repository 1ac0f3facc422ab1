"""GRU kernels, gates r, z, n (PyTorch's order), in two forms:

- ``lbr`` (PyTorch; ONNX ``linear_before_reset=1``): n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
- not ``lbr`` (ONNX's default): n = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)

then h' = (1 − z) ⊙ n + z ⊙ h; with zoneout (a mask zm, (T, B, H), else empty) each unit
keeps its previous value with the mask's weight, h' ← zm ⊙ h + (1 − zm) ⊙ h'. The layer
folds b_ih, b_hr, b_hz (and b_hn when not ``lbr``) into the input projection. ``aux`` saves what backward needs of the n gate:
W_hn h + b_hn with ``lbr``, r ⊙ h without. Slots as in :mod:`nlstm.kernels.slots`,
per-step block products as in :mod:`nlstm.kernels.blocks` (without ``lbr`` the n block's
product waits for r, so it runs as a second product over W_hhᵀ's last H columns).

With ONNX's ``clip`` or activations other than σ and tanh, ``acts`` holds the rows
(code, alpha, beta) of f (r and z) and g (n) (see nlstm.kernels.activations), ``clip`` the
bound of the pre-activations (inf when off), and ``pre`` saves every pre-activation for
backward; else ``acts`` is (0, 3) and the σ/tanh loops run.
"""
import numpy as np

from .activations import cast_like, dgate, gates_inplace, sigmoid, tanh
from .blocks import active_rows, matmul_carry, matmul_nn, matmul_nt, row_nn, scatter_rows
from .config import kernel
from .simd import vwidth, wide
from .tiles import FROM_ZERO, panel_rows, row_blocks
from .slots import (begin_rows, copy_rows, end_rows, slots, step_inputs_finite, step_layer_rows,
                    step_time, zero_padding, zero_rows_past)


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
    sr, sz, sn, bn = s[:H], s[H:2 * H], s[2 * H:], b_hh[2 * H:]
    for step in range(L):
        t = step_time(step, L, reverse)
        p, o = slots(t, reverse)
        hp = h[p, b]
        if wf.shape[0] > 0:
            row_blocks(s, 0, W, 4 * W, s, hf, (p * B + b) * H, wf, H, 0, 3 * H // (4 * W), step,
                       FROM_ZERO)
        else:
            row_nn(s, hp, w_hh_t, 0, 3 * H)
        g = gates[t, b]
        gr, gz, gn = g[:H], g[H:2 * H], g[2 * H:]
        ax = aux[t, b]
        for j in range(H):
            gr[j] = sigmoid(gr[j] + sr[j])
        for j in range(H):
            gz[j] = sigmoid(gz[j] + sz[j])
        for j in range(H):
            a = sn[j] + bn[j]
            ax[j] = a
            gn[j] = tanh(gn[j] + gr[j] * a)
        hn = h[o, b]
        dst = y[t, b, col:col + H]
        for j in range(H):
            nn = gn[j]
            v = nn + gz[j] * (hp[j] - nn)
            hn[j] = v
            dst[j] = v
        if zm.shape[0] > 0:
            _zone_out(hn, hp, zm[t, b], dst)


@kernel
def _zone_out(hn, hp, m, dst):
    """hn ← m ⊙ hp + (1 − m) ⊙ hn, also into dst (the output row); all (H,)."""
    wide()
    for j in range(hn.shape[0]):
        v = hn[j] + m[j] * (hp[j] - hn[j])
        hn[j] = v
        dst[j] = v


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
    for step in range(T):
        n = active_rows(step, b0, b1, lengths, reverse, rows, times)
        if n == 0:
            break
        for i in range(n):
            p, o = slots(times[i], reverse)
            for k in range(H):
                sp1[i, k] = h[p, rows[i], k]
        if wf.shape[0] > 0:
            panel_rows(sg, sp1, rows, n, wf, 0, 3 * H if lbr else 2 * H, 0, H, False)
        else:
            matmul_nn(sg, sp1, w_hh_t, n, 0, 3 * H if lbr else 2 * H)
        for i in range(n):
            b = rows[i]
            t = times[i]
            g = gates[t, b]
            if gen:
                for j in range(2 * H):
                    g[j] += sg[i, j]
                gates_inplace(g[:2 * H], pre[t, b, :2 * H], acts[0], clip)
            else:
                for j in range(2 * H):
                    g[j] = sigmoid(g[j] + sg[i, j])
            if lbr:
                for j in range(H):
                    a = sg[i, 2 * H + j] + b_hh[2 * H + j]
                    aux[t, b, j] = a
                    g[2 * H + j] = tanh(g[2 * H + j] + g[j] * a) if not gen else \
                        g[2 * H + j] + g[j] * a
                if gen:
                    gates_inplace(g[2 * H:], pre[t, b, 2 * H:], acts[1], clip)
            else:
                for j in range(H):
                    a = g[j] * sp1[i, j]
                    aux[t, b, j] = a
                    sp2[i, j] = a
        if not lbr:
            if wf.shape[0] > 0:
                panel_rows(sg, sp2, rows, n, wf, 2 * H, 3 * H, 0, H, False)
            else:
                matmul_nn(sg, sp2, w_hh_t, n, 2 * H, 3 * H)
            for i in range(n):
                g = gates[times[i], rows[i]]
                if gen:
                    for j in range(H):
                        g[2 * H + j] += sg[i, 2 * H + j]
                    gates_inplace(g[2 * H:], pre[times[i], rows[i], 2 * H:], acts[1], clip)
                else:
                    for j in range(H):
                        g[2 * H + j] = tanh(g[2 * H + j] + sg[i, 2 * H + j])
        for i in range(n):
            b = rows[i]
            t = times[i]
            p, o = slots(t, reverse)
            g = gates[t, b]
            for j in range(H):
                nn = g[2 * H + j]
                v = nn + g[H + j] * (sp1[i, j] - nn)
                h[o, b, j] = v
                y[t, b, col + j] = v
            if zm.shape[0] > 0:
                _zone_out(h[o, b], sp1[i], zm[t, b], y[t, b, col:col + H])
    end_rows(b0, b1, h_n, h, lengths, reverse)


@kernel
def gru_backward(b0, b1, dgates, dgates_hh, dh0, dy, dh_n, gates, aux, h, w_hh_t, w_hh, lengths,
                 reverse, col, lbr, zm, acts, clip, pre, wc, rows, times, sp1, sp2, sp3, sg):
    """Backward through time for one direction of one layer, for batch rows b0:b1.

    dgates: (T, B, 3H) out: gradients of the input-side pre-activations (may alias gates)
    dgates_hh: (T, B, 3H) out: gradients of the hidden-side pre-activations: the same as
               dgates for r and z; for n, d(W_hn h + b_hn) with ``lbr``, else d(W_hn (r⊙h))
    dh0: (B, H) out, also the running carry; dy: (T, B, Y) (columns col:col+H); dh_n: (B, H)
    gates, aux, h, w_hh_t, lengths, reverse, col, lbr, zm: as in ``gru_forward``; scratch
    as there
    w_hh: (3H, H) W_hh, a C-contiguous copy, or (0, 0) (see ``blocks.matmul_carry``); used
    with ``lbr`` only; acts, clip, pre: as given to ``gru_forward``
    wc: W_hh packed by ``tiles.pack_panels`` for the carry products, or empty
    """
    wide()
    T = gates.shape[0]
    H = gates.shape[2] // 3
    gen = acts.shape[0] > 0
    one = cast_like(gates, 1)
    zo = zm.shape[0] > 0
    zero = cast_like(gates, 0)
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
            dg = dgates[t, b]  # may alias g: every read of index j precedes its write
            dgh = dgates_hh[t, b]
            hp = h[p, b]
            ax = aux[t, b]
            for j in range(H):
                dh = dy[t, b, col + j] + dh0[b, j]
                keep = zm[t, b, j] * dh if zo else zero  # zoneout's direct path to h_{t-1}
                dh -= keep
                r = g[j]
                z = g[H + j]
                nn = g[2 * H + j]
                # the gates' derivatives: from their outputs for σ and tanh, else from the
                # saved pre-activations (zero where clip cut them)
                if gen:
                    s_r = dgate(acts[0], pre[t, b, j], r, clip)
                    s_z = dgate(acts[0], pre[t, b, H + j], z, clip)
                    s_n = dgate(acts[1], pre[t, b, 2 * H + j], nn, clip)
                else:
                    s_r = r - r * r
                    s_z = z - z * z
                    s_n = one - nn * nn
                dn = dh - dh * z
                dn_pre = dn * s_n
                dz_pre = dh * (hp[j] - nn) * s_z
                sp3[i, j] = dh * z + keep  # the direct paths to h_{t-1}
                dg[H + j] = dz_pre
                dgh[H + j] = dz_pre
                dg[2 * H + j] = dn_pre
                if lbr:
                    dr_pre = dn_pre * ax[j] * s_r
                    dg[j] = dr_pre
                    dgh[j] = dr_pre
                    dgh[2 * H + j] = dn_pre * r
                else:
                    dgh[2 * H + j] = dn_pre
            for j in range(3 * H):
                sg[i, j] = dgh[j]
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
                g = gates[t, b]
                dg = dgates[t, b]
                dgh = dgates_hh[t, b]
                for j in range(H):
                    r = g[j]  # still r: only index j of g is written in this iteration
                    drh = sp1[i, j]
                    s_r = dgate(acts[0], pre[t, b, j], r, clip) if gen else r - r * r
                    dr_pre = drh * h[p, b, j] * s_r
                    dg[j] = dr_pre
                    dgh[j] = dr_pre
                    sg[i, j] = dr_pre
                    sp3[i, j] += drh * r
        if wc.shape[0] > 0:
            panel_rows(sp2, sg, rows, n, wc, 0, H, 0, 3 * H if lbr else 2 * H, False)
        elif lbr:
            matmul_carry(sp2, sg, w_hh_t, w_hh, n)
        else:
            matmul_nt(sp2, sg, w_hh_t, n, 0, 2 * H)
        for i in range(n):
            for k in range(H):
                sp2[i, k] += sp3[i, k]
        scatter_rows(dh0, sp2, rows, n)


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
    for b in range(inp.shape[0]):
        hb = hk[b]
        row_nn(g, inp[b], w_ih_t, 0, 3 * H)
        row_nn(s, hb, w_hh_t, 0, 3 * H if lbr else 2 * H)
        if gen:
            for j in range(2 * H):
                g[j] += b_ih[j] + b_hh[j] + s[j]
            gates_inplace(g[:2 * H], pre[:2 * H], acts[0], clip)
        else:
            for j in range(2 * H):
                g[j] = sigmoid(g[j] + b_ih[j] + b_hh[j] + s[j])
        # n's pre-activation, through tanh in the same pass on the default path
        if lbr:
            for j in range(H):
                v = g[2 * H + j] + b_ih[2 * H + j] + g[j] * (s[2 * H + j] + b_hh[2 * H + j])
                g[2 * H + j] = v if gen else tanh(v)
        else:
            for j in range(H):
                rh[j] = g[j] * hb[j]
            row_nn(s, rh, w_hh_t, 2 * H, 3 * H)
            for j in range(H):
                v = g[2 * H + j] + b_ih[2 * H + j] + b_hh[2 * H + j] + s[2 * H + j]
                g[2 * H + j] = v if gen else tanh(v)
        if gen:
            gates_inplace(g[2 * H:], pre[2 * H:], acts[1], clip)
        for j in range(H):
            nn = g[2 * H + j]
            v = nn + g[H + j] * (hb[j] - nn)
            hn[b, j] = v + p * (hb[j] - v)
    return True
