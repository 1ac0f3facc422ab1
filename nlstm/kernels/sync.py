"""A spin barrier between the threads of one kernel call, for threads sharing one batch
row's time steps (see ``lstm_units.lstm_forward_units``).

A part may send a few values with its barrier (``barrier_sending``, ``received``): they
go in its counter's cache line, stored before the counter, so the other parts get them
with the line they wait on instead of fetching a second line from the other core after
the barrier (a bare barrier's round trip between the two vCPUs measured 0.24 µs).

Each part owns one int64 counter, padded to its own cache line in ``flags``: it stores
how many barriers it has passed (release), and waits until every other part has passed as
many (acquire). Counters only grow during a call, so no reset is needed between barriers;
the layer zeroes ``flags`` before each call. Numba has no atomics, so the loads and stores
are LLVM atomics emitted here. A waiting thread spins with ``pause`` and yields its CPU
after a while, so a part descheduled by the OS does not leave the other spinning through a
whole time slice. x86-64 Linux only (``pause``, ``sched_yield``): the layers split one-row
batches only there (``nlstm._threads.UNIT_SPLIT``).
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .config import kernel
from .table import bits_of, float_of_bits
from .tuning import CACHE_LINE_BYTES, SPINS_BEFORE_YIELD

# int64 slots between two parts' counters: one cache line each (no false sharing).
STRIDE = CACHE_LINE_BYTES // 8
# pairs of values a part can send with its barrier (after its counter, in its line)
SLOTS = (STRIDE - 1) // 2


def _slot_pointer(context, builder, sig, args):
    """The address of flags[i] (flags: int64 array, i: any integer)."""
    ary = context.make_array(sig.args[0])(context, builder, args[0])
    i = context.cast(builder, args[1], sig.args[1], types.intp)
    return cgutils.get_item_pointer(context, builder, sig.args[0], ary, [i])


def _int64_flags(flags, *ints):
    return (isinstance(flags, types.Array) and flags.dtype == types.int64 and flags.ndim == 1
            and all(isinstance(t, types.Integer) for t in ints))


@intrinsic
def _load_acquire(typingctx, flags, i):
    if not _int64_flags(flags, i):
        return None

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_slot_pointer(context, builder, sig, args), "acquire", 8)
    return types.int64(flags, i), codegen


@intrinsic
def _store_release(typingctx, flags, i, value):
    if not _int64_flags(flags, i, value):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(v, _slot_pointer(context, builder, sig, args), "release", 8)
        return context.get_dummy_value()
    return types.void(flags, i, value), codegen


@intrinsic
def _pause(typingctx):
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                            "llvm.x86.sse2.pause")
        builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def _sched_yield(typingctx):
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                            "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@kernel
def barrier(flags, part, parts, count):
    """Pass barrier number ``count`` (1, 2, ...): publish it, then wait for the other parts.
    flags: (parts·STRIDE,) int64, zeroed before the call's first barrier."""
    _store_release(flags, part * STRIDE, count)
    for other in range(parts):
        if other == part:
            continue
        spins = 0
        while _load_acquire(flags, other * STRIDE) < count:
            if spins < SPINS_BEFORE_YIELD:
                _pause()
                spins += 1
            else:
                _sched_yield()


@kernel
def barrier_sending(flags, part, parts, count, slot, a, b):
    """``barrier``, sending the floats a and b (float32 or float64: exact in float64) as
    this part's pair ``slot`` (< SLOTS). A part may send a slot again only after one more
    barrier has passed (every part reads what it received before its next barrier)."""
    i = part * STRIDE + 1 + 2 * slot
    flags[i] = bits_of(np.float64(a))
    flags[i + 1] = bits_of(np.float64(b))
    barrier(flags, part, parts, count)


@kernel
def received(flags, part, slot):
    """The pair ``slot`` that ``part`` sent with its last ``barrier_sending``, as float64."""
    i = part * STRIDE + 1 + 2 * slot
    return float_of_bits(flags[i]), float_of_bits(flags[i + 1])
