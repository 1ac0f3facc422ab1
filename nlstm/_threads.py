"""nlstm's threads: Numba's, through ``prange``, and the BLAS pools left as found.

**Threads.** The rows of a batch are independent, so a recurrent kernel runs each part of
the batch's rows on its own thread, the whole time loop inside (``kernels/parallel.py``:
``@njit(parallel=True)`` drivers over the row-range kernels). How many threads is Numba's
count: ``nlstm.set_num_threads`` sets ``numba.set_num_threads`` (after nlstm's checks),
``nlstm.get_num_threads`` is ``numba.get_num_threads``, and ``NUMBA_NUM_THREADS`` sets the
default and the ceiling. Numba keeps that count per calling thread: a count set in one
Python thread does not reach another, which starts at the default. Below
``tuning.MIN_PARALLEL_WORK`` a call runs on the calling thread alone, as a plain compiled
call.

**Threading layer.** Numba chooses it, as its docs say, unless the user did
(``NUMBA_THREADING_LAYER`` or ``numba.config.THREADING_LAYER``); nlstm never changes that
process-wide choice. Numba's default order is tbb, then omp, then workqueue. The decision:

- tbb and omp are safe when several Python threads call at once: nlstm runs on them freely.
  Numba's tbb layer needs ``libtbb.so.12`` on the loader's path: a pip-installed ``tbb``
  in a virtual environment puts it in ``<venv>/lib``, where Numba does not find it, so
  nlstm does not depend on tbb; omp (Numba's wheels link the system's GNU libgomp) is the
  layer on such machines, this one included; without libgomp Numba falls back to workqueue.
- workqueue aborts the process when two threads launch parallel regions at once, so
  nlstm's parallel regions take turns under one process-wide lock there (never an
  abort, never a hang; a user's own concurrent ``prange`` code is beyond nlstm's reach).
- GNU OpenMP is not fork-safe: Numba terminates a forked child that launches a parallel
  region after its parent started the omp layer. So in a child forked after the layer
  started, nlstm runs every call on the calling thread (multiprocessing pools keep working).

**The unit split** (one batch row's hidden units over several threads, meeting at spin
barriers) must have every part running at once or it deadlocks. Numba's omp layer runs a
region as ``#pragma omp parallel num_threads(n)`` + ``omp for`` (static schedule) over the
scheduler's n chunks, and with fewer iterations than threads each chunk holds one iteration:
every part gets its own team thread, and every Python thread its own team. The workqueue
layer queues chunk i to worker i (and nlstm's lock keeps regions apart). tbb promises
neither (a task arena may run every chunk on the calling thread when its workers are busy
with other arenas), so under tbb a one-row batch runs on one thread. (``OMP_DYNAMIC=true``
or an ``OMP_THREAD_LIMIT`` below nlstm's count would shrink omp's team: the split is off
then too.)

**BLAS.** The process's BLAS thread counts, as threadpoolctl reports them, are the same
after every nlstm call as before it, errors included: while any nlstm call runs, every
BLAS library loaded in the process runs single-threaded (the small whole-sequence products
are NumPy calls between the parallel regions); the first call in saves the counts, the
last call out puts them back. No compiled kernel calls BLAS: the big whole-sequence
products (the input projection, and in backward the weight gradients and dx) run on
nlstm's panel tiles (``kernels.tiles``), split over nlstm's threads. A threaded BLAS there
lost: OpenBLAS's idle threads spin after a threaded call, and on two cores that spinning
took a core from the prange region that followed (M inference 8.0 ms against 3.0 ms
single-threaded).

nlstm pins no thread to a CPU.
"""
from __future__ import annotations

import os
import platform
import sys
import threading
from contextlib import nullcontext
from typing import Optional

import numba
import numpy as np

from .kernels import tuning

# set_num_threads accepts up to this many threads per available CPU (within Numba's own
# ceiling, NUMBA_NUM_THREADS): every thread costs a scratch set in every workspace.
MAX_THREADS_PER_CPU = 4

get_num_threads = numba.get_num_threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for nlstm's kernels in the calling thread: Numba's thread count
    (``numba.set_num_threads``), an int from 1 to the smaller of ``NUMBA_NUM_THREADS`` and
    ``MAX_THREADS_PER_CPU`` (4) times the CPUs this process may run on."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"n must be an int, got {type(n).__name__} {n!r}")
    limit = min(MAX_THREADS_PER_CPU * cpus_available(), numba.config.NUMBA_NUM_THREADS)
    if not 1 <= n <= limit:
        raise ValueError(f"n must be an int from 1 to {limit} (NUMBA_NUM_THREADS is "
                         f"{numba.config.NUMBA_NUM_THREADS}; at most {MAX_THREADS_PER_CPU} per "
                         f"CPU available to this process), got {n}")
    numba.set_num_threads(int(n))


def cpus_available() -> int:
    """How many CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# The unit-split kernels' barrier (kernels/sync.py) emits x86's pause and calls sched_yield:
# built and measured on Linux x86-64 only; elsewhere one-row batches stay on one thread.
UNIT_SPLIT = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")


# ---- the threading layer -----------------------------------------------------------------

_layer: Optional[str] = None  # Numba's threading layer once started
_region_lock = nullcontext()  # a process-wide lock on the workqueue layer (see the doc)
_serial_only = False  # a child forked from a process running GNU OpenMP


_start_lock = threading.Lock()


def _start_layer() -> str:
    """Start Numba's threading layer (as its first parallel call would) and note which."""
    global _layer, _region_lock
    if _layer is None:
        with _start_lock:  # two first calls at once must not make two region locks
            if _layer is None:
                from numba.np.ufunc import parallel
                parallel._launch_threads()
                layer = numba.threading_layer()
                if layer == "workqueue":
                    _region_lock = threading.Lock()
                _layer = layer
    return _layer


def _gnu_omp() -> bool:
    try:
        from numba.np.ufunc import omppool
        return omppool.openmp_vendor == "GNU"
    except (ImportError, AttributeError):
        return True  # unknown: treat as not fork-safe


def _after_fork_in_child() -> None:
    """Fresh locks (a parent's thread may have held one at the fork); no omp regions in a
    child of a process that started GNU OpenMP (see the module doc)."""
    global _serial_only, _region_lock, _start_lock
    _start_lock = threading.Lock()
    try:  # started by nlstm, or by anything else (numba.get_num_threads starts it)
        layer = numba.threading_layer()
    except ValueError:
        layer = None
    if layer == "omp" and _gnu_omp():
        _serial_only = True  # and in this child's own children
    if _layer == "workqueue":
        _region_lock = threading.Lock()
    global _blas_lock, _blas_users, _blas_saved
    _blas_lock, _blas_users, _blas_saved = threading.Lock(), 0, []


def _omp_team_is_full() -> bool:
    """Whether an omp team gets every thread asked for (see the module doc)."""
    if os.environ.get("OMP_DYNAMIC", "").strip().lower() in ("true", "1", "yes"):
        return False
    limit = os.environ.get("OMP_THREAD_LIMIT", "").strip()
    return not limit.isdigit() or int(limit) >= numba.config.NUMBA_NUM_THREADS


def unit_split_allowed() -> bool:
    """Whether one row's hidden units may split over threads that meet at spin barriers:
    only where every part is sure to get its own thread at once (see the module doc)."""
    if not UNIT_SPLIT or _serial_only:
        return False
    layer = _start_layer()
    return layer == "workqueue" or (layer == "omp" and _omp_team_is_full())


_local = threading.local()  # .any_size: run_rows splits even small calls (warmup)


class split_any_size:
    """Within: this thread's ``run_rows`` calls split however small (``nlstm.warmup``
    compiles the parallel drivers on a tiny input)."""

    def __enter__(self):
        _local.any_size = True

    def __exit__(self, *exc):
        _local.any_size = False
        return False


def parts_for(B: int, work: float, min_work: Optional[float] = None) -> int:
    """How many threads share B rows of ``work`` multiply-adds: 1 (the calling thread
    alone) below ``min_work``, in a forked GNU OpenMP child, or with one thread."""
    least = tuning.MIN_PARALLEL_WORK if min_work is None else min_work
    if work < least and not getattr(_local, "any_size", False):
        return 1  # decided before asking Numba for the thread count (0.65 µs a call)
    n = min(numba.get_num_threads(), B)
    if n <= 1 or _serial_only:
        return 1
    _start_layer()
    return n


_even_bounds: dict = {}  # (B, n) -> row_bounds(B, n), read by the drivers, never written


def row_bounds(B: int, n: int, row_cost=None) -> np.ndarray:
    """n + 1 cuts of B rows into n ranges: by count, or with ``row_cost`` (B,), e.g. the
    rows' lengths, each cut where the cost before it is nearest i/n of the total."""
    if row_cost is None:
        # kept: cutting anew costs 1.6 µs of NumPy, with lengths as costs 6.1 (six calls a
        # training step)
        bounds = _even_bounds.get((B, n))
        if bounds is None:
            bounds = np.arange(n + 1, dtype=np.int64) * B // n
            if len(_even_bounds) < 256:
                _even_bounds[(B, n)] = bounds
        return bounds
    bounds = np.arange(n + 1, dtype=np.int64) * B // n
    before = np.concatenate(([0], np.cumsum(row_cost)))  # cost of rows [0, j)
    if before[-1] > 0:
        for i in range(1, n):
            bounds[i] = np.abs(before - before[-1] * i / n).argmin()
    return bounds


def run_rows(B: int, work: float, split, args: tuple, parts: list, stacked: tuple,
             row_cost=None, min_work: Optional[float] = None, n: Optional[int] = None) -> None:
    """Run the batched kernel ``split`` (a ``kernels.parallel.Split``) over B rows: on the
    calling thread below ``min_work`` (default ``tuning.MIN_PARALLEL_WORK``) multiply-adds of
    ``work``, else over Numba's threads, rows balanced by ``row_cost``. ``parts[i]``: part
    i's scratch tuple, views of ``stacked`` (a tuple of (parts, ...) arrays, as many parts
    as threads). ``n``: ``parts_for(B, work, min_work)`` if the caller already asked it
    (to size its parts), else asked here."""
    if n is None:
        n = parts_for(B, work, min_work)
    if n == 1:
        split.serial(0, B, *args, *parts[0])
        return
    bounds = row_bounds(B, n, row_cost)
    with _region_lock:
        split.parallel(bounds, args, stacked)


def run_units(n: int, split, args: tuple) -> None:
    """Run every part of a unit-split kernel ``split`` at once, n parts, one per thread
    (callers check ``unit_split_allowed`` and n <= the thread count first)."""
    with _region_lock:
        split.parallel(n, args)


# ---- BLAS --------------------------------------------------------------------------------

_blas_lock = threading.Lock()
_blas_users = 0  # nlstm calls in progress, in any thread
_blas_saved: list = []  # [(library, its thread count before the first call)]
_blas_libs: Optional[list] = None  # the BLAS libraries loaded (_Blas)


class _Blas:
    """One BLAS library's thread-count getter and setter, from threadpoolctl's controller.

    For a pthreads OpenBLAS they are its own C functions: threadpoolctl's setter there
    (3.8) obeys only the first Python thread that set a count while it lives, so an nlstm
    call from a worker thread would silence the user's later ``threadpool_limits`` in
    another (and it costs a few µs of Python per call). Elsewhere, threadpoolctl's."""

    def __init__(self, c):
        self.get, self.set = c.get_num_threads, c.set_num_threads
        symbol = getattr(c, "_get_symbol", None)
        if symbol is not None and c.internal_api == "openblas" \
                and getattr(c, "threading_layer", None) == "pthreads":
            get, set_ = symbol("openblas_get_num_threads"), symbol("openblas_set_num_threads")
            if get is not None and set_ is not None:
                self.get, self.set = get, set_


def _libraries() -> list:
    """The BLAS libraries loaded in this process, as threadpoolctl finds them at nlstm's
    first call (NumPy's, the one nlstm calls, is loaded by then)."""
    global _blas_libs
    if _blas_libs is None:
        from threadpoolctl import ThreadpoolController
        _blas_libs = [_Blas(c) for c in ThreadpoolController().lib_controllers
                      if c.user_api == "blas"]
    return _blas_libs


class _SingleThreadedBlas:
    """While any nlstm call is inside, every BLAS library runs one thread; the last call
    out restores what the first call in found. Reentrant and thread-safe."""

    def __enter__(self):
        global _blas_users, _blas_saved
        with _blas_lock:
            _blas_users += 1
            if _blas_users == 1:
                saved = []
                for lib in _libraries():
                    n = lib.get()
                    if n is not None and n != 1:
                        lib.set(1)
                        saved.append((lib, n))
                _blas_saved = saved

    def __exit__(self, *exc):
        global _blas_users, _blas_saved
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for lib, n in _blas_saved:
                    lib.set(n)
                _blas_saved = []
        return False


single_threaded_blas = _SingleThreadedBlas()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
