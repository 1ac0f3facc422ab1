"""Helpers of the unit-split kernels (``lstm_units``, ``gru_units``): one batch row's hidden
units divided between threads, each owning the units j0:j1 of every gate block.

Gate blocks are laid out as the cells store them: block q of a (G·H,) gate row holds gate
q of all H units. A part gathers its units' columns of every block side by side, so that
its share of each step's product is one contiguous range (see ``lstm_units``).
Every loop here runs over a slice from 0 (see nlstm.kernels.blocks).
"""
from .activations import cast_like
from .config import kernel

# Unit ranges start at multiples of this (one 512-bit vector of float32).
_ALIGN = 16


@kernel
def unit_range(part, parts, H):
    """The hidden units j0:j1 that ``part`` of ``parts`` owns (possibly empty)."""
    per = (H + parts - 1) // parts
    per = (per + _ALIGN - 1) // _ALIGN * _ALIGN
    j0 = min(H, part * per)
    return j0, min(H, j0 + per)


@kernel
def fill(a, v):
    for j in range(a.shape[0]):
        a[j] = v


@kernel
def copy(dst, src):
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@kernel
def gather_blocks(dst, src, blocks, H, j0, j1):
    """dst[q·n + j] = src[q·H + j0 + j] for each gate block q (n = j1 - j0)."""
    n = j1 - j0
    for q in range(blocks):
        copy(dst[q * n:(q + 1) * n], src[q * H + j0:q * H + j1])


@kernel
def gather_blocks_add(dst, src, b, blocks, H, j0, j1):
    """dst[q·n + j] = src[q·H + j0 + j] + b[q·H + j0 + j]."""
    n = j1 - j0
    for q in range(blocks):
        d, s, bq = dst[q * n:(q + 1) * n], src[q * H + j0:q * H + j1], b[q * H + j0:q * H + j1]
        for j in range(n):
            d[j] = s[j] + bq[j]


@kernel
def scatter_blocks(dst, src, blocks, H, j0, j1):
    """The inverse of ``gather_blocks``."""
    n = j1 - j0
    for q in range(blocks):
        copy(dst[q * H + j0:q * H + j1], src[q * n:(q + 1) * n])


@kernel
def begin_units(state, init, lengths, reverse, j0, j1):
    """slots.begin_rows for B = 1 and units j0:j1: the initial state in its start slot,
    zeros in the slots no step writes. state: (T+1, 1, H); init: (1, H)."""
    T = state.shape[0] - 1
    L = lengths[0]
    copy(state[L if reverse else 0, 0, j0:j1], init[0, j0:j1])
    for s in range(L + 1, T + 1):
        fill(state[s, 0, j0:j1], cast_like(state, 0))


@kernel
def zero_past_units(a, lengths, c0, c1):
    """a[t, 0, c0:c1] = 0 for t past the row's length; a: (T, 1, n)."""
    for t in range(lengths[0], a.shape[0]):
        fill(a[t, 0, c0:c1], cast_like(a, 0))
