"""Register-blocked micro-kernels for the per-step recurrent product, nlstm's own.

Each step adds h_{t-1} · W_hhᵀ into the gate rows of the active batch rows. Here that
product runs in tiles of 4 rows × one block of W hidden units of all 4 gates (W: the
vector width, ``simd.width``): 16 vector accumulators that stay in registers for the whole
sum over the K inputs, each k costing 4 vector loads of weights, 4 broadcasts of h and
16 fused multiply-adds (on targets with 16 vector registers, tiles of 3 rows: see
``tile_height``).

The weights are packed once per call (``pack_gates``) so that the tile reads them as one
contiguous stream: for unit block u, input k, gate q, the W weights of units u·W..u·W+W.
The tiles need H to be a multiple of W; other sizes take the loops of ``blocks``.

Every array here is flat (1-D, C order) with element offsets, so a tile can address rows
of the state and gate buffers wherever they are: in place, or gathered into a scratch
whose rows lie apart in L1 (``padded_stride``; the LSTM's batched forward).
"""
from numba.extending import register_jitable

from .config import inlined_kernel, kernel
from .simd import (prefetch, vadd, vbroadcast, vfma, vload, vload_first, vregisters, vsplat,
                   vstore, vstore_first, vwidth, width)
from .tuning import (CACHE_LINE_BYTES, PANEL_BYTES, PREFETCH_GATES_BYTES,  # (see there)
                     ROW_BLOCK_BYTES)


def packable(w_t, blocks: int) -> bool:
    """Whether w_t (K, blocks·H) suits the tiles: H a multiple of the vector width. (Plain
    Python: the layers ask before every call.)"""
    H = w_t.shape[1] // blocks
    return H > 0 and H % width(w_t.dtype) == 0


@kernel
def pack_gates(wp, w_t, blocks):
    """wp = w_t (K, blocks·H) in tile order: wp[((u·K + k)·blocks + q)·W + v] =
    w_t[k, q·H + u·W + v]. wp: flat, K·blocks·H; H a multiple of W (see ``packable``)."""
    pack_gates_part(0, w_t.shape[1] // blocks // vwidth(wp), wp, w_t, blocks)


def gate_units(w_t, blocks: int) -> int:
    """How many blocks of W units ``pack_gates`` packs w_t (K, blocks·H) into: the parts
    its split runs. (Plain Python.)"""
    return w_t.shape[1] // blocks // width(w_t.dtype)


@kernel
def pack_gates_part(u0, u1, wp, w_t, blocks):
    """``pack_gates`` for the unit blocks u in u0:u1 only (each block's weights are a
    range of wp of their own: the parts of a split write apart)."""
    K = w_t.shape[0]
    H = w_t.shape[1] // blocks
    W = vwidth(wp)
    i = u0 * K * blocks * W
    for u in range(u0, u1):
        for k in range(K):
            row = w_t[k]
            for q in range(blocks):
                # one vector load and store: a slice per vector (a view each) took 3x longer
                vstore(wp, i, vload(row, q * H + u * W))
                i += W


@kernel
def add_rows(out, r0, r1, v):
    """out[r] += v for the rows r in r0:r1 of the 2-D out, nothing if v is empty: the bias
    of an input projection."""
    if v.shape[0] == 0:
        return
    for r in range(r0, r1):
        o = out[r]
        for j in range(o.shape[0]):
            o[j] += v[j]


# What a tile starts its sums from: the output's own values (a sum continued: the recurrent
# product added to the input projection, or a later depth chunk), those plus the bias (a
# projection made without the bias), or zero.
FROM_OUT = 1
FROM_OUT_AND_BIAS = 2
FROM_ZERO = 3


@kernel
def depth_chunk(a):
    """How much of the summed dimension one pass of the tiles takes, for a's dtype."""
    return max(1, PANEL_BYTES // (4 * vwidth(a) * a.itemsize))


# A tile's columns: all 4 vectors (every tile but a panel product's last), or its first nc
# columns, the rest neither read nor written (the last panel of N columns, N not a multiple of
# the panel width: the packed weights are zero there, the output's row ends or another
# product's columns begin).
FULL = 1 << 30


@inlined_kernel
def _start(out, o, stride, bias, bo, start, nc):
    """The 4 vectors a tile's sums start from, for the row at out[o] (see FROM_*); of a
    panel's first nc columns only (stride W) unless nc is ``FULL``."""
    if start == FROM_ZERO:
        z = vsplat(out, 0)
        return z, z, z, z
    if nc < 4 * vwidth(out):
        W = vwidth(out)
        v0, v1, v2, v3 = (vload_first(out, o, nc), vload_first(out, o + W, nc - W),
                          vload_first(out, o + 2 * W, nc - 2 * W),
                          vload_first(out, o + 3 * W, nc - 3 * W))
        if start == FROM_OUT_AND_BIAS:
            v0 = vadd(v0, vload_first(bias, bo, nc))
            v1 = vadd(v1, vload_first(bias, bo + W, nc - W))
            v2 = vadd(v2, vload_first(bias, bo + 2 * W, nc - 2 * W))
            v3 = vadd(v3, vload_first(bias, bo + 3 * W, nc - 3 * W))
        return v0, v1, v2, v3
    v0, v1, v2, v3 = (vload(out, o), vload(out, o + stride), vload(out, o + 2 * stride),
                      vload(out, o + 3 * stride))
    if start == FROM_OUT_AND_BIAS:
        v0 = vadd(v0, vload(bias, bo))
        v1 = vadd(v1, vload(bias, bo + stride))
        v2 = vadd(v2, vload(bias, bo + 2 * stride))
        v3 = vadd(v3, vload(bias, bo + 3 * stride))
    return v0, v1, v2, v3


@inlined_kernel
def tile_rows4(out, o0, o1, o2, o3, stride, bias, bo, a, a0, a1, a2, a3, wp, wo, K, start,
               step=1, nc=FULL):
    """For 4 rows r: the 4 vectors out[o_r + q·stride : +W] (q = 0..3) = s + Σ_k a[a_r +
    k·step] · (row k of K rows of 4 vectors of packed weights from wp[wo]), s as ``start``
    says (FROM_*; the bias read at bo + q·stride). step: 1 where a's rows hold the sums'
    inputs, a's row length where its columns do (``weight_grad_panels``). The LSTM's gate
    tiles take stride H (one block of units of each gate, ``pack_gates``), the panels
    stride W (4W consecutive columns, ``pack_panels``); nc < ``FULL``: a panel's first nc
    columns only. All arrays flat; offsets in elements.

    With 32 vector registers (AVX-512, AArch64) the 4 rows' 16 accumulators, 4 weight
    vectors and a broadcast stay in registers through the sum. With 16 (AVX2) they do not:
    LLVM spilled accumulators to the stack every k and the tile ran 5x slower than BLAS
    (10 against 53 GFLOP/s); there the callers' loops take tiles of 3 rows (``tile_height``),
    and this one, called anyway, runs two tiles of 2 rows, each row's sum in the same
    order."""
    if vregisters(out) < 32:
        tile_rows2(out, o0, o1, stride, bias, bo, a, a0, a1, wp, wo, K, start, step, nc)
        tile_rows2(out, o2, o3, stride, bias, bo, a, a2, a3, wp, wo, K, start, step, nc)
        return
    W = vwidth(out)
    c00, c01, c02, c03 = _start(out, o0, stride, bias, bo, start, nc)
    c10, c11, c12, c13 = _start(out, o1, stride, bias, bo, start, nc)
    c20, c21, c22, c23 = _start(out, o2, stride, bias, bo, start, nc)
    c30, c31, c32, c33 = _start(out, o3, stride, bias, bo, start, nc)
    for k in range(K):
        w = wo + 4 * W * k
        w0 = vload(wp, w)
        w1 = vload(wp, w + W)
        w2 = vload(wp, w + 2 * W)
        w3 = vload(wp, w + 3 * W)
        x = vbroadcast(a, a0 + k * step)
        c00 = vfma(x, w0, c00)
        c01 = vfma(x, w1, c01)
        c02 = vfma(x, w2, c02)
        c03 = vfma(x, w3, c03)
        x = vbroadcast(a, a1 + k * step)
        c10 = vfma(x, w0, c10)
        c11 = vfma(x, w1, c11)
        c12 = vfma(x, w2, c12)
        c13 = vfma(x, w3, c13)
        x = vbroadcast(a, a2 + k * step)
        c20 = vfma(x, w0, c20)
        c21 = vfma(x, w1, c21)
        c22 = vfma(x, w2, c22)
        c23 = vfma(x, w3, c23)
        x = vbroadcast(a, a3 + k * step)
        c30 = vfma(x, w0, c30)
        c31 = vfma(x, w1, c31)
        c32 = vfma(x, w2, c32)
        c33 = vfma(x, w3, c33)
    _store4(out, o0, stride, c00, c01, c02, c03, nc)
    _store4(out, o1, stride, c10, c11, c12, c13, nc)
    _store4(out, o2, stride, c20, c21, c22, c23, nc)
    _store4(out, o3, stride, c30, c31, c32, c33, nc)


@inlined_kernel
def _store4(out, o, stride, v0, v1, v2, v3, nc):
    """Store a tile's row of 4 vectors; a panel's first nc columns only (see ``FULL``)."""
    if nc < 4 * vwidth(out):
        W = vwidth(out)
        vstore_first(out, o, v0, nc)
        vstore_first(out, o + W, v1, nc - W)
        vstore_first(out, o + 2 * W, v2, nc - 2 * W)
        vstore_first(out, o + 3 * W, v3, nc - 3 * W)
        return
    vstore(out, o, v0)
    vstore(out, o + stride, v1)
    vstore(out, o + 2 * stride, v2)
    vstore(out, o + 3 * stride, v3)


@inlined_kernel
def tile_height(out):
    """How many rows the callers' loops give one tile (a constant per target): 4
    (``tile_rows4``) with 32 vector registers, 3 (``tile_rows3``) with 16. Rows left over
    go as a tile of 2, then alone; every row's sum runs in the same order in each."""
    return 4 if vregisters(out) >= 32 else 3


@inlined_kernel
def tile_rows3(out, o0, o1, o2, stride, bias, bo, a, a0, a1, a2, wp, wo, K, start, step=1,
               nc=FULL):
    """``tile_rows4`` for 3 rows, with the same order of operations: the tile for targets
    with 16 vector registers (AVX2), where its 12 accumulators, 3 broadcasts and one
    weight vector at a time fill them. The 2-row tile's 8 accumulators only just cover
    the FMA latency of two FMA units (4 cycles on current cores): at the panel products'
    shapes on a Zen 3 core, 3 rows ran at 70-75 GFLOP/s against 57-62 for pairs of rows
    (peak 91), the same sums in one process."""
    W = vwidth(out)
    c00, c01, c02, c03 = _start(out, o0, stride, bias, bo, start, nc)
    c10, c11, c12, c13 = _start(out, o1, stride, bias, bo, start, nc)
    c20, c21, c22, c23 = _start(out, o2, stride, bias, bo, start, nc)
    for k in range(K):
        w = wo + 4 * W * k
        x0 = vbroadcast(a, a0 + k * step)
        x1 = vbroadcast(a, a1 + k * step)
        x2 = vbroadcast(a, a2 + k * step)
        v = vload(wp, w)
        c00 = vfma(x0, v, c00)
        c10 = vfma(x1, v, c10)
        c20 = vfma(x2, v, c20)
        v = vload(wp, w + W)
        c01 = vfma(x0, v, c01)
        c11 = vfma(x1, v, c11)
        c21 = vfma(x2, v, c21)
        v = vload(wp, w + 2 * W)
        c02 = vfma(x0, v, c02)
        c12 = vfma(x1, v, c12)
        c22 = vfma(x2, v, c22)
        v = vload(wp, w + 3 * W)
        c03 = vfma(x0, v, c03)
        c13 = vfma(x1, v, c13)
        c23 = vfma(x2, v, c23)
    _store4(out, o0, stride, c00, c01, c02, c03, nc)
    _store4(out, o1, stride, c10, c11, c12, c13, nc)
    _store4(out, o2, stride, c20, c21, c22, c23, nc)


@inlined_kernel
def tile_rows2(out, o0, o1, stride, bias, bo, a, a0, a1, wp, wo, K, start, step=1, nc=FULL):
    """``tile_rows4`` for 2 rows, with the same order of operations."""
    W = vwidth(out)
    c00, c01, c02, c03 = _start(out, o0, stride, bias, bo, start, nc)
    c10, c11, c12, c13 = _start(out, o1, stride, bias, bo, start, nc)
    for k in range(K):
        w = wo + 4 * W * k
        w0 = vload(wp, w)
        w1 = vload(wp, w + W)
        w2 = vload(wp, w + 2 * W)
        w3 = vload(wp, w + 3 * W)
        x = vbroadcast(a, a0 + k * step)
        c00 = vfma(x, w0, c00)
        c01 = vfma(x, w1, c01)
        c02 = vfma(x, w2, c02)
        c03 = vfma(x, w3, c03)
        x = vbroadcast(a, a1 + k * step)
        c10 = vfma(x, w0, c10)
        c11 = vfma(x, w1, c11)
        c12 = vfma(x, w2, c12)
        c13 = vfma(x, w3, c13)
    _store4(out, o0, stride, c00, c01, c02, c03, nc)
    _store4(out, o1, stride, c10, c11, c12, c13, nc)


@inlined_kernel
def tile_row(out, o, stride, bias, bo, a, a0, wp, wo, K, start, step=1, nc=FULL):
    """``tile_rows4`` for one row, with the same order of operations, so that a row's result
    does not depend on whether it ran in a tile of 4 or alone (and so not on how many
    threads split the batch)."""
    W = vwidth(out)
    c0, c1, c2, c3 = _start(out, o, stride, bias, bo, start, nc)
    for k in range(K):
        w = wo + 4 * W * k
        x = vbroadcast(a, a0 + k * step)
        c0 = vfma(x, vload(wp, w), c0)
        c1 = vfma(x, vload(wp, w + W), c1)
        c2 = vfma(x, vload(wp, w + 2 * W), c2)
        c3 = vfma(x, vload(wp, w + 3 * W), c3)
    _store4(out, o, stride, c0, c1, c2, c3, nc)


@kernel
def row_blocks(out, o, stride, block, bias, a, a0, wp, K, u0, u1, step, start, nc_last=FULL):
    """One row's product with packed weights (K rows), one ``tile_row`` per block u in
    u0:u1: its 4 vectors at out[o + u·block + q·stride] (bias at u·block + q·stride, as
    ``start`` says), its weights at wp[u·K·4W]. The LSTM's gate tiles (``pack_gates``) take
    stride H and block W; the panels (``pack_panels``) stride W and block 4W, the last
    block's first nc_last columns only where the panels end in a partial one.

    The blocks run in ascending order at even steps and descending at odd ones: a one-row
    step streams all the weights from the caches, and this way the ones it read last,
    still in L1, are the first the next step reads (when the weights are larger than L1
    this saves L1's worth of them each step). Each sum's order is the same either way."""
    W = vwidth(out)
    n = u1 - u0
    for i in range(n):
        u = u0 + (i if step % 2 == 0 else n - 1 - i)
        tile_row(out, o + u * block, stride, bias, u * block, a, a0, wp, u * K * 4 * W, K,
                 start, 1, nc_last if u == u1 - 1 else FULL)


@inlined_kernel
def prefetch_span(a, o, n):
    """Start fetching a's flat elements o:o+n into the caches, one request a cache line,
    without waiting (nothing for n = 0)."""
    for i in range(0, n, CACHE_LINE_BYTES // a.itemsize):
        prefetch(a, o + i)
    if n > 0:
        prefetch(a, o + n - 1)  # the last line, when o is not on a line's start


@inlined_kernel
def gates_far(gates):
    """Whether a one-row recurrence should fetch each next step's gates ahead: the
    projection wrote them all before the first step, and past L2 each tile waited for its
    row's first lines (0.3 µs of a 3 µs step at H = 128; ``tuning.PREFETCH_GATES_BYTES``)."""
    return gates.size * gates.itemsize > PREFETCH_GATES_BYTES


@register_jitable
def padded_stride(G: int, itemsize: int) -> int:
    """The row stride (elements) of a scratch whose rows of G elements a step's tiles
    accumulate into: an odd number of cache lines, at least G. The gate rows' length
    4H·itemsize is a multiple of a large power of two for most H (4 KB at H = 256), and an
    L1 cache picks a line's set from its address modulo sets × 64 bytes (4 KB on current
    x86 and ARM cores): rows at such a stride all fall in the same few sets, more of them
    than the sets have ways, and every tile's sums went to L2 and back (taking the weights'
    lines in those sets with them). At an odd number of lines, consecutive rows start in
    different sets. (Plain Python too: the layers size the scratch with it.)"""
    lines = -(-G * itemsize // CACHE_LINE_BYTES)
    if lines % 2 == 0:
        lines += 1
    return lines * CACHE_LINE_BYTES // itemsize


def padded_rows(B: int, G: int, itemsize: int) -> int:
    """Rows of G elements a (rows, G) scratch needs to hold B rows at ``padded_stride``."""
    return -(-B * padded_stride(G, itemsize) // G)


def panel_width(dtype) -> int:
    """Columns per panel of ``pack_panels``: 4 vectors."""
    return 4 * width(dtype)


def packable_panels(w) -> bool:
    """Whether products with w (D, N) can run on the panel tiles: any nonempty w (a last
    panel of fewer than 4 vectors of columns is padded with zeros, see ``FULL``)."""
    return w.shape[0] > 0 and w.shape[1] > 0


def panels_size(w, vectors: int = 4) -> int:
    """Elements of w (D, N) packed by ``pack_panels`` (in panels of ``vectors`` vector widths:
    ``pack_panels_of_transpose_part``): whole panels, the last padded."""
    S = vectors * width(w.dtype)
    return w.shape[0] * (-(-w.shape[1] // S) * S)


def panel_count(w, vectors: int = 4) -> int:
    """How many panels ``pack_panels`` makes of w (D, N): the parts its split runs (those of
    ``pack_panels_of_transpose`` of w_t: ``panel_count(w_t.T)``); of ``vectors`` vector widths
    each. (Plain Python.)"""
    return -(-w.shape[1] // (vectors * width(w.dtype)))


def narrow(N: int, dtype) -> bool:
    """Whether a product with N output columns runs on ``project_narrow``: at most 2 vector
    widths (dx of an input of up to 32 float32 features with AVX-512). (Plain Python.)"""
    return N <= 2 * width(dtype)


@kernel
def pack_panels(wp, w):
    """wp = w (D, N) in panels of S = 4W of its columns: wp[(u·D + k)·S + v] = w[k, u·S + v],
    zero past N (``panels_size`` elements), for products a (n, D) @ w (see ``panel_rows``).
    w may be any view; the transpose of a C-contiguous array packs faster by
    ``pack_panels_of_transpose``."""
    pack_panels_part(0, -(-w.shape[1] // (4 * vwidth(wp))), wp, w)


@kernel
def pack_panels_part(u0, u1, wp, w):
    """``pack_panels`` for the panels u in u0:u1 only (each a range of wp of its own)."""
    D, N = w.shape
    S = 4 * vwidth(wp)
    for u in range(u0, u1):
        m = min(S, N - u * S)
        for k in range(D):
            dst = wp[(u * D + k) * S:(u * D + k + 1) * S]
            src = w[k, u * S:u * S + m]
            for v in range(m):
                dst[v] = src[v]
            for v in range(m, S):
                dst[v] = 0


@kernel
def pack_panels_of_transpose(wp, w_t):
    """``pack_panels(wp, w_t.T)`` for a C-contiguous w_t (N, D): wp[(u·D + k)·S + v] =
    w_t[u·S + v, k]. Each source row read along its length and the panel written a
    column at a time, in blocks of depth whose panel rows stay in L1 (``depth_chunk``):
    ``pack_panels`` on the transposed view read a column of w_t per panel row, 5-6x slower
    (the backward carry's and dx's weights, packed every training step: 0.73 against 0.12
    ms at L's W_hh, 2.9 against 0.5 ms at XL's, on Zen 4)."""
    pack_panels_of_transpose_part(0, -(-w_t.shape[0] // (4 * vwidth(wp))), wp, w_t, 4)


@kernel
def pack_panels_of_transpose_part(u0, u1, wp, w_t, vectors):
    """``pack_panels_of_transpose`` for the panels u in u0:u1 only, in panels of ``vectors``
    vector widths: 4, or 2 for ``project_narrow``."""
    N, D = w_t.shape
    S = vectors * vwidth(wp)
    kb = depth_chunk(wp)
    for u in range(u0, u1):
        for k0 in range(0, D, kb):
            m = min(kb, D - k0)
            for v in range(S):
                o = (u * D + k0) * S + v
                if u * S + v < N:
                    src = w_t[u * S + v, k0:k0 + m]
                    for k in range(m):
                        wp[o + k * S] = src[k]
                else:  # the last panel's padding
                    for k in range(m):
                        wp[o + k * S] = 0


@kernel
def panel_rows(out, a, rows, n, wp, c0, c1, d0, d1, scatter, first=FROM_ZERO):
    """out[o_i, c0:c1] = a[i, d0:d1] @ w[d0:d1, c0:c1] for i < n, where o_i = rows[i] if
    ``scatter`` else i, through w (D, N) packed by ``pack_panels``. out: (≥, N) and a: (≥n,
    D), C-contiguous; c0: a multiple of 4 vector widths (a panel's start), c1 any (a
    partial last panel writes its columns only). ``first``: FROM_OUT adds the product to
    out's values instead (a sum continued over several calls)."""
    D = a.shape[1]
    S = 4 * vwidth(out)
    of = out.reshape(out.size)
    af = a.reshape(a.size)
    kc = depth_chunk(out)
    for u in range(c0 // S, -(-c1 // S)):
        nc = min(S, c1 - u * S)
        for k0 in range(d0, d1, kc):
            _panel_chunk(of, out.shape[1], rows, n, scatter, u, af, k0, D, 1,
                         wp, (u * D + k0) * S, min(kc, d1 - k0), FROM_OUT if k0 > d0 else first,
                         nc)


@inlined_kernel
def _panel_chunk(of, N, rows, n, scatter, u, af, k0, rs, ks, wp, wo, m, start, nc):
    """``panel_rows``' sums over one chunk of the depth, k0:k0+m, of panel u for its n
    rows: of flat (rows of N), row i's inputs at af[i·rs + k·ks] (rs = D, ks = 1 for the
    rows of an (n, D); rs = 1, ks = K for the columns of an (N, K), ``weight_grad_panels``;
    rs = B·I, ks = 1 for one batch row's steps of a (T, B, I), ``project_ragged_panels``),
    the chunk's packed weights at wp[wo]; the panel's first nc columns (see ``FULL``)."""
    S = 4 * vwidth(of)
    R = tile_height(of)
    i = 0
    while i + R <= n:  # then a pair, then single rows (see tile_height)
        o0 = _panel_at(rows, i, N, S, u, scatter)
        o1 = _panel_at(rows, i + 1, N, S, u, scatter)
        o2 = _panel_at(rows, i + 2, N, S, u, scatter)
        a0 = i * rs + k0 * ks
        if R == 4:
            o3 = _panel_at(rows, i + 3, N, S, u, scatter)
            tile_rows4(of, o0, o1, o2, o3, S // 4, of, 0, af, a0, a0 + rs, a0 + 2 * rs,
                       a0 + 3 * rs, wp, wo, m, start, ks, nc)
        else:
            tile_rows3(of, o0, o1, o2, S // 4, of, 0, af, a0, a0 + rs, a0 + 2 * rs, wp, wo,
                       m, start, ks, nc)
        i += R
    if i + 2 <= n:
        a0 = i * rs + k0 * ks
        tile_rows2(of, _panel_at(rows, i, N, S, u, scatter),
                   _panel_at(rows, i + 1, N, S, u, scatter), S // 4, of, 0, af, a0, a0 + rs,
                   wp, wo, m, start, ks, nc)
        i += 2
    for r in range(i, n):
        tile_row(of, _panel_at(rows, r, N, S, u, scatter), S // 4, of, 0, af, r * rs + k0 * ks,
                 wp, wo, m, start, ks, nc)


@inlined_kernel
def _panel_at(rows, i, N, S, u, scatter):
    """``panel_rows``' flat offset of panel u in the output row of its i-th row."""
    return (rows[i] if scatter else i) * N + u * S


@kernel
def project_panels(r0, r1, x, wp, out, bias, no_rows, first):
    """out[r0:r1] = x[r0:r1] @ w (+ bias if not empty), or with ``first`` FROM_OUT
    out[r0:r1] += x[r0:r1] @ w: one thread's rows of a whole-sequence product through the
    panel tiles (the input projection; in backward dx = dg·W_ih), w (I, G) packed by
    ``pack_panels``. x: (n, I), out: (n, G), C-contiguous; bias: (G,) or empty; no_rows:
    an empty int64 array (``panel_rows``' unused row list)."""
    I, G = x.shape[1], out.shape[1]
    rb = _row_block(x, I)
    for i0 in range(r0, r1, rb):
        i1 = min(r1, i0 + rb)
        panel_rows(out[i0:i1], x[i0:i1], no_rows, i1 - i0, wp, 0, G, 0, I, False, first)
        add_rows(out, i0, i1, bias)


@kernel
def project_narrow(r0, r1, x, wp, out, bias, no_rows, first):
    """``project_panels`` for an out of at most 2 vector widths of columns (``narrow``: dx of
    a small input), w (I, G) packed as one panel of 2 vector widths
    (``pack_panels_of_transpose_part(..., 2)``). On the panels of 4 such a product left half
    of every vector zero: dx at long (4000 x 512 x 32) ran at 110 GFLOP/s against 222 for
    the input projection. Here a tile is 4 rows × 2 vectors (``narrow_rows4``; tiles of 8
    rows, 16 accumulators, ran 1.5-3% faster on AVX-512 and were not worth a second copy)."""
    I, G = x.shape[1], out.shape[1]
    S = 2 * vwidth(out)
    kc = 2 * depth_chunk(out)  # the same bytes of weights as a 4-vector panel's chunk
    rb = _row_block(x, I)
    of, xf = out.reshape(out.size), x.reshape(x.size)
    for i0 in range(r0, r1, rb):
        i1 = min(r1, i0 + rb)
        for k0 in range(0, I, kc):
            m = min(kc, I - k0)
            start = FROM_OUT if k0 > 0 else first
            i = i0
            while i + 4 <= i1:
                narrow_rows4(of, i * G, G, xf, i * I + k0, I, wp, k0 * S, m, start, G)
                i += 4
            for r in range(i, i1):
                narrow_row(of, r * G, xf, r * I + k0, wp, k0 * S, m, start, G)
        add_rows(out, i0, i1, bias)


@inlined_kernel
def _nstart(of, o, start, nc):
    """A narrow tile row's 2 vectors to start from: zero, or out's first nc columns at o."""
    if start == FROM_ZERO:
        z = vsplat(of, 0)
        return z, z
    W = vwidth(of)
    return vload_first(of, o, nc), vload_first(of, o + W, nc - W)


@inlined_kernel
def _nstore(of, o, v0, v1, nc):
    W = vwidth(of)
    vstore_first(of, o, v0, nc)
    vstore_first(of, o + W, v1, nc - W)


@inlined_kernel
def narrow_row(of, o, af, a0, wp, wo, K, start, nc):
    """One row of ``project_narrow``: of[o:o+nc] (+)= Σ_k af[a0 + k] · (row k of the panel at
    wp[wo], 2 vectors). Each row's sums run in the same order in every tile (so a row's bits
    do not depend on how the threads split the rows)."""
    W = vwidth(of)
    c0, c1 = _nstart(of, o, start, nc)
    for k in range(K):
        w = wo + 2 * W * k
        x = vbroadcast(af, a0 + k)
        c0 = vfma(x, vload(wp, w), c0)
        c1 = vfma(x, vload(wp, w + W), c1)
    _nstore(of, o, c0, c1, nc)


@inlined_kernel
def narrow_rows4(of, o, ro, af, a0, ra, wp, wo, K, start, nc):
    """``narrow_row`` for the 4 rows at of[o + r·ro], af[a0 + r·ra]: 8 accumulators."""
    W = vwidth(of)
    c00, c01 = _nstart(of, o, start, nc)
    c10, c11 = _nstart(of, o + ro, start, nc)
    c20, c21 = _nstart(of, o + 2 * ro, start, nc)
    c30, c31 = _nstart(of, o + 3 * ro, start, nc)
    for k in range(K):
        w = wo + 2 * W * k
        w0 = vload(wp, w)
        w1 = vload(wp, w + W)
        x = vbroadcast(af, a0 + k)
        c00 = vfma(x, w0, c00)
        c01 = vfma(x, w1, c01)
        x = vbroadcast(af, a0 + ra + k)
        c10 = vfma(x, w0, c10)
        c11 = vfma(x, w1, c11)
        x = vbroadcast(af, a0 + 2 * ra + k)
        c20 = vfma(x, w0, c20)
        c21 = vfma(x, w1, c21)
        x = vbroadcast(af, a0 + 3 * ra + k)
        c30 = vfma(x, w0, c30)
        c31 = vfma(x, w1, c31)
    _nstore(of, o, c00, c01, nc)
    _nstore(of, o + ro, c10, c11, nc)
    _nstore(of, o + 2 * ro, c20, c21, nc)
    _nstore(of, o + 3 * ro, c30, c31, nc)


@kernel
def project_ragged_panels(b0, b1, x, wp, gates, bias, lengths, no_rows):
    """gates[:L, b] = x[:L, b] @ w (+ bias if not empty) for the batch rows b in b0:b1, L
    their lengths: one thread's rows of a ragged batch's input projection through the
    panel tiles, each batch row over its own steps where they are (rows B·I apart in x,
    B·G in gates), so the padding costs nothing. w (I, G) packed by ``pack_panels``; x:
    (T, B, I), gates: (T, B, G), C-contiguous; bias (G,) or empty; no_rows: an empty int64
    array. The steps in blocks whose rows of x stay in L2 across all the panels (as
    ``project_panels``)."""
    T, B, I = x.shape
    G = gates.shape[2]
    S = 4 * vwidth(gates)
    kc = depth_chunk(gates)
    rb = _row_block(x, I)
    xf, gf = x.reshape(x.size), gates.reshape(gates.size)
    for b in range(b0, b1):
        for t0 in range(0, lengths[b], rb):
            n = min(lengths[b], t0 + rb) - t0
            xb, gb = xf[(t0 * B + b) * I:], gf[(t0 * B + b) * G:]
            for u in range(-(-G // S)):
                for k0 in range(0, I, kc):
                    _panel_chunk(gb, B * G, no_rows, n, False, u, xb, k0, B * I, 1, wp,
                                 (u * I + k0) * S, min(kc, I - k0),
                                 FROM_OUT if k0 > 0 else FROM_ZERO, min(S, G - u * S))
        add_rows(gates[:, b], 0, max(0, lengths[b]), bias)


@inlined_kernel
def _row_block(x, I):
    """How many rows of x (I inputs each) the projections take at a time: a multiple of
    the 4-row tile whose rows stay in L2 across all the panels (ROW_BLOCK_BYTES)."""
    return max(4, ROW_BLOCK_BYTES // (I * x.itemsize) // 4 * 4)


@kernel
def grad_block(dg, a, b):
    """How many rows of the depth (of N = dg's rows) ``weight_grad_panels`` takes at a time:
    whole depth chunks whose rows of a and b stay in L2 across every panel together
    (ROW_BLOCK_BYTES, as ``project_panels``' rows), at most N."""
    kc = depth_chunk(dg)
    K = a.shape[1] + b.shape[1]
    return min(dg.shape[0], max(kc, ROW_BLOCK_BYTES // (K * dg.itemsize) // kc * kc))


@kernel
def weight_grad_panels(p0, p1, c0, c1, dg, a, gw_t, b, gv_t, db, dgp, no_rows):
    """gw_t[:, c] += aᵀ @ dg[:, c], and gv_t[:, c] += bᵀ @ dg[:, c] unless b has no
    columns, and db[c] += Σ_n dg[n, c] unless db is empty, for the columns c of panels
    p0:p1 (4 vector widths each, the last one of c0:c1 may be partial) of the columns
    c0:c1: one thread's panels of one or two weight gradients (and a bias gradient's sum)
    from the same gate gradients through the panel tiles. dg: (N, G') gate gradients; a:
    (N, K) and b: (N, K') the products' other inputs; gw_t: (K, G') and gv_t: (K', G') the
    gradients as stored (gwᵀ), all C-contiguous; db: (G',) or empty; dgp: flat scratch of
    at least (c1 - c0 + 4W)·``grad_block`` elements (each part packs into its own slice of
    it); no_rows: an empty int64 array.

    A tile's 4 rows of gw_t are 4 adjacent columns of a, read where they are (step K
    along the depth: no transposed copy of a). The depth (N = T·B, thousands) runs in
    blocks (``grad_block``) whose rows of a and b stay in L2 across every panel; each
    block's sums continue the gradients'. Each panel's rows of a block are packed (dg's
    rows are G' apart, at 4 KB and more they would fall into a few L1 sets), zero past
    c1, and then serve both products while in L1 and L2: packed whole beforehand, dg went
    out to memory and back, once for each product."""
    S = 4 * vwidth(gw_t)
    W = vwidth(gw_t)
    N, G = dg.shape
    K, K2 = a.shape[1], b.shape[1]
    kc = depth_chunk(gw_t)
    nb = grad_block(dg, a, b)
    buf = dgp[p0 * S * nb:(p0 + 1) * S * nb]
    # the outputs' flat views from column c0 on: panel j at row offset j·S
    gf, af = gw_t.reshape(gw_t.size)[c0:], a.reshape(a.size)
    vf, bf = gv_t.reshape(gv_t.size)[c0:], b.reshape(b.size)
    sums = db.shape[0] > 0
    for d0 in range(0, N, nb):
        d1 = min(N, d0 + nb)
        for j in range(p0, p1):
            nc = min(S, c1 - c0 - j * S)
            # the bias sum while the packing has the values in registers: a pass of its own
            # over dg's strided columns cost 0.1-0.15 ms at M (T·B = 1600, G' = 512)
            s0 = s1 = s2 = s3 = vsplat(buf, 0)
            e = c0 + j * S
            for k in range(d0, d1):
                row = dg[k]
                o = (k - d0) * S
                if nc == S:
                    v0, v1, v2, v3 = (vload(row, e), vload(row, e + W), vload(row, e + 2 * W),
                                      vload(row, e + 3 * W))
                else:
                    v0, v1, v2, v3 = (vload_first(row, e, nc), vload_first(row, e + W, nc - W),
                                      vload_first(row, e + 2 * W, nc - 2 * W),
                                      vload_first(row, e + 3 * W, nc - 3 * W))
                vstore(buf, o, v0)
                vstore(buf, o + W, v1)
                vstore(buf, o + 2 * W, v2)
                vstore(buf, o + 3 * W, v3)
                if sums:
                    s0, s1, s2, s3 = vadd(s0, v0), vadd(s1, v1), vadd(s2, v2), vadd(s3, v3)
            if sums:
                vstore_first(db, e, vadd(vload_first(db, e, nc), s0), nc)
                vstore_first(db, e + W, vadd(vload_first(db, e + W, nc - W), s1), nc - W)
                vstore_first(db, e + 2 * W, vadd(vload_first(db, e + 2 * W, nc - 2 * W), s2),
                             nc - 2 * W)
                vstore_first(db, e + 3 * W, vadd(vload_first(db, e + 3 * W, nc - 3 * W), s3),
                             nc - 3 * W)
            for k0 in range(d0, d1, kc):
                m, wo = min(kc, d1 - k0), (k0 - d0) * S
                _panel_chunk(gf, G, no_rows, K, False, j, af, k0, 1, K, buf, wo, m, FROM_OUT,
                             nc)
                if K2 > 0:
                    _panel_chunk(vf, G, no_rows, K2, False, j, bf, k0, 1, K2, buf, wo, m,
                                 FROM_OUT, nc)
