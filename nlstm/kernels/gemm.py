"""Direct BLAS gemm calls on sub-blocks of arrays, for the per-step products.

Numba's ``np.dot`` multiplies whole contiguous arrays: a product against big recurrent
weights then runs as one sgemm call, outside OpenBLAS's small-matrix path (M·N·K <= 10⁶),
and a column slice of the weights would be copied first. ``gemm_tiles`` calls the same
BLAS function (SciPy's, through ``numba_xxgemm``, the helper Numba's ``np.dot`` itself
calls, resolved by name so that the kernels stay cacheable; present since long before
Numba 0.59, the oldest we support) on rectangles of arrays given by element offsets and
row strides, so a big product can run as tiles that each stay in that path. The tests
check every path through it against NumPy and the float64 oracle.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .config import kernel

_FLOATS = (types.float32, types.float64)


@intrinsic
def _xxgemm(typingctx, ta, tb, m, n, k, a, a_off, lda, b, b_off, ldb, beta, c, c_off, ldc):
    """Column-major BLAS gemm: C = op(A)·op(B) + beta·C on the blocks of a, b, c that start
    at element offsets a_off, b_off, c_off with leading dimensions lda, ldb, ldc; ta, tb:
    ord('n') or ord('t')."""
    if not all(isinstance(t, types.Array) and t.dtype in _FLOATS for t in (a, b, c)) \
            or not a.dtype == b.dtype == c.dtype:
        return None
    if not all(isinstance(t, types.Integer) for t in (ta, tb, m, n, k, a_off, lda, b_off, ldb,
                                                         c_off, ldc)) \
            or not isinstance(beta, (types.Float, types.Integer)):
        return None
    dt = a.dtype
    sig = types.intc(ta, tb, m, n, k, a, a_off, lda, b, b_off, ldb, beta, c, c_off, ldc)

    def codegen(context, builder, sig, args):
        char = ir.IntType(8)
        intp = context.get_value_type(types.intp)
        voidp = cgutils.voidptr_t
        fnty = ir.FunctionType(ir.IntType(32), [char, char, char, intp, intp, intp, voidp,
                                                voidp, intp, voidp, intp, voidp, voidp, intp])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")

        def as_intp(i):
            return context.cast(builder, args[i], sig.args[i], types.intp)

        def as_char(i):
            return builder.trunc(as_intp(i), char)

        def block(i):  # pointer to array i's element at the offset in argument i + 1
            ary = context.make_array(sig.args[i])(context, builder, args[i])
            return builder.bitcast(builder.gep(ary.data, [as_intp(i + 1)]), voidp)

        alpha = cgutils.alloca_once_value(builder, context.get_constant(dt, 1.0))
        beta_slot = cgutils.alloca_once_value(
            builder, context.cast(builder, args[11], sig.args[11], dt))
        kind = ir.Constant(char, ord("s" if dt == types.float32 else "d"))
        return builder.call(fn, [kind, as_char(0), as_char(1), as_intp(2), as_intp(3),
                                 as_intp(4), builder.bitcast(alpha, voidp), block(5), as_intp(7),
                                 block(8), as_intp(10), builder.bitcast(beta_slot, voidp),
                                 block(12), as_intp(14)])
    return sig, codegen


@kernel
def _row_stride(a):
    """Elements from one row of a (2-D, contiguous rows) to the next: BLAS's leading
    dimension. A one-row array's first stride may be anything in NumPy (a (n, 1) array's
    transpose has stride 1), so there it is the row's length."""
    return a.strides[0] // a.itemsize if a.shape[0] > 1 else max(a.shape[1], 1)


@kernel
def gemm_tiles(out, a, w, n, carry, rows, cols):
    """out[:n] = a[:n] @ w, or with ``carry`` a[:n] @ wᵀ, as gemm calls on tiles of
    ``rows`` rows of a by ``cols`` columns of out. out, a, w: 2-D, rows contiguous;
    w: (K, G); out: (≥n, G), or (≥n, K) with ``carry``."""
    lda_a, ld_out, ld_w = _row_stride(a), _row_stride(out), _row_stride(w)
    K, G = w.shape
    width = K if carry else G  # columns of out
    depth = G if carry else K  # the summed dimension
    for i0 in range(0, n, rows):
        nr = min(rows, n - i0)
        for c0 in range(0, width, cols):
            nc = min(cols, width - c0)
            # Row-major out = a·w is column-major outᵀ = wᵀ·aᵀ: w's block is op(A), a's op(B).
            if carry:  # out[:, c0:] = a · w[c0:]ᵀ: w's rows c0.. as a transposed A
                _xxgemm(ord("t"), ord("n"), nc, nr, depth, w, c0 * ld_w, ld_w, a, i0 * lda_a,
                        lda_a, 0, out, i0 * ld_out + c0, ld_out)
            else:  # out[:, c0:] = a · w[:, c0:]
                _xxgemm(ord("n"), ord("n"), nc, nr, depth, w, c0, ld_w, a, i0 * lda_a, lda_a,
                        0, out, i0 * ld_out + c0, ld_out)


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


# ---- whole-sequence products of the backward pass, one thread's part each ---------------
# (where the panel tiles do not apply: see recurrent's _weight_grads and _input_grads)
# Each part is one BLAS call (single-threaded inside nlstm's calls) that adds into its own
# block of the output with beta = 1: no temporary, no copy of a column slice, and the parts
# write disjoint blocks, so they need no reduction (kernels/parallel.py runs them on nlstm's
# threads; a BLAS threaded next to the prange regions spun on the cores they needed).

@kernel
def weight_grad_cols(c0, c1, dg, dg_col, a, gw_t, gw_col):
    """gw_t[:, gw_col + c] += aᵀ · dg[:, dg_col + c] for c in c0:c1: one part's columns of
    a weight gradient. dg: (N, ≥dg_col + c1) gate gradients, a: (N, K) the product's
    other input, gw_t: (K, ≥gw_col + c1) the gradient transposed (its storage layout);
    all 2-D with contiguous rows."""
    N, K = a.shape
    # row-major gw_tᵀ[c, :] is column-major (G' × K): dgᵀ's columns (as stored) times a
    _xxgemm(ord("n"), ord("t"), c1 - c0, K, N, dg, dg_col + c0, _row_stride(dg), a, 0,
            _row_stride(a), 1, gw_t, gw_col + c0, _row_stride(gw_t))


@kernel
def input_grad_rows(r0, r1, dg, w_t, dx, beta):
    """dx[r0:r1] = dg[r0:r1] · w_tᵀ + beta·dx[r0:r1]: one part's rows of the input
    gradient. dg: (N, G), w_t: (I, G) the input weights as stored (W_ihᵀ), dx: (N, I); 2-D
    with contiguous rows."""
    I, G = w_t.shape
    ld_dg, ld_dx = _row_stride(dg), _row_stride(dx)
    _xxgemm(ord("t"), ord("n"), I, r1 - r0, G, w_t, 0, _row_stride(w_t), dg, r0 * ld_dg,
            ld_dg, beta, dx, r0 * ld_dx, ld_dx)


@kernel
def project_ragged(b0, b1, x, w, gates, bias, lengths):
    """gates[:L, b] = x[:L, b] · w (+ bias if not empty) for the rows b in b0:b1, L their
    lengths: each row's valid steps as one BLAS call on its strided steps, so the padding
    costs nothing. x: (T, B, I), w: (I, G), gates: (T, B, G), C-contiguous; bias: (G,)."""
    T, B, I = x.shape
    G = w.shape[1]
    for b in range(b0, b1):
        L = lengths[b]
        if L <= 0:
            continue
        # row-major (L × G) with row stride B·G is column-major (G × L): w's (G × I) · x's
        _xxgemm(ord("n"), ord("n"), G, L, I, w, 0, G, x, b * I, B * I, 0, gates, b * G, B * G)
        add_rows(gates[:, b], 0, L, bias)
