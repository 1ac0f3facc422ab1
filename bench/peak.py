"""``python -m bench.peak``: this machine's float32 FMA peak, one thread alone and every
thread at once, through the same SIMD vectors as nlstm's micro-kernels.

Each thread runs 12 independent chains of vector FMAs (enough to cover the FMA latency on
two FMA units) for a fixed count, in registers, with no memory traffic. Rates are
GFLOP/s (2 per lane per FMA), medians of repeated runs. If running both threads at once
gives each about half its solo rate, the two CPUs the OS sees share one core's FMA units
(SMT siblings, or one host core under a VM), and the machine's peak is one core's.

Then the read bandwidth of the caches, the bound of every B = 1 step (which streams W_hh
and does 2 FLOPs per 4 bytes read): each thread sums its own buffer of each size with
vector loads into 8 independent chains of adds, many times over, so the buffer stays in
the cache it fits (L1 for the smallest, L2 for the middle ones).

  python -m bench.peak              # 1 thread, then all of nlstm's threads at once
"""
from __future__ import annotations

import os as _os
import sys as _sys

if __name__ == "__main__" and not __package__:  # run as a file (PEP 366)
    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    __package__ = "bench"

import argparse
import time

import numpy as np
from numba import njit, prange

from nlstm.kernels.simd import vadd, vfma, vload, vsplat, vstore, vwidth, wide, width

ITERS = 20_000_000
SIZES_KB = (16, 64, 128, 256, 512)  # buffers for the bandwidth probe
READ_BYTES = 4 << 30  # read per size and thread, about a second at L2 rates


@njit(cache=True, nogil=True)
def _chains(out, n):
    """12 independent FMA chains, n steps each; their sum to out (so none is dropped)."""
    wide()
    x = vload(out, 0)
    y = vload(out, vwidth(out))
    a0 = a1 = a2 = a3 = a4 = a5 = vsplat(out, 0)
    b0 = b1 = b2 = b3 = b4 = b5 = vsplat(out, 0)
    for _ in range(n):
        a0 = vfma(x, y, a0)
        a1 = vfma(x, y, a1)
        a2 = vfma(x, y, a2)
        a3 = vfma(x, y, a3)
        a4 = vfma(x, y, a4)
        a5 = vfma(x, y, a5)
        b0 = vfma(x, y, b0)
        b1 = vfma(x, y, b1)
        b2 = vfma(x, y, b2)
        b3 = vfma(x, y, b3)
        b4 = vfma(x, y, b4)
        b5 = vfma(x, y, b5)
    vstore(out, 0, a0)
    vstore(out, vwidth(out), b0)
    s = 0.0
    for v in (a1, a2, a3, a4, a5, b1, b2, b3, b4, b5):
        vstore(out, 2 * vwidth(out), v)
        s += out[2 * vwidth(out)]
    return s


@njit(parallel=True, cache=True, nogil=True)
def _together(outs, n, sums):
    for i in prange(outs.shape[0]):
        sums[i] = _chains(outs[i], n)  # kept: a result nobody reads lets LLVM drop chains


@njit(cache=True, nogil=True)
def _read(buf, reps):
    """Sum buf (float32, a multiple of 8 vectors) reps times over with vector loads into 8
    independent chains of adds (the loads, not the adds' latency, set the rate)."""
    wide()
    W = vwidth(buf)
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = vsplat(buf, 0)
    for _ in range(reps):
        for i in range(0, buf.shape[0], 8 * W):
            a0 = vadd(a0, vload(buf, i))
            a1 = vadd(a1, vload(buf, i + W))
            a2 = vadd(a2, vload(buf, i + 2 * W))
            a3 = vadd(a3, vload(buf, i + 3 * W))
            a4 = vadd(a4, vload(buf, i + 4 * W))
            a5 = vadd(a5, vload(buf, i + 5 * W))
            a6 = vadd(a6, vload(buf, i + 6 * W))
            a7 = vadd(a7, vload(buf, i + 7 * W))
    out = np.empty(W, buf.dtype)
    s = 0.0
    for v in (a0, a1, a2, a3, a4, a5, a6, a7):
        vstore(out, 0, v)
        s += out[0]
    return s


@njit(parallel=True, cache=True, nogil=True)
def _read_together(bufs, reps, sums):
    for i in prange(bufs.shape[0]):
        sums[i] = _read(bufs[i], reps)  # kept (see _together)


def _alternate(solo_fn, both_fn, repeat: int) -> tuple:
    """Seconds of each of ``repeat`` calls of solo_fn and of both_fn, alternating."""
    solo, both = [], []
    for _ in range(repeat):
        for fn, out in ((solo_fn, solo), (both_fn, both)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return solo, both


def _bandwidth(n: int, repeat: int) -> None:
    """Print the read rate of each buffer size, 1 thread and n at once (GB/s)."""
    for kb in SIZES_KB:
        bufs = np.ones((n, kb * 256), np.float32)
        reps = max(1, READ_BYTES // (kb * 1024) // 4)
        sums = np.zeros(n)
        _read(bufs[0], 1)
        _read_together(bufs, 1, sums)
        solo, both = _alternate(lambda: _read(bufs[0], reps),
                                lambda: _read_together(bufs, reps, sums), repeat)
        b = kb * 1024 * reps / 1e9
        print(f"read {kb:>4} KB again and again: 1 thread {b / np.median(solo):.0f} GB/s "
              f"(best {b / min(solo):.0f}); {n} threads at once, each its own buffer, "
              f"{n * b / np.median(both):.0f} GB/s in all (best {n * b / min(both):.0f})")


def _rate(seconds: float, threads: int, lanes: int) -> float:
    return threads * ITERS * 12 * lanes * 2 / seconds / 1e9


def main(argv=None) -> None:
    import numba
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-bandwidth", action="store_true", help="the FMA peak only")
    a = ap.parse_args(argv)
    n = numba.get_num_threads()
    lanes = width(np.float32)
    outs = np.full((n, 3 * lanes), 0.5, np.float32)
    sums = np.zeros(n)
    _chains(outs[0], 10)
    _together(outs, 10, sums)
    solo, both = _alternate(lambda: _chains(outs[0], ITERS),
                            lambda: _together(outs, ITERS, sums), a.repeat)
    r1 = _rate(float(np.median(solo)), 1, lanes)
    rn = _rate(float(np.median(both)), n, lanes)
    print(f"float32 FMA peak, {lanes} lanes a vector: 1 thread {r1:.0f} GFLOP/s "
          f"(best {_rate(min(solo), 1, lanes):.0f}); {n} threads at once {rn:.0f} GFLOP/s "
          f"in all (best {_rate(min(both), n, lanes):.0f}), {rn / n / r1:.2f}x the solo rate "
          "each")
    if not a.no_bandwidth:
        _bandwidth(n, max(3, a.repeat // 2))


if __name__ == "__main__":
    main()
