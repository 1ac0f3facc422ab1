"""``python -m bench.peak``: this machine's float32 FMA peak, one thread alone and every
thread at once, through the same SIMD vectors as nlstm's micro-kernels.

Each thread runs 12 independent chains of vector FMAs (enough to cover the FMA latency on
two FMA units) for a fixed count, in registers, with no memory traffic. Rates are
GFLOP/s (2 per lane per FMA), medians of repeated runs. If running both threads at once
gives each about half its solo rate, the two CPUs the OS sees share one core's FMA units
(SMT siblings, or one host core under a VM), and the machine's peak is one core's.

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

from nlstm.kernels.simd import vfma, vload, vsplat, vstore, vwidth, wide, width

ITERS = 20_000_000


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
def _together(outs, n):
    for i in prange(outs.shape[0]):
        _chains(outs[i], n)


def _rate(seconds: float, threads: int, lanes: int) -> float:
    return threads * ITERS * 12 * lanes * 2 / seconds / 1e9


def main(argv=None) -> None:
    import numba
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args(argv)
    n = numba.get_num_threads()
    lanes = width(np.float32)
    outs = np.full((n, 3 * lanes), 0.5, np.float32)
    _chains(outs[0], 10)
    _together(outs, 10)
    solo, both = [], []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        _chains(outs[0], ITERS)
        solo.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _together(outs, ITERS)
        both.append(time.perf_counter() - t0)
    r1 = _rate(float(np.median(solo)), 1, lanes)
    rn = _rate(float(np.median(both)), n, lanes)
    print(f"float32 FMA peak, {lanes} lanes a vector: 1 thread {r1:.0f} GFLOP/s "
          f"(best {_rate(min(solo), 1, lanes):.0f}); {n} threads at once {rn:.0f} GFLOP/s "
          f"in all (best {_rate(min(both), n, lanes):.0f}), {rn / n / r1:.2f}x the solo rate "
          "each")


if __name__ == "__main__":
    main()
