"""``python -m nlstm``: a self-check that runs a forward and a backward pass on random data
and compares them with a float64 run of the same layer."""
from __future__ import annotations

import sys
import time

import numpy as np


def selfcheck() -> int:
    import nlstm

    T, B, I, H, L = 50, 8, 16, 32, 2
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = rng.integers(1, T + 1, B)
    dy = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    m32 = nlstm.LSTM(I, H, num_layers=L, bidirectional=True, seed=0)
    m64 = nlstm.LSTM(I, H, num_layers=L, bidirectional=True, dtype=np.float64)
    m64.load_state_dict(m32.state_dict())

    t0 = time.perf_counter()
    m32.forward(x, lengths=lengths)
    m32.backward(dy)
    first = time.perf_counter() - t0
    m32.zero_grad()
    t0 = time.perf_counter()
    y, (h, c) = m32.forward(x, lengths=lengths)
    dx, (dh0, dc0) = m32.backward(dy)
    warm = time.perf_counter() - t0
    y64, _ = m64.forward(x, lengths=lengths)
    dx64, _ = m64.backward(dy)

    print(f"nlstm {nlstm.__version__}: {m32!r}, T={T} B={B}, {nlstm.get_num_threads()} threads")
    print(f"  y {y.shape}  h_n {h.shape}  c_n {c.shape}  dx {dx.shape}  dh0 {dh0.shape}")
    print(f"  forward+backward: first call {first * 1e3:.1f} ms (includes compile or cache load), "
          f"then {warm * 1e3:.2f} ms")
    worst = 0.0
    rows = [("y", y, y64), ("dx", dx, dx64)] + [(k, m32.grads[k], m64.grads[k]) for k in m32.grads]
    for name, a, b in rows:
        worst = max(worst, float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30)))
    ok = worst < 1e-4
    print(f"  float32 vs float64: largest relative difference over y, dx and {len(m32.grads)} "
          f"parameter gradients = {worst:.2e} -> {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    return selfcheck()


if __name__ == "__main__":
    sys.exit(main())
