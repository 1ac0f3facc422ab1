"""The plain LSTM's recurrence for a batch of one row, split across threads by hidden units.

With one row there is no batch to split, and each step's product h·W_hhᵀ is a
matrix-vector product bound by how fast one core streams W_hh from its caches (about
100 GB/s here: 2.5 µs of a 3.4 µs step at H = 128). Here each of ``parts`` threads owns
the hidden units j0:j1 (``units.unit_range``): it multiplies by its own columns of W_hhᵀ (the
i, f, g, o gates of its units), updates its units' cell and hidden state, and the threads
meet at a spin barrier (:mod:`nlstm.kernels.sync`) before the next step reads the whole h.
Each thread streams half the weights, from its own core's caches.

In backward each thread computes the gate gradients of its units, meets the other at the
barrier, then carries dh for its units: the rows j0:j1 of W_hhᵀ against all of dz.

Each element is computed as in ``lstm_forward``/``lstm_backward`` (same products, same
order along K), so results agree with the one-thread kernels to rounding. State and time
slots as in :mod:`nlstm.kernels.slots`; gate order i, f, g, o.
"""
from .blocks import row_dots_alternating, row_nn_add
from .config import kernel
from .lstm import _cell_back, _cell_units
from .simd import vwidth, wide
from .tiles import FROM_OUT_AND_BIAS, gates_far, prefetch_span, row_blocks
from .slots import begin_rows, end_rows, slots, step_time, zero_padding
from .sync import barrier
from .units import copy, gather_blocks, gather_blocks_add, scatter_blocks, unit_range

@kernel
def lstm_forward_units(part, parts, flags, y, h, c, h_n, c_n, gates, w_hh_t, bias, h0, c0,
                       lengths, reverse, col, w_own, acc, wp):
    """``lstm_forward`` of the plain cell for B = 1, the units j0:j1 of this ``part``.

    Every part is called at once, each on its own thread, with the same arrays (shapes as
    for ``lstm_forward``, B = 1); flags: (parts·sync.STRIDE,) int64 zeros.
    w_own: (parts, K, ≥4n) and acc: (parts, ≥4n) scratch, n the widest part's units: each
    part first copies its units' four gate columns of W_hhᵀ side by side into w_own[part],
    so that each step is one product over a contiguous range (four products over the
    separate gate blocks ran no faster on two threads than on one: the short loops' setup
    dominated), then the cell math reads them from acc[part].
    wp: W_hhᵀ packed for the tiles (``tiles.pack_gates``), or empty: with it each part runs
    the one-row tile over its own unit blocks (a contiguous range of wp: no gathering) and
    w_own and acc go unused.
    """
    H = gates.shape[2] // 4
    K = w_hh_t.shape[0]
    j0, j1 = unit_range(part, parts, H)
    n4 = 4 * (j1 - j0)
    w, a = w_own[part], acc[part, :n4]
    W = vwidth(gates)
    tiled = wp.shape[0] > 0
    if not tiled:
        for k in range(K):
            gather_blocks(w[k], w_hh_t[k], 4, H, j0, j1)
    begin_rows(0, 1, h[:, :, j0:j1], h0[:, j0:j1], lengths, reverse)
    begin_rows(0, 1, c[:, :, j0:j1], c0[:, j0:j1], lengths, reverse)
    zero_padding(0, 1, y, lengths, col + j0, j1 - j0)
    L = lengths[0]
    barrier(flags, part, parts, 1)
    if tiled:
        gf = gates.reshape(gates.size)
        hf = h.reshape(h.size)
        G = 4 * H
        far = gates_far(gates)
        for step in range(L):
            t = step_time(step, L, reverse)
            p, o = slots(t, reverse)
            if far and step + 1 < L:  # this part's units of the next step's gates
                for q in range(4):
                    prefetch_span(gf, step_time(step + 1, L, reverse) * G + q * H + j0, j1 - j0)
            row_blocks(gf, t * G, H, W, bias, hf, p * K, wp, K, j0 // W, j1 // W, step,
                       FROM_OUT_AND_BIAS)
            _cell_units(gates[t, 0], c[p, 0], c[o, 0], h[o, 0], j0, j1)
            copy(y[t, 0, col + j0:col + j1], h[o, 0, j0:j1])
            barrier(flags, part, parts, step + 2)  # the next step reads every unit of h
        L = 0  # done
    for step in range(L):
        t = step_time(step, L, reverse)
        p, o = slots(t, reverse)
        gather_blocks_add(a, gates[t, 0], bias, 4, H, j0, j1)
        row_nn_add(a, h[p, 0], w, 0, n4)
        # the gathered gates are the cell's own layout for j1 - j0 units
        _cell_units(a, c[p, 0, j0:j1], c[o, 0, j0:j1], h[o, 0, j0:j1], 0, j1 - j0)
        scatter_blocks(gates[t, 0], a, 4, H, j0, j1)  # the gates backward reads
        copy(y[t, 0, col + j0:col + j1], h[o, 0, j0:j1])
        barrier(flags, part, parts, step + 2)  # the next step reads every unit of h
    end_rows(0, 1, h_n[:, j0:j1], h[:, :, j0:j1], lengths, reverse)
    end_rows(0, 1, c_n[:, j0:j1], c[:, :, j0:j1], lengths, reverse)


def lstm_forward_units_args(*, flags, y, h, c, h_n, c_n, gates, w_hh_t, bias, h0, c0, lengths,
                            reverse, col, w_own, acc, wp):
    """``lstm_forward_units``' arguments after part, parts, by name."""
    return (flags, y, h, c, h_n, c_n, gates, w_hh_t, bias, h0, c0, lengths, reverse, col, w_own,
            acc, wp)


@kernel
def lstm_backward_units(part, parts, flags, dgates, dh0, dc0, dy, dh_n, dc_n, gates, c, w_hh_t,
                        lengths, reverse, col, dm):
    """``lstm_backward`` of the plain cell for B = 1, the units j0:j1 of this ``part``.

    Arrays as for ``lstm_backward`` (B = 1; dgates may be ``gates``; the plain cell's
    backward needs no h); dm: (H,) scratch shared by the parts; flags as for
    ``lstm_forward_units``.
    """
    wide()
    G = gates.shape[2]
    H = G // 4
    j0, j1 = unit_range(part, parts, H)
    L = lengths[0]
    copy(dh0[0, j0:j1], dh_n[0, j0:j1])
    copy(dc0[0, j0:j1], dc_n[0, j0:j1])
    for q in range(4):
        zero_padding(0, 1, dgates, lengths, q * H + j0, j1 - j0)
    count = 0
    for step in range(L - 1, -1, -1):
        t = step_time(step, L, reverse)
        p, o = slots(t, reverse)
        dmu, dyu, dhu = dm[j0:j1], dy[t, 0, col + j0:col + j1], dh0[0, j0:j1]
        for j in range(dmu.shape[0]):
            dmu[j] = dyu[j] + dhu[j]
        dg = dgates[t, 0]
        _cell_back(gates[t, 0], dg, dm, dc0[0], c[p, 0], c[o, 0], j0, j1)
        count += 1
        barrier(flags, part, parts, count)  # the carry reads every unit's dz
        # dh of units j0:j1: W_hhᵀ's rows j0:j1 · dz
        row_dots_alternating(dh0[0], w_hh_t, dg, 0, G, j0, j1, step)


def lstm_backward_units_args(*, flags, dgates, dh0, dc0, dy, dh_n, dc_n, gates, c, w_hh_t,
                             lengths, reverse, col, dm):
    """``lstm_backward_units``' arguments after part, parts, by name."""
    return flags, dgates, dh0, dc0, dy, dh_n, dc_n, gates, c, w_hh_t, lengths, reverse, col, dm
