"""Register-blocked micro-kernels for the per-step recurrent product, nlstm's own.

Each step adds h_{t-1} · W_hhᵀ into the gate rows of the active batch rows. Here that
product runs in tiles of 4 rows × one block of W hidden units of all 4 gates (W: the
vector width, ``simd.width``): 16 vector accumulators that stay in registers for the whole
sum over the K inputs, each k costing 4 vector loads of weights, 4 broadcasts of h and
16 fused multiply-adds. The epilogue (the cell's gate math for those rows and units) runs
right after each tile, while its gate values are still in L1.

The weights are packed once per call (``pack_gates``) so that the tile reads them as one
contiguous stream: for unit block u, input k, gate q, the W weights of units u·W..u·W+W.
The tiles need H to be a multiple of W; other sizes take the loops of ``blocks``.

Every array here is flat (1-D, C order) with element offsets, so a tile can address rows
of the state and gate buffers wherever they are (ragged batches gather no rows).
"""
from .config import kernel
from .simd import vadd, vbroadcast, vfma, vload, vsplat, vstore, vwidth, width


def packable(w_t, blocks: int) -> bool:
    """Whether w_t (K, blocks·H) suits the tiles: H a multiple of the vector width. (Plain
    Python: the layers ask before every call.)"""
    H = w_t.shape[1] // blocks
    return H > 0 and H % width(w_t.dtype) == 0


@kernel
def pack_gates(wp, w_t, blocks):
    """wp = w_t (K, blocks·H) in tile order: wp[((u·K + k)·blocks + q)·W + v] =
    w_t[k, q·H + u·W + v]. wp: flat, K·blocks·H; H a multiple of W (see ``packable``)."""
    K = w_t.shape[0]
    H = w_t.shape[1] // blocks
    W = vwidth(wp)
    i = 0
    for u in range(H // W):
        for k in range(K):
            row = w_t[k]
            for q in range(blocks):
                src = row[q * H + u * W:q * H + u * W + W]
                dst = wp[i:i + W]
                for v in range(W):
                    dst[v] = src[v]
                i += W


# What a gate tile starts its sums from: the bias (the input projection), the gate rows
# themselves (the recurrent product, added to the projection already there), or both (a
# projection made without the bias).
FROM_BIAS = 0
FROM_GATES = 1
FROM_GATES_AND_BIAS = 2

# A tile's slice of packed weights (depth × 4 vectors) is read once per tile of rows; sums
# run over depth chunks of at most PANEL_BYTES of weights, so that the slice stays in L1
# (32 KB or more on current x86 and ARM cores) across every tile of rows of a step.
# Unchunked, L's 64 KB per unit block came from L2 for each tile of rows: 10-20% slower.
PANEL_BYTES = 24 * 1024


@kernel
def depth_chunk(a):
    """How much of the summed dimension one pass of the tiles takes, for a's dtype."""
    return max(1, PANEL_BYTES // (4 * vwidth(a) * a.itemsize))


@kernel
def gates4_rows4(g, o0, o1, o2, o3, H, bias, bo, hf, h0, h1, h2, h3, wp, wo, K, start):
    """For 4 rows r and the 4 gates q: g[o_r + q·H : +W] = s + hf[h_r : h_r+K] · (the packed
    weights of one unit block, from wp[wo]), where s is bias[bo + q·H : +W] (``start`` =
    FROM_BIAS), g's own values (FROM_GATES) or their sum (FROM_GATES_AND_BIAS). g, bias, hf,
    wp: flat arrays; o_r, h_r: element offsets of each row's gate block and input."""
    W = vwidth(g)
    if start == FROM_BIAS:
        a00 = vload(bias, bo)
        a01 = vload(bias, bo + H)
        a02 = vload(bias, bo + 2 * H)
        a03 = vload(bias, bo + 3 * H)
        a10, a11, a12, a13 = a00, a01, a02, a03
        a20, a21, a22, a23 = a00, a01, a02, a03
        a30, a31, a32, a33 = a00, a01, a02, a03
    else:
        a00 = vload(g, o0)
        a01 = vload(g, o0 + H)
        a02 = vload(g, o0 + 2 * H)
        a03 = vload(g, o0 + 3 * H)
        a10 = vload(g, o1)
        a11 = vload(g, o1 + H)
        a12 = vload(g, o1 + 2 * H)
        a13 = vload(g, o1 + 3 * H)
        a20 = vload(g, o2)
        a21 = vload(g, o2 + H)
        a22 = vload(g, o2 + 2 * H)
        a23 = vload(g, o2 + 3 * H)
        a30 = vload(g, o3)
        a31 = vload(g, o3 + H)
        a32 = vload(g, o3 + 2 * H)
        a33 = vload(g, o3 + 3 * H)
        if start == FROM_GATES_AND_BIAS:
            b0 = vload(bias, bo)
            b1 = vload(bias, bo + H)
            b2 = vload(bias, bo + 2 * H)
            b3 = vload(bias, bo + 3 * H)
            a00, a01, a02, a03 = vadd(a00, b0), vadd(a01, b1), vadd(a02, b2), vadd(a03, b3)
            a10, a11, a12, a13 = vadd(a10, b0), vadd(a11, b1), vadd(a12, b2), vadd(a13, b3)
            a20, a21, a22, a23 = vadd(a20, b0), vadd(a21, b1), vadd(a22, b2), vadd(a23, b3)
            a30, a31, a32, a33 = vadd(a30, b0), vadd(a31, b1), vadd(a32, b2), vadd(a33, b3)
    for k in range(K):
        w = wo + 4 * W * k
        w0 = vload(wp, w)
        w1 = vload(wp, w + W)
        w2 = vload(wp, w + 2 * W)
        w3 = vload(wp, w + 3 * W)
        x = vbroadcast(hf, h0 + k)
        a00 = vfma(x, w0, a00)
        a01 = vfma(x, w1, a01)
        a02 = vfma(x, w2, a02)
        a03 = vfma(x, w3, a03)
        x = vbroadcast(hf, h1 + k)
        a10 = vfma(x, w0, a10)
        a11 = vfma(x, w1, a11)
        a12 = vfma(x, w2, a12)
        a13 = vfma(x, w3, a13)
        x = vbroadcast(hf, h2 + k)
        a20 = vfma(x, w0, a20)
        a21 = vfma(x, w1, a21)
        a22 = vfma(x, w2, a22)
        a23 = vfma(x, w3, a23)
        x = vbroadcast(hf, h3 + k)
        a30 = vfma(x, w0, a30)
        a31 = vfma(x, w1, a31)
        a32 = vfma(x, w2, a32)
        a33 = vfma(x, w3, a33)
    vstore(g, o0, a00)
    vstore(g, o0 + H, a01)
    vstore(g, o0 + 2 * H, a02)
    vstore(g, o0 + 3 * H, a03)
    vstore(g, o1, a10)
    vstore(g, o1 + H, a11)
    vstore(g, o1 + 2 * H, a12)
    vstore(g, o1 + 3 * H, a13)
    vstore(g, o2, a20)
    vstore(g, o2 + H, a21)
    vstore(g, o2 + 2 * H, a22)
    vstore(g, o2 + 3 * H, a23)
    vstore(g, o3, a30)
    vstore(g, o3 + H, a31)
    vstore(g, o3 + 2 * H, a32)
    vstore(g, o3 + 3 * H, a33)


@kernel
def gates4_row(g, o, H, bias, bo, hf, h, wp, wo, K, start):
    """``gates4_rows4`` for one row. The sum over k runs as two interleaved halves (even and
    odd k), so that 8 independent accumulators hide the latency of the multiply-adds."""
    W = vwidth(g)
    if start == FROM_BIAS:
        a0 = vload(bias, bo)
        a1 = vload(bias, bo + H)
        a2 = vload(bias, bo + 2 * H)
        a3 = vload(bias, bo + 3 * H)
    else:
        a0 = vload(g, o)
        a1 = vload(g, o + H)
        a2 = vload(g, o + 2 * H)
        a3 = vload(g, o + 3 * H)
        if start == FROM_GATES_AND_BIAS:
            a0 = vadd(a0, vload(bias, bo))
            a1 = vadd(a1, vload(bias, bo + H))
            a2 = vadd(a2, vload(bias, bo + 2 * H))
            a3 = vadd(a3, vload(bias, bo + 3 * H))
    z = vsplat(g, 0)
    e0 = z
    e1 = z
    e2 = z
    e3 = z
    k = 0
    while k + 2 <= K:
        w = wo + 4 * W * k
        x = vbroadcast(hf, h + k)
        a0 = vfma(x, vload(wp, w), a0)
        a1 = vfma(x, vload(wp, w + W), a1)
        a2 = vfma(x, vload(wp, w + 2 * W), a2)
        a3 = vfma(x, vload(wp, w + 3 * W), a3)
        x = vbroadcast(hf, h + k + 1)
        e0 = vfma(x, vload(wp, w + 4 * W), e0)
        e1 = vfma(x, vload(wp, w + 5 * W), e1)
        e2 = vfma(x, vload(wp, w + 6 * W), e2)
        e3 = vfma(x, vload(wp, w + 7 * W), e3)
        k += 2
    if k < K:
        w = wo + 4 * W * k
        x = vbroadcast(hf, h + k)
        a0 = vfma(x, vload(wp, w), a0)
        a1 = vfma(x, vload(wp, w + W), a1)
        a2 = vfma(x, vload(wp, w + 2 * W), a2)
        a3 = vfma(x, vload(wp, w + 3 * W), a3)
    vstore(g, o, vadd(a0, e0))
    vstore(g, o + H, vadd(a1, e1))
    vstore(g, o + 2 * H, vadd(a2, e2))
    vstore(g, o + 3 * H, vadd(a3, e3))


def panel_width(dtype) -> int:
    """Columns per panel of ``pack_panels``: 4 vectors."""
    return 4 * width(dtype)


def packable_panels(w) -> bool:
    """Whether products with w (D, N) suit the panel tiles: N a multiple of 4 vector
    widths."""
    return w.shape[1] > 0 and w.shape[1] % (4 * width(w.dtype)) == 0


@kernel
def pack_panels(wp, w):
    """wp = w (D, N) in panels of S = 4W of its columns: wp[(u·D + k)·S + v] = w[k, u·S + v],
    for products a (n, D) @ w (see ``panel_rows``). w may be any view (the backward carry
    packs W_hh as the transpose of W_hhᵀ)."""
    D, N = w.shape
    S = 4 * vwidth(wp)
    for u in range(N // S):
        for k in range(D):
            dst = wp[(u * D + k) * S:(u * D + k + 1) * S]
            src = w[k, u * S:u * S + S]
            for v in range(S):
                dst[v] = src[v]


@kernel
def rows4_carry(out, o0, o1, o2, o3, a, a0, a1, a2, a3, wp, wo, G, add):
    """For 4 rows r: out[o_r : o_r + 4W] = a[a_r : a_r + G] · (one panel of the packed
    weights, from wp[wo]; see ``pack_panels``), added to out's values if ``add``. All arrays
    flat; offsets in elements."""
    W = vwidth(out)
    z = vsplat(out, 0)
    c00, c01, c02, c03 = z, z, z, z
    c10, c11, c12, c13 = z, z, z, z
    c20, c21, c22, c23 = z, z, z, z
    c30, c31, c32, c33 = z, z, z, z
    if add:
        c00, c01, c02, c03 = (vload(out, o0), vload(out, o0 + W), vload(out, o0 + 2 * W),
                              vload(out, o0 + 3 * W))
        c10, c11, c12, c13 = (vload(out, o1), vload(out, o1 + W), vload(out, o1 + 2 * W),
                              vload(out, o1 + 3 * W))
        c20, c21, c22, c23 = (vload(out, o2), vload(out, o2 + W), vload(out, o2 + 2 * W),
                              vload(out, o2 + 3 * W))
        c30, c31, c32, c33 = (vload(out, o3), vload(out, o3 + W), vload(out, o3 + 2 * W),
                              vload(out, o3 + 3 * W))
    for k in range(G):
        w = wo + 4 * W * k
        w0 = vload(wp, w)
        w1 = vload(wp, w + W)
        w2 = vload(wp, w + 2 * W)
        w3 = vload(wp, w + 3 * W)
        x = vbroadcast(a, a0 + k)
        c00 = vfma(x, w0, c00)
        c01 = vfma(x, w1, c01)
        c02 = vfma(x, w2, c02)
        c03 = vfma(x, w3, c03)
        x = vbroadcast(a, a1 + k)
        c10 = vfma(x, w0, c10)
        c11 = vfma(x, w1, c11)
        c12 = vfma(x, w2, c12)
        c13 = vfma(x, w3, c13)
        x = vbroadcast(a, a2 + k)
        c20 = vfma(x, w0, c20)
        c21 = vfma(x, w1, c21)
        c22 = vfma(x, w2, c22)
        c23 = vfma(x, w3, c23)
        x = vbroadcast(a, a3 + k)
        c30 = vfma(x, w0, c30)
        c31 = vfma(x, w1, c31)
        c32 = vfma(x, w2, c32)
        c33 = vfma(x, w3, c33)
    vstore(out, o0, c00)
    vstore(out, o0 + W, c01)
    vstore(out, o0 + 2 * W, c02)
    vstore(out, o0 + 3 * W, c03)
    vstore(out, o1, c10)
    vstore(out, o1 + W, c11)
    vstore(out, o1 + 2 * W, c12)
    vstore(out, o1 + 3 * W, c13)
    vstore(out, o2, c20)
    vstore(out, o2 + W, c21)
    vstore(out, o2 + 2 * W, c22)
    vstore(out, o2 + 3 * W, c23)
    vstore(out, o3, c30)
    vstore(out, o3 + W, c31)
    vstore(out, o3 + 2 * W, c32)
    vstore(out, o3 + 3 * W, c33)


@kernel
def row_carry(out, o, a, a0, wp, wo, G, add):
    """``rows4_carry`` for one row, the sum split into even and odd k (as ``gates4_row``)."""
    W = vwidth(out)
    z = vsplat(out, 0)
    c0, c1, c2, c3 = z, z, z, z
    if add:
        c0, c1, c2, c3 = vload(out, o), vload(out, o + W), vload(out, o + 2 * W), vload(out, o + 3 * W)
    e0, e1, e2, e3 = z, z, z, z
    k = 0
    while k + 2 <= G:
        w = wo + 4 * W * k
        x = vbroadcast(a, a0 + k)
        c0 = vfma(x, vload(wp, w), c0)
        c1 = vfma(x, vload(wp, w + W), c1)
        c2 = vfma(x, vload(wp, w + 2 * W), c2)
        c3 = vfma(x, vload(wp, w + 3 * W), c3)
        x = vbroadcast(a, a0 + k + 1)
        e0 = vfma(x, vload(wp, w + 4 * W), e0)
        e1 = vfma(x, vload(wp, w + 5 * W), e1)
        e2 = vfma(x, vload(wp, w + 6 * W), e2)
        e3 = vfma(x, vload(wp, w + 7 * W), e3)
        k += 2
    if k < G:
        w = wo + 4 * W * k
        x = vbroadcast(a, a0 + k)
        c0 = vfma(x, vload(wp, w), c0)
        c1 = vfma(x, vload(wp, w + W), c1)
        c2 = vfma(x, vload(wp, w + 2 * W), c2)
        c3 = vfma(x, vload(wp, w + 3 * W), c3)
    vstore(out, o, vadd(c0, e0))
    vstore(out, o + W, vadd(c1, e1))
    vstore(out, o + 2 * W, vadd(c2, e2))
    vstore(out, o + 3 * W, vadd(c3, e3))


@kernel
def panel_rows(out, a, rows, n, wp, c0, c1, d0, d1, scatter):
    """out[o_i, c0:c1] = a[i, d0:d1] @ w[d0:d1, c0:c1] for i < n, where o_i = rows[i] if
    ``scatter`` else i, through w (D, N) packed by ``pack_panels``. out: (≥, N) and a: (≥n,
    D), C-contiguous; c0, c1: multiples of 4 vector widths."""
    N = out.shape[1]
    D = a.shape[1]
    S = 4 * vwidth(out)
    of = out.reshape(out.size)
    af = a.reshape(a.size)
    kc = depth_chunk(out)
    for u in range(c0 // S, c1 // S):
        for k0 in range(d0, d1, kc):
            m = min(kc, d1 - k0)
            wo = (u * D + k0) * S
            add = k0 > d0
            i = 0
            while i + 4 <= n:
                o0, o1, o2, o3 = i, i + 1, i + 2, i + 3
                if scatter:
                    o0, o1, o2, o3 = rows[i], rows[i + 1], rows[i + 2], rows[i + 3]
                rows4_carry(of, o0 * N + u * S, o1 * N + u * S, o2 * N + u * S, o3 * N + u * S,
                            af, i * D + k0, (i + 1) * D + k0, (i + 2) * D + k0,
                            (i + 3) * D + k0, wp, wo, m, add)
                i += 4
            for r in range(i, n):
                o = rows[r] if scatter else r
                row_carry(of, o * N + u * S, af, r * D + k0, wp, wo, m, add)
