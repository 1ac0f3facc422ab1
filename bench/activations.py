"""``python -m bench.activations``: what ONNX's clip and non-default activations cost.

A layer with its cell's default functions (σ and tanh; tanh or relu for the RNN) keeps the
vectorised kernels; clip or any other function takes the general path (one ``act`` call
per element, pre-activations saved for backward). This measures, per cell and mode, the
general path against the default layer with the same weights and data, in the same run:

  default     the cell's default functions (the fast path)
  general=    the default functions spelled so that the general path runs them
              (ScaledTanh(1, 1) is tanh; Affine(1, 0) on nothing) — the path's own cost
  hard        a typical non-default model: HardSigmoid gates (Keras 3), the rest default
  clip        clip=1 with the default functions (ONNX's clip)

Modes: ``infer`` (forward), ``train`` (forward + backward), ``step`` (one streaming step,
B = 1). Outputs of ``general=`` are checked against ``default`` before anything is timed.
Prints a table of times and ratios to ``default``; ``--out DIR`` also writes
``activations.json``. ``--quick`` runs a tiny configuration (for CI / a smoke check).
"""
from __future__ import annotations

import os as _os
import sys as _sys

if __name__ == "__main__" and not __package__:  # run as a file: bench/activations.py (PEP 366)
    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    __package__ = "bench"

import argparse
import json
import os
from typing import Dict

import numpy as np

from .timing import time_chunked

# cell -> variant -> layer keyword arguments
VARIANTS = {
    "LSTM": {"default": {},
             "general=": dict(activations=("Sigmoid", "ScaledTanh", "Tanh"),
                              activation_alpha=[1.0], activation_beta=[1.0]),
             "hard": dict(activations=("HardSigmoid", "Tanh", "Tanh"),
                          activation_alpha=[1 / 6], activation_beta=[0.5]),
             "clip": dict(clip=1.0)},
    "GRU": {"default": {},
            "general=": dict(activations=("Sigmoid", "ScaledTanh"), activation_alpha=[1.0],
                             activation_beta=[1.0]),
            "hard": dict(activations=("HardSigmoid", "Tanh"), activation_alpha=[1 / 6],
                         activation_beta=[0.5]),
            "clip": dict(clip=1.0)},
    "RNN": {"default": {},
            "general=": dict(activations=("ScaledTanh",), activation_alpha=[1.0],
                             activation_beta=[1.0]),
            "hard": dict(activations=("Softsign",)),
            "clip": dict(clip=1.0)},
}
# (T, B, I, H) per size
SIZES = {"quick": (8, 2, 8, 16), "S": (50, 8, 32, 64), "M": (100, 32, 128, 256),
         "B1": (100, 1, 64, 128)}


def runners(cell: str, size, mode: str, seed: int = 0) -> Dict[str, object]:
    """One callable per variant, all with the same weights and data; checks ``general=``
    against ``default`` first (AssertionError if they differ)."""
    import nlstm

    T, B, I, H = size
    rng = np.random.default_rng(seed)
    cls = getattr(nlstm, cell)
    layers = {v: cls(I, H, seed=seed, **kw) for v, kw in VARIANTS[cell].items()}
    base = layers["default"].state_dict()
    for layer in layers.values():
        layer.load_state_dict(base)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    ref = layers["default"](x)[0]
    np.testing.assert_allclose(layers["general="](x)[0], ref, rtol=1e-5, atol=1e-6,
                               err_msg=f"{cell}: general path != default")
    out = {}
    for v, layer in layers.items():
        if mode == "infer":
            out[v] = lambda layer=layer: layer(x)
        elif mode == "train":
            dy = rng.standard_normal(ref.shape).astype(np.float32)

            def train(layer=layer, dy=dy):
                layer.forward(x, train=True)
                layer.backward(dy)
            out[v] = train
        else:  # step
            s = layer.stream()
            x1 = x[0, 0].copy()
            out[v] = lambda s=s, x1=x1: s(x1)
    return out


def run(sizes, modes, cells, repeat: int, chunk_s: float) -> list:
    rows = []
    for cell in cells:
        for size_name in sizes:
            for mode in modes:
                if mode == "step" and size_name not in ("quick", "B1"):
                    continue
                stats = time_chunked(runners(cell, SIZES[size_name], mode), repeat=repeat,
                                     chunk_s=chunk_s)
                base = stats["default"].median
                for v, st in stats.items():
                    rows.append(dict(cell=cell, size=size_name, mode=mode, variant=v,
                                     median_us=st.median * 1e6, ratio=st.median / base,
                                     contended_chunks=st.contended_chunks))
                print(f"{cell:4} {size_name:5} {mode:5} " + "  ".join(
                    f"{v} {stats[v].median * 1e6:9.1f} µs ({stats[v].median / base:4.2f}x)"
                    for v in stats), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tiny configuration (smoke check)")
    ap.add_argument("--sizes", default="S,M,B1", help=f"of {sorted(SIZES)}")
    ap.add_argument("--modes", default="infer,train,step")
    ap.add_argument("--cells", default="LSTM,GRU,RNN")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None, help="directory for activations.json")
    a = ap.parse_args(argv)
    sizes = ["quick"] if a.quick else a.sizes.split(",")
    repeat, chunk_s = (1, 0.05) if a.quick else (a.repeat, 0.3)
    rows = run(sizes, a.modes.split(","), a.cells.split(","), repeat, chunk_s)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "activations.json"), "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
