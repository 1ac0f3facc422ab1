"""``python -m bench.tiles``: nlstm's per-step micro-kernels against its plain loops.

Times each cell on issue 3's grid twice in the same process, alternating call by call:
as shipped and with the per-step tiles switched off. ``--what steps`` (the only choice
left): the per-step products and carries in ``kernels/tiles.py`` against the block
products of ``kernels/blocks.py`` (plain loops: no compiled kernel calls BLAS). The
whole-sequence products run the same way in both (the panel tiles, or one NumPy matmul
below ``tuning.SMALL_GEMM``). Both use the same weights and data, and their outputs (in
training, the gradients too) are checked against each other first.

    python -m bench.tiles
    python -m bench.tiles --cases M,L,XL --modes train
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np

CASES = {"S": (100, 1, 32, 64), "M": (100, 16, 64, 128), "L": (50, 64, 256, 256),
         "XL": (20, 128, 512, 512), "long": (4000, 1, 32, 128)}


def _switch(on: bool) -> None:
    """The per-step tiles on (as shipped) or off (the loops of ``kernels/blocks.py``): the
    forward's packed gates and panels, and the backward carry's panels."""
    import nlstm.recurrent as R
    L = R.RecurrentLayer
    if not hasattr(_switch, "real"):
        _switch.real = (L._packed_gates, L._packed_panels, L._panels_fit)
    if on:
        L._packed_gates, L._packed_panels, L._panels_fit = _switch.real
    else:
        panels = _switch.real[1]
        L._packed_gates = lambda self, *a: self._no_pack
        L._packed_panels = lambda self, k, d, w, use: (  # the per-step uses only
            self._no_pack if use in ("forward", "carry") else panels(self, k, d, w, use))
        L._panels_fit = lambda self: False


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
        _switch(on)
        m.zero_grad()
        outs.append([run()] + ([g.copy() for g in m.grads.values()] if mode == "train" else []))
    for a, b in zip(*outs):  # y, then each gradient
        tol = 1e-4 * max(1.0, float(np.abs(b).max()))
        if not np.allclose(a, b, rtol=1e-4, atol=tol):
            raise SystemExit(f"{cell} {case} {mode}: tiles and loops disagree ({what})")
    on_t, off_t = [], []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(on_t) < 5:
        for on, out in ((True, on_t), (False, off_t)):
            _switch(on)
            t0 = time.perf_counter()
            run()
            out.append(time.perf_counter() - t0)
    _switch(True)
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
    ap.add_argument("--what", choices=("steps",), default="steps",
                    help="what to switch off: the per-step tiles (the only choice)")
    args = ap.parse_args(argv)
    import nlstm
    nlstm.set_num_threads(args.threads)
    from nlstm.kernels import simd
    print(f"# bench.tiles: {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"float32, vector width {simd.target_vector_bits()} bits; medians, tiles and loops "
          f"alternating ({args.what})")
    print("| cell | case | mode | tiles | loops | tiles / loops |")
    print("|---|---|---|---|---|---|")
    for cell in args.cells.split(","):
        for case in args.cases.split(","):
            for mode in args.modes.split(","):
                on, off, n = _time(cell, case, mode, args.seconds, args.what)
                print(f"| {cell} | {case} | {mode} | {_fmt(on)} | {_fmt(off)} | {on / off:.2f}x |",
                      flush=True)


if __name__ == "__main__":
    main()
