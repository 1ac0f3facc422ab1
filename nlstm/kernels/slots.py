"""Time and state slots, shared by every cell's kernels.

State buffers have T+1 slots so that no step needs a special case. For a forward
direction the state before time t is slot t and the state after it slot t+1 (slot 0
holds the initial state). For a reverse direction the state before time t is slot t+1
and after it slot t, and each row b starts at its own end: slot ``lengths[b]`` holds the
initial state. Gates and outputs are indexed by time t in both directions.
"""
import numpy as np

from .activations import cast_like
from .config import kernel


@kernel
def step_time(step, L, reverse):
    """The time index of sequential step ``step`` for a row of length L."""
    return L - 1 - step if reverse else step


@kernel
def slots(t, reverse):
    """(slot before time t, slot after time t)."""
    if reverse:
        return t + 1, t
    return t, t + 1


@kernel
def saved_at(a, t):
    """The time row of a (T', B, n) that holds step t's values: t, or 0 when a has one row
    (a forward's values that only backward reads, which an inference keeps a step at a time
    in one row: rows written to fresh memory every step cost the LayerNorm cell's split
    5-9% of its time)."""
    return t if a.shape[0] > 1 else 0


@kernel
def begin_rows(b0, b1, state, init, lengths, reverse):
    """Put each row's initial state in its start slot; zero the slots no step writes.

    state: (T+1, B, n); init: (B, n). The zeros keep whole-sequence weight-gradient
    products from reading uninitialised memory (0 * NaN would poison them).
    """
    T = state.shape[0] - 1
    n = state.shape[2]
    for b in range(b0, b1):
        L = lengths[b]
        start = L if reverse else 0
        for j in range(n):
            state[start, b, j] = init[b, j]
        for s in range(L + 1, T + 1):
            for j in range(n):
                state[s, b, j] = 0


@kernel
def zero_padding(b0, b1, y, lengths, col, width):
    """y[t, b, col:col+width] = 0 for t past each row's length."""
    T = y.shape[0]
    for b in range(b0, b1):
        for t in range(lengths[b], T):
            for j in range(width):
                y[t, b, col + j] = 0


@kernel
def end_rows(b0, b1, final, state, lengths, reverse):
    """final[b] = each row's state after its last step; final: (B, n)."""
    n = state.shape[2]
    for b in range(b0, b1):
        last = 0 if reverse else lengths[b]
        for j in range(n):
            final[b, j] = state[last, b, j]


@kernel
def copy_rows(b0, b1, dst, src):
    """dst[b] = src[b] for b in b0:b1; dst, src: (B, n)."""
    for b in range(b0, b1):
        for j in range(dst.shape[1]):
            dst[b, j] = src[b, j]


@kernel
def zero_rows_past(b0, b1, a, lengths):
    """a[t, b, :] = 0 for t past each row's length; a: (T, B, n)."""
    T = a.shape[0]
    n = a.shape[2]
    for b in range(b0, b1):
        for t in range(lengths[b], T):
            for j in range(n):
                a[t, b, j] = 0


@kernel
def _count_finite(a):
    """How many values of a (B, n) are finite. |v| < inf is false for NaN and ±Inf, and a
    count of comparisons vectorises where a test and branch per value did not (about 50 vs
    160 ns for a step's inputs at H = 128). Comparisons keep their IEEE meaning because
    fastmath leaves out ``nnan``/``ninf`` (config.py); an arithmetic test such as a sum of
    v - v would not survive reassociation (measured: folded to 0)."""
    inf = cast_like(a, np.inf)
    n = 0
    for b in range(a.shape[0]):
        r = a[b]
        for j in range(r.shape[0]):
            n += abs(r[j]) < inf
    return n


@kernel
def step_inputs_finite(k, x, h, c):
    """Whether a streaming step's inputs into layer k are finite: x (layer 0 only) and h[k],
    c[k] of the state (L, B, ·). A kernel-side check: NumPy's isfinite-and-reduce would
    cost more than the step itself."""
    ok = _count_finite(h[k]) == h[k].size and _count_finite(c[k]) == c[k].size
    return ok and (k > 0 or _count_finite(x) == x.size)


@kernel
def step_layer_rows(k, x, h, h_out):
    """A streaming step's arrays for layer k: its input (x for layer 0, else layer k-1's new
    state h_out[k-1]), its state before h[k] and its new state h_out[k]; h, h_out (L, B, ·)."""
    return (x if k == 0 else h_out[k - 1]), h[k], h_out[k]
