"""A streaming step's fixed arguments as one table of addresses and values.

A stream calls its step kernel's compiled entry point with the same arrays every call (its
state buffers, the layer's weights and scratch); unboxing each array costs the entry point
about 30 ns, as much as a few hundred multiply-adds of the step. ``encode`` turns those
arguments into one int64 table, taken once; a ``*_step_table`` kernel turns the rows back
into the arrays (views of the same memory: no copy, no reference count) and calls the step.

Row i of the table (n, 4) is argument i: an array as (address, its shape, padded with 0),
a bool or int as (value, 0, 0, 0), a float as (its float64 bits, 0, 0, 0: ``bits_of`` and
``float_of_bits``, which ``sync`` sends floats with too). Whoever holds a table must hold
its arrays too: the table alone keeps nothing alive.
"""
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from llvmlite import ir

from .config import inlined_kernel


def encode(args, dtype):
    """The table of ``args`` (arrays of ``dtype``, C-contiguous, at most 3-D; bools, ints,
    floats), or None if one is not of those kinds."""
    rows = []
    for a in args:
        if isinstance(a, np.ndarray):
            if a.dtype != dtype or not a.flags.c_contiguous or a.ndim > 3:
                return None
            rows.append([a.ctypes.data, *a.shape, *(0,) * (3 - a.ndim)])
        elif isinstance(a, (bool, np.bool_, int, np.integer)):
            rows.append([int(a), 0, 0, 0])
        elif isinstance(a, (float, np.floating)):
            rows.append([int(np.float64(a).view(np.int64)), 0, 0, 0])
        else:
            return None
    return np.array(rows, np.int64).reshape(len(rows), 4)


def _view(ndim):
    """An intrinsic ``f(t, i, like)``: row i of table t as a C-contiguous ndim-D array of
    ``like``'s dtype over the memory at its address. (An intrinsic, not a function: with
    reference counts off, Numba rejects a function returning an array it did not get.)"""
    @intrinsic
    def view(typingctx, t, i, like):
        if not (isinstance(t, types.Array) and t.dtype == types.int64 and t.ndim == 2
                and isinstance(i, types.Integer) and isinstance(like, types.Array)):
            return None
        out = types.Array(like.dtype, ndim, "C")

        def codegen(context, builder, sig, args):
            tab = context.make_array(sig.args[0])(context, builder, args[0])
            row = context.cast(builder, args[1], sig.args[1], types.intp)

            def field(c):
                at = cgutils.get_item_pointer(context, builder, sig.args[0], tab,
                                              [row, context.get_constant(types.intp, c)])
                return builder.load(at)
            shape = [field(1 + d) for d in range(ndim)]
            itemsize = context.get_constant(types.intp, context.get_abi_sizeof(
                context.get_data_type(out.dtype)))
            strides, step = [], itemsize
            for d in reversed(range(ndim)):
                strides.insert(0, step)
                step = builder.mul(step, shape[d])
            data = builder.inttoptr(field(0), context.get_data_type(out.dtype).as_pointer())
            a = context.make_array(out)(context, builder)
            context.populate_array(a, data=data, shape=shape, strides=strides,
                                   itemsize=itemsize, meminfo=None)
            return a._getvalue()
        return out(t, i, like), codegen
    return view


array1 = _view(1)
array2 = _view(2)
array3 = _view(3)


@intrinsic
def bits_of(typingctx, x):
    """The bits of the float64 x as an int64."""
    if x != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(x), codegen


@intrinsic
def float_of_bits(typingctx, i):
    """The float64 whose bits are the int64 i."""
    if i != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(i), codegen


@inlined_kernel
def flag(t, i):
    """Row i as a bool."""
    return t[i, 0] != 0


@inlined_kernel
def number(t, i, like):
    """Row i (a float) as a scalar of ``like``'s dtype."""
    return like.dtype.type(float_of_bits(t[i, 0]))
