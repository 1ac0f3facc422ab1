"""``nlstm.warmup()``: compile, or load from the on-disk cache, the kernels a program will
use, before its first real call."""
from __future__ import annotations

import time
from typing import Iterable

import numpy as np


def warmup(cells: Iterable[str] = ("LSTM",), dtypes: Iterable = ("float32",),
           training: bool = False, streaming: bool = True) -> float:
    """Run each cell once on a tiny input so that its kernels are compiled (first run ever)
    or loaded from the cache (later runs). Returns the seconds it took.

    cells: names among "LSTM", "GRU", "RNN"; dtypes: float32 and/or float64;
    training: also the backward kernels; streaming: also the one-step kernels.
    Kernels compile lazily anyway: this only moves the cost to a moment you choose.
    """
    import nlstm

    start = time.perf_counter()
    for name in cells:
        cls = getattr(nlstm, name, None)
        if cls is None or not isinstance(cls, type) or not issubclass(cls, nlstm.RecurrentLayer):
            raise ValueError(f"cells must name recurrent layers (LSTM, GRU, RNN), got {name!r}")
        for dtype in dtypes:
            layer = cls(2, 2, dtype=dtype, seed=0)
            x = np.zeros((2, 1, 2), layer.dtype)
            layer.forward(x, train=training)
            if training:
                layer.backward(np.zeros((2, 1, 2), layer.dtype))
            if streaming:
                layer.step(x[0])
    return time.perf_counter() - start
