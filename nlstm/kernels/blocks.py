"""Per-step block products, shared by every cell's kernels.

At each time step a kernel gathers the rows of its batch range that are still active
(step < length) into a contiguous block, multiplies the whole block by the recurrent
weights at once, then runs the pointwise gate math row by row. Compared with one
matrix-vector product per row, each weight row is loaded once for several batch rows,
which is what the recurrence is bound by (the weights stream from L2). Rows past their
length are skipped, so ragged batches cost what their lengths add up to.

These loops are the products the register tiles (``tiles``) do not take (single rows off
the gate tiles, the LayerNorm LSTM off them, the projection W_hr m, a GRU without lbr at H
off the panels); no BLAS is called from compiled code, so nlstm needs no SciPy (Numba's
``np.dot`` calls SciPy's BLAS).
Weights arrive transposed, b = Wᵀ of shape (K, G), C-contiguous (see RecurrentLayer).
The forward product a @ b runs as row updates over b (four rows of a sharing each load of
b's rows), the backward carry a @ bᵀ as dot products along b's rows where the panels do
not take it (a one-row batch of the LSTM's or the LayerNorm LSTM's variant options, or
the tiles switched off: every carry of a batch of more than one row runs on them). The
loops can be limited to the columns c0:c1 of b (a gate block); they slice first and loop
from 0: a loop over range(c0, c1) indexes with a value Numba cannot prove non-negative, so
each access keeps its negative-index wraparound and LLVM does not vectorise it (measured:
4x slower at 128×512).
"""

from .activations import cast_like
from .config import inlined_kernel, kernel
from .simd import wide
from .slots import slots, step_time
from .tiles import panel_rows


@kernel
def active_rows(step, b0, b1, lengths, reverse, rows, times):
    """Fill rows[:n] and times[:n] with the rows of b0:b1 active at ``step`` and the time
    index each one is at; return n."""
    n = 0
    for b in range(b0, b1):
        L = lengths[b]
        if step < L:
            rows[n] = b
            times[n] = step_time(step, L, reverse)
            n += 1
    return n


@kernel
def row_nn_add(o, a, b, c0, c1):
    """o[c0:c1] += a @ b[:, c0:c1] for one row; o (G,), a (K,), b (K, G). Four rows of b
    per pass over o, so o is loaded and stored a quarter as often (3x the dot-product form
    at B = 1)."""
    wide()
    K = b.shape[0]
    oc = o[c0:c1]  # loops from 0 (see the module doc)
    k = 0
    while k + 4 <= K:
        a0 = a[k]
        a1 = a[k + 1]
        a2 = a[k + 2]
        a3 = a[k + 3]
        w0 = b[k, c0:c1]
        w1 = b[k + 1, c0:c1]
        w2 = b[k + 2, c0:c1]
        w3 = b[k + 3, c0:c1]
        for j in range(oc.shape[0]):
            oc[j] += a0 * w0[j] + a1 * w1[j] + a2 * w2[j] + a3 * w3[j]
        k += 4
    for kk in range(k, K):
        ak = a[kk]
        wk = b[kk, c0:c1]
        for j in range(oc.shape[0]):
            oc[j] += ak * wk[j]


@kernel
def row_nn(o, a, b, c0, c1):
    """o[c0:c1] = a @ b[:, c0:c1] for one row."""
    zero = cast_like(o, 0)
    oc = o[c0:c1]
    for j in range(oc.shape[0]):
        oc[j] = zero
    row_nn_add(o, a, b, c0, c1)


@kernel
def matmul_nn(out, a, b, n, c0, c1):
    """out[:n, c0:c1] = a[:n] @ b[:, c0:c1]. out: (≥n, G); a: (≥n, K); b: (K, G). All
    columns: four rows at a time share each load of b's rows."""
    r = 0
    if c0 == 0 and c1 == b.shape[1]:
        zero = cast_like(out, 0)
        while r + 4 <= n:
            for i in range(r, r + 4):
                o = out[i]
                for j in range(c1):
                    o[j] = zero
            _rows4_nn_add(out[r], out[r + 1], out[r + 2], out[r + 3], a[r], a[r + 1],
                          a[r + 2], a[r + 3], b)
            r += 4
    for i in range(r, n):
        row_nn(out[i], a[i], b, c0, c1)


@kernel
def add_recurrent(gates, h, w_t, bias, rows, times, n, reverse, wf, sp1, sg):
    """gates[t_i, b_i] += h[slot before t_i, b_i] @ w_t + bias for the n active rows.

    gates: (T, B, G); h: (T+1, B, K) state slots; w_t: (K, G); bias: (G,) (added here
    rather than with the input projection: one pass over the gates less, 5-7% of a ragged
    forward). With wf (w_t packed as panels, ``tiles.pack_panels``; the layer packs it for
    blocks of rows) the states are gathered into sp1 (≥n, K), multiplied on the panel tiles
    into sg (≥n, G) and added; else straight into each row's gates (no gather), four rows
    sharing each load of w_t's rows (wf empty: its sp1 and sg unused).
    """
    wide()
    if wf.shape[0] > 0:
        for i in range(n):
            p, o = slots(times[i], reverse)
            hp = h[p, rows[i]]
            dst = sp1[i]
            for k in range(hp.shape[0]):
                dst[k] = hp[k]
        panel_rows(sg, sp1, rows, n, wf, 0, w_t.shape[1], 0, w_t.shape[0], False)
        for i in range(n):
            g = gates[times[i], rows[i]]
            src = sg[i]
            for j in range(g.shape[0]):
                g[j] += src[j] + bias[j]
        return
    for i in range(n):
        g = gates[times[i], rows[i]]
        for j in range(g.shape[0]):
            g[j] += bias[j]
    i = 0
    while i + 4 <= n:  # four rows share each load of w_t's rows
        p0, o0 = slots(times[i], reverse)
        p1, o1 = slots(times[i + 1], reverse)
        p2, o2 = slots(times[i + 2], reverse)
        p3, o3 = slots(times[i + 3], reverse)
        _rows4_nn_add(gates[times[i], rows[i]], gates[times[i + 1], rows[i + 1]],
                      gates[times[i + 2], rows[i + 2]], gates[times[i + 3], rows[i + 3]],
                      h[p0, rows[i]], h[p1, rows[i + 1]], h[p2, rows[i + 2]], h[p3, rows[i + 3]],
                      w_t)
        i += 4
    for r in range(i, n):
        p, o = slots(times[r], reverse)
        row_nn_add(gates[times[r], rows[r]], h[p, rows[r]], w_t, 0, w_t.shape[1])


@kernel
def _rows4_nn_add(g0, g1, g2, g3, a0, a1, a2, a3, b):
    """g_r += a_r @ b for four rows at once: each pass loads four rows of b once for all
    four outputs. g_r: (G,); a_r: (K,); b: (K, G)."""
    wide()
    K, G = b.shape
    k = 0
    while k + 4 <= K:
        w0 = b[k]
        w1 = b[k + 1]
        w2 = b[k + 2]
        w3 = b[k + 3]
        x0, x1, x2, x3 = a0[k], a0[k + 1], a0[k + 2], a0[k + 3]
        y0, y1, y2, y3 = a1[k], a1[k + 1], a1[k + 2], a1[k + 3]
        z0, z1, z2, z3 = a2[k], a2[k + 1], a2[k + 2], a2[k + 3]
        v0, v1, v2, v3 = a3[k], a3[k + 1], a3[k + 2], a3[k + 3]
        for j in range(G):
            p = w0[j]
            q = w1[j]
            s = w2[j]
            t = w3[j]
            g0[j] += x0 * p + x1 * q + x2 * s + x3 * t
            g1[j] += y0 * p + y1 * q + y2 * s + y3 * t
            g2[j] += z0 * p + z1 * q + z2 * s + z3 * t
            g3[j] += v0 * p + v1 * q + v2 * s + v3 * t
        k += 4
    for kk in range(k, K):
        wk = b[kk]
        for j in range(G):
            g0[j] += a0[kk] * wk[j]
            g1[j] += a1[kk] * wk[j]
            g2[j] += a2[kk] * wk[j]
            g3[j] += a3[kk] * wk[j]


@kernel
def copy_out(y, h, rows, times, n, reverse, col):
    """y[t_i, b_i, col:col+P] = h[slot after t_i, b_i] for the n active rows."""
    for i in range(n):
        p, o = slots(times[i], reverse)
        row_out(y, times[i], rows[i], col, h[o, rows[i]])


@kernel
def row_out(y, t, b, col, hn):
    """y[t, b, col:col+P] = hn, one row's new state as its output; hn: (P,)."""
    dst = y[t, b, col:col + hn.shape[0]]  # sliced: loops from 0
    for j in range(hn.shape[0]):
        dst[j] = hn[j]


@kernel
def scatter_rows(dst, src, rows, n):
    """dst[rows[i]] = src[i] for the n active rows; dst: (B, K), src: (≥n, K)."""
    for i in range(n):
        d = dst[rows[i]]
        s = src[i]
        for k in range(d.shape[0]):
            d[k] = s[k]


@kernel
def matmul_nt(out, a, w, n, c0, c1):
    """out[:n] = a[:n, c0:c1] @ w[:, c0:c1]ᵀ, as dot products along w's rows (four rows of
    a at a time). out: (≥n, K); a: (≥n, G); w: (K, G)."""
    wide()
    K = w.shape[0]
    zero = cast_like(out, 0)
    b = 0
    while b + 4 <= n:  # four rows share each load of w's row
        a0 = a[b, c0:c1]
        a1 = a[b + 1, c0:c1]
        a2 = a[b + 2, c0:c1]
        a3 = a[b + 3, c0:c1]
        for k in range(K):
            wk = w[k, c0:c1]
            s0 = zero
            s1 = zero
            s2 = zero
            s3 = zero
            for j in range(wk.shape[0]):
                v = wk[j]
                s0 += v * a0[j]
                s1 += v * a1[j]
                s2 += v * a2[j]
                s3 += v * a3[j]
            out[b, k] = s0
            out[b + 1, k] = s1
            out[b + 2, k] = s2
            out[b + 3, k] = s3
        b += 4
    for r in range(b, n):
        row_dots(out[r], w, a[r], c0, c1, 0, K)


@kernel
def row_dots(o, w, a, c0, c1, k0, k1):
    """o[k] = w[k, c0:c1] · a[c0:c1] for k in k0:k1; o (K,), w (K, G), a (G,). Four rows of
    w per pass over a, as four independent sums (25% faster than one row at a time at
    64×256 and 128×512: a is loaded once for four, and the sums do not wait on each other)."""
    wide()
    zero = cast_like(o, 0)
    ac = a[c0:c1]
    k = k0
    while k + 4 <= k1:
        w0 = w[k, c0:c1]
        w1 = w[k + 1, c0:c1]
        w2 = w[k + 2, c0:c1]
        w3 = w[k + 3, c0:c1]
        s0 = zero
        s1 = zero
        s2 = zero
        s3 = zero
        for j in range(ac.shape[0]):
            v = ac[j]
            s0 += w0[j] * v
            s1 += w1[j] * v
            s2 += w2[j] * v
            s3 += w3[j] * v
        o[k] = s0
        o[k + 1] = s1
        o[k + 2] = s2
        o[k + 3] = s3
        k += 4
    for kk in range(k, k1):
        wk = w[kk, c0:c1]
        s = zero
        for j in range(ac.shape[0]):
            s += wk[j] * ac[j]
        o[kk] = s


@kernel
def row_dots_alternating(o, w, a, c0, c1, k0, k1, step):
    """``row_dots``, its groups of four rows of w in ascending order at even steps and
    descending at odd ones (see tiles.row_blocks: the rows read last are read first next
    step, from L1). Same groups, same sums: the same bits as ``row_dots``."""
    if step % 2 == 0:
        row_dots(o, w, a, c0, c1, k0, k1)
        return
    full = k0 + (k1 - k0) // 4 * 4
    row_dots(o, w, a, c0, c1, full, k1)
    for k in range(full - 4, k0 - 1, -4):
        row_dots(o, w, a, c0, c1, k, k + 4)


@inlined_kernel
def same(a, b):
    """Whether arrays a and b start at the same element. A loop given the same array as
    input and output under two names runs LLVM's scalar fallback (its run-time check finds
    them overlapping): 3x slower over a 4H row (the LSTM's cell backward: 2.9 against 0.8 µs
    a row at H = 256). Kernels that allow ``out`` to be an input take this branch to a loop
    that names the array once."""
    return a.ctypes.data == b.ctypes.data
