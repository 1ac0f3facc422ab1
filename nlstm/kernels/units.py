"""Helpers of the unit-split kernels (``lstm_units``, ``gru_units``): one batch row's hidden
units divided between threads, each owning the units j0:j1 of every gate block.

Gate blocks are laid out as the cells store them: block q of a (G·H,) gate row holds gate
q of all H units. A part gathers its units' columns of every block side by side, so that
its share of each step's product is one contiguous range (see ``lstm_units``).
Every loop here runs over a slice from 0 (see nlstm.kernels.blocks).
"""
from .config import kernel
from .simd import wide
from .tuning import UNIT_ALIGN  # unit ranges start at multiples of this


@kernel
def unit_range(part, parts, H):
    """The hidden units j0:j1 that ``part`` of ``parts`` owns (possibly empty)."""
    per = (H + parts - 1) // parts
    per = (per + UNIT_ALIGN - 1) // UNIT_ALIGN * UNIT_ALIGN
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
    wide()
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
