"""Explicit SIMD vectors for the register-blocked micro-kernels (``nlstm.kernels.tiles``).

A ``Vec`` is an LLVM vector value (``<W x float>``): kept in a local variable it lives in
a register, so a tile of accumulators stays in registers for a whole dot-product loop,
which plain loops over arrays cannot promise (LLVM reloads and stores them through memory
when it cannot prove the output does not alias the inputs).

The width W is the number of elements of the target's widest vector registers, read from
the features Numba compiles for (not from the CPU's name): 512 bits with AVX-512, 256 with
AVX/AVX2, else 128 (NEON, SSE). (``NUMBA_CPU_NAME=haswell`` alone keeps the host's features;
an AVX2 machine's code needs ``NUMBA_CPU_FEATURES`` too, see ``tests/test_tiles.py``.)
Functions that use these vectors also get LLVM's ``min-legal-vector-width`` and
``prefer-vector-width`` raised to that width: LLVM's tuning for several Intel CPUs
otherwise prefers 256-bit vectors and would split every 512-bit one in two.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

_TARGET = None


def _target() -> tuple:
    """(vector bits, vector registers) of the target Numba compiles for, read from its
    features and architecture (not from the CPU's name): AVX-512 has 32 registers of 512
    bits; AVX and AVX2 16 of 256; AArch64 32 of 128 (NEON); other targets (x86 without
    AVX) 16 of 128."""
    global _TARGET
    if _TARGET is None:
        import platform
        from numba.core.registry import cpu_target
        codegen = cpu_target.target_context.codegen()
        features = set((getattr(codegen, "_tm_features", "") or "").split(","))
        if "+avx512f" in features:
            _TARGET = (512, 32)
        elif "+avx" in features:
            _TARGET = (256, 16)
        elif platform.machine().lower() in ("aarch64", "arm64"):
            _TARGET = (128, 32)
        else:
            _TARGET = (128, 16)
    return _TARGET


def target_vector_bits() -> int:
    """The width of the target's vector registers: 512 with AVX-512, 256 with AVX, else
    128."""
    return _target()[0]


def target_vector_registers() -> int:
    """How many vector registers the target has (32 or 16): how many accumulators a tile
    can keep (``tiles.tile_rows4``)."""
    return _target()[1]


def width(dtype) -> int:
    """Elements of ``dtype`` (float32 or float64) per vector register."""
    import numpy as np
    return target_vector_bits() // (8 * np.dtype(dtype).itemsize)


class Vec(types.Type):
    """A SIMD vector of ``count`` elements of ``dtype``."""

    def __init__(self, dtype, count):
        self.dtype, self.count = dtype, count
        super().__init__(name=f"Vec({dtype} x {count})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        elem = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(elem, fe_type.count))


def _vec_of(dtype):
    return Vec(dtype, target_vector_bits() // dtype.bitwidth)


def _widen(builder):
    """Let LLVM use the full vector width in the function being built."""
    bits = str(target_vector_bits())
    attrs = builder.function.attributes
    # llvmlite only accepts its list of attribute names; these two are LLVM string
    # attributes, written out as they are.
    set.add(attrs, f'"min-legal-vector-width"="{bits}"')
    set.add(attrs, f'"prefer-vector-width"="{bits}"')


def _element_pointer(context, builder, aty, ary, ity, i):
    a = context.make_array(aty)(context, builder, ary)
    return builder.gep(a.data, [context.cast(builder, i, ity, types.intp)])


def _float_array(a):
    # C layout: the intrinsics address flat elements from the data pointer
    return isinstance(a, types.Array) and isinstance(a.dtype, types.Float) and a.layout == "C"


@intrinsic
def vload(typingctx, a, i):
    """The vector at flat element i of the C-contiguous array a (any alignment)."""
    if not (_float_array(a) and isinstance(i, types.Integer)):
        return None
    vt = _vec_of(a.dtype)

    def codegen(context, builder, sig, args):
        _widen(builder)
        p = _element_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        vp = builder.bitcast(p, context.get_value_type(vt).as_pointer())
        return builder.load(vp, align=a.dtype.bitwidth // 8)
    return vt(a, i), codegen


@intrinsic
def vstore(typingctx, a, i, v):
    """Store the vector v at flat element i of the C-contiguous array a."""
    if not (_float_array(a) and isinstance(i, types.Integer) and isinstance(v, Vec)
            and v.dtype == a.dtype):
        return None

    def codegen(context, builder, sig, args):
        p = _element_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        vp = builder.bitcast(p, context.get_value_type(sig.args[2]).as_pointer())
        builder.store(args[2], vp, align=a.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.void(a, i, v), codegen


def _lanes_below(builder, count, m, mty):
    """The mask <count x i1> of the lanes j < m (m: an integer of Numba type mty)."""
    i64 = ir.IntType(64)
    iota = ir.Constant(ir.VectorType(i64, count), list(range(count)))
    mv = builder.sext(m, i64) if mty.bitwidth < 64 else m
    undef = ir.Constant(ir.VectorType(i64, count), ir.Undefined)
    v = builder.insert_element(undef, mv, ir.Constant(ir.IntType(32), 0))
    splat = builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(ir.IntType(32), count),
                                                         [0] * count))
    return builder.icmp_signed("<", iota, splat)


def _masked_name(op, vt):
    # the typed-pointer name, which LLVMs with opaque pointers accept as well (see prefetch)
    return f"llvm.masked.{op}.v{vt.count}f{vt.dtype.bitwidth}.p0v{vt.count}f{vt.dtype.bitwidth}"


@intrinsic
def vload_first(typingctx, a, i, m):
    """The vector at flat element i of the C-contiguous array a with only its first m lanes
    read (m <= 0: none, m >= the width: all), the others zero: a vector that may run past
    the array's end (a panel's last, partial columns) without touching memory there."""
    if not (_float_array(a) and isinstance(i, types.Integer) and isinstance(m, types.Integer)):
        return None
    vt = _vec_of(a.dtype)

    def codegen(context, builder, sig, args):
        _widen(builder)
        llvt = context.get_value_type(vt)
        p = _element_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        vp = builder.bitcast(p, llvt.as_pointer())
        mask = _lanes_below(builder, vt.count, args[2], sig.args[2])
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(llvt, [vp.type, ir.IntType(32), mask.type, llvt]),
            _masked_name("load", vt))
        zero = ir.Constant(llvt, [0.0] * vt.count)
        return builder.call(fn, [vp, ir.Constant(ir.IntType(32), a.dtype.bitwidth // 8), mask,
                                 zero])
    return vt(a, i, m), codegen


@intrinsic
def vstore_first(typingctx, a, i, v, m):
    """Store the first m lanes of the vector v at flat element i of the C-contiguous array
    a (m <= 0: none, m >= the width: all); memory past them is not touched."""
    if not (_float_array(a) and isinstance(i, types.Integer) and isinstance(v, Vec)
            and v.dtype == a.dtype and isinstance(m, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        llvt = context.get_value_type(sig.args[2])
        p = _element_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        vp = builder.bitcast(p, llvt.as_pointer())
        mask = _lanes_below(builder, v.count, args[3], sig.args[3])
        fn = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [llvt, vp.type, ir.IntType(32), mask.type]),
            _masked_name("store", v))
        builder.call(fn, [args[2], vp, ir.Constant(ir.IntType(32), a.dtype.bitwidth // 8),
                          mask])
        return context.get_dummy_value()
    return types.void(a, i, v, m), codegen


@intrinsic
def vsplat(typingctx, a, x):
    """A vector of a's dtype with every element x."""
    if not (_float_array(a) and isinstance(x, (types.Float, types.Integer))):
        return None
    vt = _vec_of(a.dtype)

    def codegen(context, builder, sig, args):
        llvt = context.get_value_type(vt)
        s = context.cast(builder, args[1], sig.args[1], vt.dtype)
        undef = ir.Constant(llvt, ir.Undefined)
        v = builder.insert_element(undef, s, ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), vt.count), [0] * vt.count)
        return builder.shuffle_vector(v, undef, mask)
    return vt(a, x), codegen


@intrinsic
def vfma(typingctx, x, y, acc):
    """x * y + acc, element by element, as one fused multiply-add."""
    if not (isinstance(x, Vec) and x == y == acc):
        return None

    def codegen(context, builder, sig, args):
        vt = context.get_value_type(sig.return_type)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vt, [vt, vt, vt]),
            f"llvm.fma.v{x.count}f{x.dtype.bitwidth}")
        return builder.call(fn, list(args))
    return x(x, y, acc), codegen


@intrinsic
def vadd(typingctx, x, y):
    """x + y, element by element."""
    if not (isinstance(x, Vec) and x == y):
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])
    return x(x, y), codegen


@intrinsic
def vsub(typingctx, x, y):
    """x - y, element by element."""
    if not (isinstance(x, Vec) and x == y):
        return None

    def codegen(context, builder, sig, args):
        return builder.fsub(args[0], args[1])
    return x(x, y), codegen


@intrinsic
def vsum(typingctx, x):
    """The sum of x's elements, in a fixed order (halves added pairwise down to one), so the
    same in every caller whatever LLVM's reassociation does with loops around it."""
    if not isinstance(x, Vec):
        return None

    def codegen(context, builder, sig, args):
        v, n = args[0], x.count
        i32 = ir.IntType(32)
        while n > 1:
            n //= 2
            lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, n), list(range(n))))
            hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, n),
                                                          list(range(n, 2 * n))))
            v = builder.fadd(lo, hi)
        return builder.extract_element(v, ir.Constant(i32, 0))
    return x.dtype(x), codegen


@intrinsic
def vwidth(typingctx, a):
    """The number of elements of a's dtype per vector (a constant)."""
    if not _float_array(a):
        return None
    n = _vec_of(a.dtype).count

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, n)
    return types.intp(a), codegen



@intrinsic
def vregisters(typingctx, a):
    """How many vector registers the target has (a constant; see target_vector_registers)."""
    if not _float_array(a):
        return None
    n = target_vector_registers()

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, n)
    return types.intp(a), codegen


@intrinsic
def wide(typingctx):
    """Let LLVM vectorise the calling function at the target's full vector width (see the
    module docstring); a no-op at run time."""
    def codegen(context, builder, sig, args):
        _widen(builder)
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def vbroadcast(typingctx, a, i):
    """A vector with every element a's flat element i (one load, no index wraparound)."""
    if not (_float_array(a) and isinstance(i, types.Integer)):
        return None
    vt = _vec_of(a.dtype)

    def codegen(context, builder, sig, args):
        p = _element_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        s = builder.load(p, align=a.dtype.bitwidth // 8)
        llvt = context.get_value_type(vt)
        undef = ir.Constant(llvt, ir.Undefined)
        v = builder.insert_element(undef, s, ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), vt.count), [0] * vt.count)
        return builder.shuffle_vector(v, undef, mask)
    return vt(a, i), codegen


@intrinsic
def prefetch(typingctx, a, i):
    """Ask the caches for the line holding a's flat element i, without waiting for it
    (``llvm.prefetch``: a read, kept in every level). Never faults, whatever the address;
    a no-op on targets without such an instruction."""
    if not (_float_array(a) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        p = _element_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        i8p = builder.bitcast(p, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        # (address, read, keep in all levels, data); the typed-pointer name, which LLVMs with
        # opaque pointers accept as well
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32]),
            "llvm.prefetch.p0i8")
        builder.call(fn, [i8p, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(a, i), codegen
