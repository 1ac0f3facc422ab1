"""``nlstm.warmup()``: compile, or load from the on-disk cache, the kernels a program will
use, before its first real call."""
from __future__ import annotations

import time
from typing import Iterable, Tuple

import numpy as np


class WarmupReport(float):
    """What ``warmup()`` did: a float (the seconds it took, as before) that also says what
    compiled. ``compiled``: ((kernel, dtypes, seconds), ...) for each kernel Numba compiled
    (empty when everything loaded from the cache); ``compile_seconds``: their total."""

    compiled: Tuple[Tuple[str, str, float], ...]

    def __new__(cls, seconds: float, compiled=()):
        self = super().__new__(cls, seconds)
        self.compiled = tuple(compiled)
        return self

    @property
    def seconds(self) -> float:
        return float(self)

    @property
    def compile_seconds(self) -> float:
        return float(sum(s for _, _, s in self.compiled))

    def __str__(self) -> str:
        if not self.compiled:
            return f"warmup took {float(self):.2f} s; every kernel came from the cache (or was already loaded)"
        names = ", ".join(f"{k} ({d})" if d else k for k, d, _ in self.compiled)
        return (f"warmup took {float(self):.1f} s, {self.compile_seconds:.1f} s of it compiling "
                f"{len(self.compiled)} kernel{'s' * (len(self.compiled) != 1)} (once per machine "
                f"and nlstm version): {names}")

    def __repr__(self) -> str:
        return f"WarmupReport(seconds={float(self):.3f}, compiled={list(self.compiled)!r})"


def compiled_since(mark: int) -> list:
    """The kernels compiled in this process after ``len(nlstm.kernels.config.compiled)`` was ``mark``."""
    from .kernels import config

    return list(config.compiled[mark:])


def compile_mark() -> int:
    from .kernels import config

    return len(config.compiled)


def warmup(cells: Iterable[str] = ("LSTM",), dtypes: Iterable = ("float32",),
           training: bool = False, streaming: bool = True) -> WarmupReport:
    """Run each cell once on a tiny input so that its kernels are compiled (first run ever)
    or loaded from the cache (later runs).

    cells: names among "LSTM", "GRU", "RNN"; dtypes: float32 and/or float64;
    training: also the backward kernels; streaming: also the one-step kernels. Besides the
    tiny calls, one call per cell and dtype has sizes that suit nlstm's tiles (tens of
    MFLOP), whose own kernels only such calls run. Kernels compile lazily anyway: this only
    moves the cost to a moment you choose.

    Returns a WarmupReport: a float, the seconds it took, whose ``compiled`` lists each
    kernel compiled with its dtypes and seconds (empty when all came from the cache) and
    whose str() says so in a sentence.
    """
    import nlstm
    from . import _threads

    start, mark = time.perf_counter(), compile_mark()
    cells, dtypes = tuple(cells), tuple(dtypes)  # iterated more than once
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
            # a batch of rows takes other kernels than a one-row batch (see LSTM._forward_dir)
            layer.forward(np.zeros((2, 2, 2), layer.dtype), train=training)
            if training:
                layer.backward(np.zeros((2, 2, 2), layer.dtype))
            if nlstm.get_num_threads() > 1:  # the drivers that split a batch over threads
                with _threads.split_any_size():
                    layer.forward(np.zeros((2, 2, 2), layer.dtype), train=training)
                    if training:
                        layer.backward(np.zeros((2, 2, 2), layer.dtype))
            if streaming:  # step passes the arrays, a stream one table of them (Stream)
                layer.step(x[0])
                layer.stream(batch_size=1)(x[0])
            _tile_call(cls, dtype, training)
    return WarmupReport(time.perf_counter() - start, compiled_since(mark))


def _tile_call(cls, dtype, training: bool) -> None:
    """One call of a cell whose sizes suit the panel tiles (input and hidden size one panel
    wide) with an input projection past ``tuning.SMALL_GEMM``, so that what only such calls
    run (the projection's panel driver, the packing of the weights) compiles here too: after
    a warmup on tiny sizes alone, the first LSTM call at H = 128 still compiled for 7 s."""
    from .kernels import tiles, tuning

    S = tiles.panel_width(np.dtype(dtype))
    layer = cls(S, S, dtype=dtype, seed=0)
    B = 8
    T = -(-tuning.SMALL_GEMM // (S * layer._G * S * B))  # rows · I · gate columns ≥ SMALL_GEMM
    layer.forward(np.zeros((T, B, S), layer.dtype), train=training)
    if training:
        layer.backward(np.zeros((T, B, layer.output_size), layer.dtype))
