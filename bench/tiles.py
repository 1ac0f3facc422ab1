"""``python -m bench.tiles``: nlstm's own micro-kernels against BLAS.

Times each cell on issue 3's grid twice in the same process, alternating call by call:
as shipped and with one use of the tiles switched off. ``--what steps`` (the default): the
per-step products and carries in ``kernels/tiles.py`` against the block products of
``kernels/blocks.py`` (SciPy's OpenBLAS and loops); ``--what projection``: the input
projection through the panel tiles (``tiles.project_panels``) against BLAS; ``--what
backward``: the backward's whole-sequence products (the weight gradients,
``tiles.weight_grad_panels``, and dx) through the panel tiles against BLAS, in training
(``--modes train``; inference does not run them). All use the same weights and data, and
their outputs (with ``backward``, the gradients too) are checked against each other
first. Run it under each OpenBLAS setting to see what the tiles change:

    python -m bench.tiles
    OPENBLAS_CORETYPE=Haswell python -m bench.tiles
    python -m bench.tiles --what projection --cases M,L,XL
    python -m bench.tiles --what backward --cases M,L,XL --modes train
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

CASES = {"S": (100, 1, 32, 64), "M": (100, 16, 64, 128), "L": (50, 64, 256, 256),
         "XL": (20, 128, 512, 512), "long": (4000, 1, 32, 128)}


def _switch(on: bool, what: str = "steps") -> None:
    """Tiles on (as shipped) or off (BLAS) for ``what``: the per-step products, the input
    projection or the backward's whole-sequence products."""
    import nlstm.recurrent as R
    from nlstm.kernels import tuning
    if what == "projection":
        tuning.PROJECT_ON_TILES = on
        return
    if what == "backward":
        tuning.BACKWARD_ON_TILES = on
        return
    if not hasattr(_switch, "real"):
        _switch.real = (R.RecurrentLayer._packed_gates, R.RecurrentLayer._panels_fit)
    if on:
        R.RecurrentLayer._packed_gates, R.RecurrentLayer._panels_fit = _switch.real
    else:
        R.RecurrentLayer._packed_gates = lambda self, *a: self._no_pack
        R.RecurrentLayer._panels_fit = lambda self: False


def _time(cell: str, case: str, mode: str, seconds: float, what: str) -> tuple:
    import nlstm
    T, B, I, H = CASES[case]
    m = getattr(nlstm, cell)(I, H, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    dy = np.ones((T, B, H), np.float32)

    def run():
        if mode == "train":
            y = m.forward(x, train=True)[0]
            m.backward(dy)
        else:
            y = m(x)[0]
        return y

    outs = []
    for on in (True, False):
        _switch(on, what)
        m.zero_grad()
        outs.append([run()] + ([g.copy() for g in m.grads.values()] if mode == "train" else []))
    for a, b in zip(*outs):  # y, then each gradient
        tol = 1e-4 * max(1.0, float(np.abs(b).max()))
        if not np.allclose(a, b, rtol=1e-4, atol=tol):
            raise SystemExit(f"{cell} {case} {mode}: tiles and BLAS disagree ({what})")
    on_t, off_t = [], []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(on_t) < 5:
        for on, out in ((True, on_t), (False, off_t)):
            _switch(on, what)
            t0 = time.perf_counter()
            run()
            out.append(time.perf_counter() - t0)
    _switch(True, what)
    return float(np.median(on_t)), float(np.median(off_t)), len(on_t)


def _fmt(s: float) -> str:
    return f"{s * 1e6:.0f} µs" if s < 1e-3 else f"{s * 1e3:.3g} ms"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="LSTM,GRU,RNN")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--modes", default="infer,train")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0, help="per case and mode")
    ap.add_argument("--what", choices=("steps", "projection", "backward"), default="steps")
    args = ap.parse_args(argv)
    import nlstm
    nlstm.set_num_threads(args.threads)
    from nlstm.kernels import simd
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    print(f"# bench.tiles: {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"float32, vector width {simd.target_vector_bits()} bits, "
          f"{env or 'no OPENBLAS_* variable'}; medians, tiles and BLAS alternating "
          f"({args.what})")
    print("| cell | case | mode | tiles | BLAS | tiles / BLAS |")
    print("|---|---|---|---|---|---|")
    for cell in args.cells.split(","):
        for case in args.cases.split(","):
            for mode in args.modes.split(","):
                on, off, n = _time(cell, case, mode, args.seconds, args.what)
                print(f"| {cell} | {case} | {mode} | {_fmt(on)} | {_fmt(off)} | {on / off:.2f}x |",
                      flush=True)


if __name__ == "__main__":
    main()
