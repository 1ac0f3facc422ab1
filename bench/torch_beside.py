"""``python -m bench.torch_beside``: torch's LSTM timed in one process before and after
nlstm started Numba's threading layer (Numba's omp layer loads the system's GNU OpenMP,
torch carries its own): does nlstm's presence slow torch down? torch is imported before
Numba's layer starts, as ``bench.compare`` does: imported after it, torch binds to the
system's libgomp.so.1 and its small regions slow down 100x and more (bench/RESULTS.md,
stop 28).

    python -m bench.torch_beside
    NUMBA_THREADING_LAYER=workqueue python -m bench.torch_beside
"""
from __future__ import annotations

import os as _os
import sys as _sys

if __name__ == "__main__" and not __package__:  # run as a file (PEP 366)
    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    __package__ = "bench"

import time

import numpy as np


def _median_ms(fn, n: int = 30) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def main() -> None:
    import numba
    import torch
    import nlstm
    torch.set_num_threads(2)
    T, B, I, H = 100, 16, 64, 128  # the grid's M
    peer = torch.nn.LSTM(I, H)
    x = torch.randn(T, B, I)
    m = nlstm.LSTM(I, H, seed=0)
    xn = x.numpy()

    def run_torch():
        with torch.no_grad():
            peer(x)

    _median_ms(run_torch, 5)
    before = _median_ms(run_torch)
    mine = _median_ms(lambda: m(xn))
    after = _median_ms(run_torch)
    mine2 = _median_ms(lambda: m(xn))
    after2 = _median_ms(run_torch)
    print(f"layer={numba.threading_layer()}: torch before nlstm {before:.2f} ms; nlstm "
          f"{mine:.2f} ms; torch after {after:.2f} ms; nlstm {mine2:.2f} ms; torch {after2:.2f} ms")


if __name__ == "__main__":
    main()
