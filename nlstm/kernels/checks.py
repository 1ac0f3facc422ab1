"""The finiteness check of the arrays a call is given (x, dy), before any kernel reads them.

A sum of a·0 over the array is 0 when every element is finite and NaN when one is NaN or
±Inf (Inf·0 is NaN): one vectorised pass that reads each element once and writes nothing.
NumPy's ``isfinite(a).all()`` makes two passes and writes a temporary of a's size (at L, 3.2
MB of dy out of cache: 0.43 ms of a 55 ms training step). The fastmath flags the kernels
compile with leave out ``nnan`` and ``ninf``, so LLVM may not fold a·0 to 0.
"""
from .activations import cast_like
from .config import kernel
from .simd import wide
from .tuning import CHECK_CHUNK


@kernel
def nonfinite_part(c0, c1, a, found):
    """found[c0] = 1 if a (flat, C-contiguous) holds a NaN or an Inf in its chunks c0:c1 of
    ``CHECK_CHUNK`` elements, else 0: one part of a check split over threads by chunks."""
    wide()
    f = a.reshape(a.size)
    # a view from 0: its indices are known not to be negative (with an offset, the
    # wraparound of negative indices made LLVM gather each vector, 6x slower)
    g = f[c0 * CHECK_CHUNK:min(f.shape[0], c1 * CHECK_CHUNK)]
    acc = cast_like(f, 0)
    zero = cast_like(f, 0)
    for i in range(g.shape[0]):
        acc += g[i] * zero
    found[c0] = 0 if acc == 0 else 1
