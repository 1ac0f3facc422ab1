"""The one place where nlstm's compilation policy lives.

Every kernel is compiled lazily (on the first call with a new signature), cached on
disk, and uses the same fastmath flags. ``nnan``/``ninf`` are left out so that NaN and
Inf still propagate as IEEE says; the flags kept allow reassociation and FMA contraction,
which is what lets LLVM vectorise the gate loops and the dot products.
"""
import numba

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})


def kernel(fn=None, *, parallel: bool = False):
    """``numba.njit`` with nlstm's policy: cached, nogil, fastmath without nnan/ninf."""

    def wrap(f):
        return numba.njit(
            cache=True,
            nogil=True,
            fastmath=set(FASTMATH),
            parallel=parallel,
            error_model="numpy",
            boundscheck=False,
        )(f)

    return wrap(fn) if fn is not None else wrap
