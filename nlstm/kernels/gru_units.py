"""The GRU's recurrence (PyTorch's form, ``lbr``) for a batch of one row, split across
threads by hidden units, as :mod:`nlstm.kernels.lstm_units` does for the LSTM.

Each part owns the units j0:j1 of the r, z and n blocks. Forward: its share of h·W_hhᵀ
(the one-row tile over panels of its columns, packed once per call, where its units fill
whole panels, as the one-thread kernel's; else loops over a copy of its columns), then its
units' gates and new h; the parts meet at a barrier before the next step reads
the whole h. Backward: its units' gate gradients, a barrier, then dh of its units (the rows
j0:j1 of W_hhᵀ against every unit's hidden-side gradients, plus z ⊙ dh). Without ``lbr``
the n block's product needs r ⊙ h of every unit first (a second barrier a step); that form
keeps the one-thread kernels. The cell's equations are ``gru``'s own (``_gates_rz``,
``_gate_n``, ``_new_h``, ``_cell_back``), inlined here on each part's units.
"""
from .blocks import row_dots_alternating, row_nn
from .config import kernel
from .gru import _cell_back, _gate_n, _gates_rz, _new_h
from .simd import vwidth, wide
from .slots import begin_rows, end_rows, saved_at, slots, step_time, zero_padding
from .sync import barrier
from .tiles import FROM_ZERO, pack_panels, row_blocks
from .units import copy, gather_blocks, unit_range


@kernel
def gru_forward_units(part, parts, flags, y, h, h_n, gates, aux, w_hh_t, b_hh, h0, lengths,
                      reverse, col, w_own, acc):
    """``gru_forward`` with ``lbr`` for B = 1, the units j0:j1 of this ``part``.

    Arrays as for ``gru_forward`` (B = 1); flags as for ``lstm_units.lstm_forward_units``;
    w_own (parts, K, ≥3n): scratch for the part's columns of W_hhᵀ (packed in panels,
    ``tiles.pack_panels``, or as rows); acc (parts, ≥3n): its share of the product.
    """
    wide()
    H = gates.shape[2] // 3
    K = w_hh_t.shape[0]
    j0, j1 = unit_range(part, parts, H)
    n = j1 - j0
    w, a = w_own[part], acc[part, :3 * n]
    W = vwidth(acc)
    # the one-row tile over panels of the part's columns (blocks in alternating order, see
    # tiles.row_blocks) where its units fill whole panels, else the loops
    tiled = n > 0 and n % (4 * W) == 0
    wf = w.reshape(w.size)
    if tiled:  # each gate block's columns as panels, one block after another
        for q in range(3):
            pack_panels(wf[q * K * n:(q + 1) * K * n], w_hh_t[:, q * H + j0:q * H + j1])
    else:
        for k in range(K):
            gather_blocks(w[k], w_hh_t[k], 3, H, j0, j1)
    hf = h.reshape(h.size)
    begin_rows(0, 1, h[:, :, j0:j1], h0[:, j0:j1], lengths, reverse)
    zero_padding(0, 1, y, lengths, col + j0, n)
    zero_padding(0, 1, aux, lengths, j0, n)
    bn = b_hh[2 * H + j0:2 * H + j1]
    L = lengths[0]
    barrier(flags, part, parts, 1)
    for step in range(L):
        t = step_time(step, L, reverse)
        p, o = slots(t, reverse)
        if tiled:
            row_blocks(a, 0, W, 4 * W, a, hf, p * K, wf, K, 0, 3 * n // (4 * W), step, FROM_ZERO)
        else:
            row_nn(a, h[p, 0], w, 0, 3 * n)
        g = gates[t, 0]
        ax, hp, ho = aux[saved_at(aux, t), 0, j0:j1], h[p, 0, j0:j1], h[o, 0, j0:j1]
        _gates_rz(g[j0:j1], a[:n], None, 0, a[:0])
        _gates_rz(g[H + j0:H + j1], a[n:2 * n], None, 0, a[:0])
        _gate_n(g[2 * H + j0:2 * H + j1], g[j0:j1], a[2 * n:], bn, ax, None, 0, a[:0])
        _new_h(ho, g[2 * H + j0:2 * H + j1], g[H + j0:H + j1], hp)
        copy(y[t, 0, col + j0:col + j1], ho)
        barrier(flags, part, parts, step + 2)  # the next step reads every unit of h
    end_rows(0, 1, h_n[:, j0:j1], h[:, :, j0:j1], lengths, reverse)


def gru_forward_units_args(*, flags, y, h, h_n, gates, aux, w_hh_t, b_hh, h0, lengths, reverse,
                           col, w_own, acc):
    """``gru_forward_units``' arguments after part, parts, by name."""
    return flags, y, h, h_n, gates, aux, w_hh_t, b_hh, h0, lengths, reverse, col, w_own, acc


@kernel
def gru_backward_units(part, parts, flags, dgates, dgates_hh, dh0, dy, dh_n, gates, aux, h,
                       w_hh_t, lengths, reverse, col, direct):
    """``gru_backward`` with ``lbr`` for B = 1, the units j0:j1 of this ``part``.

    Arrays as for ``gru_backward`` (B = 1; dgates may be ``gates``); direct: (H,) scratch
    shared by the parts (z ⊙ dh, the direct path to h_{t-1}); flags as for the forward.
    """
    wide()
    G = gates.shape[2]
    H = G // 3
    j0, j1 = unit_range(part, parts, H)
    L = lengths[0]
    copy(dh0[0, j0:j1], dh_n[0, j0:j1])
    for q in range(3):
        zero_padding(0, 1, dgates, lengths, q * H + j0, j1 - j0)
        zero_padding(0, 1, dgates_hh, lengths, q * H + j0, j1 - j0)
    du = direct[j0:j1]
    count = 0
    for step in range(L - 1, -1, -1):
        t = step_time(step, L, reverse)
        p, o = slots(t, reverse)
        g, dg, dgh = gates[t, 0], dgates[t, 0], dgates_hh[t, 0]  # dg may alias g
        blocks = (g[j0:j1], g[H + j0:H + j1], g[2 * H + j0:2 * H + j1])
        _cell_back(dy[t, 0, col + j0:col + j1], dh0[0, j0:j1], du[:0], blocks, blocks,
                   aux[t, 0, j0:j1], h[p, 0, j0:j1],
                   (dg[j0:j1], dg[H + j0:H + j1], dg[2 * H + j0:2 * H + j1]),
                   (dgh[j0:j1], dgh[H + j0:H + j1], dgh[2 * H + j0:2 * H + j1]), du, True,
                   None, 0)
        count += 1
        barrier(flags, part, parts, count)  # the carry reads every unit's gradients
        row_dots_alternating(dh0[0], w_hh_t, dgh, 0, G, j0, j1, step)
        dhu = dh0[0, j0:j1]
        for j in range(du.shape[0]):
            dhu[j] += du[j]


def gru_backward_units_args(*, flags, dgates, dgates_hh, dh0, dy, dh_n, gates, aux, h, w_hh_t,
                            lengths, reverse, col, direct):
    """``gru_backward_units``' arguments after part, parts, by name."""
    return (flags, dgates, dgates_hh, dh0, dy, dh_n, gates, aux, h, w_hh_t, lengths, reverse, col,
            direct)
