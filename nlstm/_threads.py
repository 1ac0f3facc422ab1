"""nlstm's threads: one pool for the recurrent kernels, and the BLAS pool behind NumPy.

The recurrent kernels release the GIL, and the rows of a batch are independent, so
each thread runs the whole sequence for its own range of rows. The large products run
in NumPy's BLAS between kernel calls, never at the same time as the kernels, so only
one pool is busy at a time. ``set_num_threads`` sets both.

Inside the kernels, per-step block products may call BLAS too (Numba routes ``np.dot``
to SciPy's OpenBLAS). There the parallelism is already the row ranges, so every OpenBLAS
in the process runs single-threaded while kernels run, and gets its thread count back
afterwards.
"""
from __future__ import annotations

import ctypes
import os
import sys
from typing import Callable

import numba

_num_threads = max(1, numba.config.NUMBA_NUM_THREADS)
_pool = None  # a concurrent.futures.ThreadPoolExecutor, made on first parallel use
_blas_setters: list | None = None

# Below this much recurrent work (multiply-adds) a second thread costs more than it saves.
_MIN_PARALLEL_WORK = 1_000_000


def _find_blas_setters() -> list:
    """The ``*_set_num_threads`` functions of the OpenBLAS libraries loaded in this process.

    Read from /proc/self/maps, as threadpoolctl does; nlstm keeps its runtime dependencies
    to NumPy and Numba (and SciPy's BLAS, through Numba).
    """
    names = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
             "openblas_set_num_threads64_", "openblas_set_num_threads")
    setters, seen = [], set()
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:  # not Linux: leave BLAS to its own defaults
        return setters
    for path in sorted(paths):
        if path in seen or not os.path.exists(path):
            continue
        seen.add(path)
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                setters.append(fn)
                break
    return setters


_scanned_with_scipy = False
_blas_now = 0  # the thread count nlstm last gave the BLAS libraries (0: not set yet)

# Below this many multiply-adds a BLAS call runs on one thread: waking a second thread
# costs more than it saves (a 100×32 @ 32×256 projection took 0.4 ms threaded next to a
# busy core, 24 µs on one).
SMALL_GEMM = 8_000_000


def _set_blas_threads(n: int) -> None:
    global _blas_setters, _scanned_with_scipy, _blas_now
    # SciPy's OpenBLAS is loaded late (when Numba first links np.dot): look again once then.
    scipy_loaded = "scipy.linalg.cython_blas" in sys.modules
    if _blas_setters is None or (scipy_loaded and not _scanned_with_scipy):
        _blas_setters = _find_blas_setters()
        _scanned_with_scipy = scipy_loaded
        _blas_now = 0
    if n != _blas_now:
        for setter in _blas_setters:
            setter(n)
        _blas_now = n


def blas_for(macs: float) -> None:
    """Give BLAS the threads a product of ``macs`` multiply-adds is worth."""
    _set_blas_threads(1 if macs < SMALL_GEMM else _num_threads)


def restore_blas() -> None:
    """Give BLAS back nlstm's thread count; every public call ends with this."""
    _set_blas_threads(_num_threads)


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for nlstm's kernels and for NumPy's BLAS."""
    global _num_threads, _pool
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    _num_threads = n
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    if _pool is not None and _pool._max_workers < n - 1:
        _pool.shutdown(wait=True)
        _pool = None
    _set_blas_threads(n)


def get_num_threads() -> int:
    """The number of threads nlstm uses."""
    return _num_threads


def run_rows(B: int, work: float, call: Callable[[int, int, int], None]) -> None:
    """Run ``call(b0, b1, i)`` over disjoint row ranges of a batch of B rows, in parallel.

    ``work`` is the recurrent multiply-adds of the whole call; small jobs stay serial.
    """
    global _pool
    n = min(_num_threads, B)
    if n <= 1 or work < _MIN_PARALLEL_WORK:
        n = 1
    _set_blas_threads(1)
    futures = []
    try:
        if n == 1:
            call(0, B, 0)
            return
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor  # imported late: start-up time
            _pool = ThreadPoolExecutor(max_workers=max(1, _num_threads - 1),
                                       thread_name_prefix="nlstm")
        futures = [_pool.submit(call, i * B // n, (i + 1) * B // n, i) for i in range(1, n)]
        call(0, B // n, 0)
    finally:
        for f in futures:  # even when our own range raised: no kernel may outlive the call
            f.result()
