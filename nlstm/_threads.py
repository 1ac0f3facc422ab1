"""nlstm's threads: its own workers for the recurrent kernels, and the BLAS pools.

The recurrent kernels release the GIL, and the rows of a batch are independent, so each
worker runs the whole sequence for its own range of rows (Numba's parallel pool is not
used: its parfors allocate on every call). ``set_num_threads`` sets how many, and the
BLAS thread count nlstm hands back to the user's own NumPy code.

The whole-sequence products (input projection, weight gradients, dx) run between kernel
calls, split the same way, by rows or gate columns over the workers (only when large
enough to gain from it), each calling NumPy's BLAS single-threaded.
They are not handed to a multi-threaded BLAS: OpenBLAS's idle threads spin for about
0.1 s after each threaded call, and on two cores that spinning took a core from the
recurrence that followed (L inference: 39-50 ms median against 28 ms with the spin cut
short by OPENBLAS_THREAD_TIMEOUT=4). Inside the kernels, per-step block products may call
BLAS too (Numba routes ``np.dot`` to SciPy's OpenBLAS). So every OpenBLAS in the process
runs single-threaded while nlstm works; every public call ends by giving BLAS back
nlstm's thread count, for the user's own NumPy code.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
from typing import Callable, Optional

import numba
import numpy as np

_num_threads = max(1, numba.config.NUMBA_NUM_THREADS)
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

# Below this many multiply-adds a whole-sequence product runs on the calling thread alone:
# handing half to a worker costs more than it saves (a 100×32 @ 32×256 projection took
# 0.4 ms threaded next to a busy core, 24 µs on one).
SMALL_GEMM = 8_000_000


def _set_blas_threads(n: int) -> None:
    global _blas_setters, _scanned_with_scipy, _blas_now
    if n == _blas_now and _scanned_with_scipy:  # the common case: nothing to do
        return
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


def restore_blas() -> None:
    """Give BLAS back nlstm's thread count; every public call ends with this."""
    _set_blas_threads(_num_threads)


# set_num_threads accepts up to this many threads per available CPU: a few more threads
# than CPUs can be measured (and Numba's own default may exceed a container's CPU quota),
# but every thread costs a worker and a scratch set in every workspace, and 10**6 of
# them took 15 s and 2.1 GB on the next tiny forward.
MAX_THREADS_PER_CPU = 4


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for nlstm's kernels and for NumPy's BLAS: an int from 1 to
    ``MAX_THREADS_PER_CPU`` (4) times the CPUs this process may run on."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"n must be an int, got {type(n).__name__} {n!r}")
    limit = MAX_THREADS_PER_CPU * cpus_available()
    if not 1 <= n <= limit:
        raise ValueError(f"n must be an int from 1 to {limit} ({MAX_THREADS_PER_CPU} per CPU "
                         f"available to this process), got {n}")
    _num_threads = int(n)
    _set_blas_threads(_num_threads)


def get_num_threads() -> int:
    """The number of threads nlstm uses."""
    return _num_threads


class _Worker:
    """A daemon thread with its own task queue, pinned to one CPU where the OS allows it.

    Each row range goes to its own worker, so two ranges never queue behind each other;
    pinning keeps the scheduler from waking a worker on a CPU that is already running the
    other range (measured: 2 threads took 5.6 ms median unpinned, 3.3 ms pinned, for a
    range pair that takes 6.1 ms on one thread).
    """

    def __init__(self, cpu):
        import queue
        import threading

        self.tasks = queue.SimpleQueue()
        self.cpu = cpu
        threading.Thread(target=self._loop, name="nlstm-worker", daemon=True).start()

    def _loop(self):
        if self.cpu is not None:
            try:
                os.sched_setaffinity(0, {self.cpu})  # this thread only
            except (AttributeError, OSError):
                pass
        while True:
            call, args, done = self.tasks.get()
            try:
                call(*args)
                done.put(None)
            except BaseException as e:  # handed to the caller, which re-raises it
                done.put(e)


_workers: list = []
# One parallel call at a time uses the workers, from its first part queued to its last part
# done. Calls from several Python threads then take turns instead of mixing their parts in
# the workers' queues (a unit-split call's parts wait for each other at spin barriers, so
# none may queue behind another call's) or growing the pool twice.
_pool_lock = threading.Lock()


def _forget_workers() -> None:
    """A forked child has none of the parent's threads: start fresh workers when needed
    (and a fresh lock, which a parent's thread may have held at the fork)."""
    global _pool_lock
    _workers.clear()
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


def _get_workers(n: int) -> list:
    if len(_workers) < n:
        try:
            cpus = sorted(os.sched_getaffinity(0))
        except AttributeError:
            cpus = []
        pin = os.environ.get("NLSTM_PIN_THREADS", "1") != "0" and len(cpus) >= n
        while len(_workers) < n:
            i = len(_workers)
            _workers.append(_Worker(cpus[i] if pin else None))
    return _workers[:n]


def run_rows(B: int, work: float, call: Callable[[int, int, int], None],
             min_work: Optional[float] = None, row_cost=None) -> None:
    """Run ``call(b0, b1, i)`` over disjoint row ranges of B rows, in parallel, with every
    BLAS single-threaded.

    ``work`` is the multiply-adds of the whole call; below ``min_work`` (default: the
    recurrence's ``_MIN_PARALLEL_WORK``) it stays serial, on the calling thread. Parallel
    ranges run on nlstm's workers while the caller waits. ``row_cost`` (B,), e.g. the
    rows' lengths, balances the ranges by cost instead of by count.
    """
    import queue

    n = min(_num_threads, B)
    if n <= 1 or work < (_MIN_PARALLEL_WORK if min_work is None else min_work):
        n = 1
    _set_blas_threads(1)
    if n == 1:
        call(0, B, 0)
        return
    bounds = [i * B // n for i in range(n + 1)]
    if row_cost is not None:
        before = np.concatenate(([0], np.cumsum(row_cost)))  # cost of rows [0, j)
        if before[-1] > 0:  # each cut where the cost before it is nearest i/n of the total
            bounds[1:n] = [int(np.abs(before - before[-1] * i / n).argmin()) for i in range(1, n)]
    done = queue.SimpleQueue()
    with _pool_lock:
        for i, worker in enumerate(_get_workers(n)):
            worker.tasks.put((call, (bounds[i], bounds[i + 1], i), done))
        _collect(done, n)


def cpus_available() -> int:
    """How many CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# The unit-split kernels' barrier (kernels/sync.py) emits x86's pause and calls sched_yield:
# built and measured on Linux x86-64 only; elsewhere one-row batches stay on one thread.
UNIT_SPLIT = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")


def _collect(done, n: int) -> None:
    """Wait for all n parts of a call, even through a KeyboardInterrupt (the parts keep
    writing the layer's buffers until they finish; returning early would let the next call
    race with them), then raise the interrupt or the first part's error."""
    errors, interrupt = [], None
    while n:
        try:
            e = done.get()
        except BaseException as exc:  # noqa: B036 - re-raised below, once every part is done
            interrupt = exc
            continue
        n -= 1
        if e is not None:
            errors.append(e)
    if interrupt is not None:
        raise interrupt
    if errors:
        raise errors[0]


def run_together(n: int, call: Callable[[int], None]) -> None:
    """Run ``call(part)`` for every part of n at the same time, each on its own worker (the
    parts of a unit-split kernel meet at spin barriers, so none may queue behind another),
    with every BLAS single-threaded."""
    import queue

    _set_blas_threads(1)
    done = queue.SimpleQueue()
    with _pool_lock:  # see _pool_lock
        for i, worker in enumerate(_get_workers(n)):
            worker.tasks.put((call, (i,), done))
        _collect(done, n)
