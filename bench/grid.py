"""The benchmark grid of issue 3 (run for the LSTM, GRU and RNN), the problems built from it,
and their FLOP counts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Case:
    """One grid point. ``step``: a single streaming step, state carried between calls."""
    name: str
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    ragged: bool = False
    step: bool = False
    cell: str = "lstm"  # or "gru", "rnn": GRID is the LSTM's; bench.compare swaps the cell in

    @property
    def D(self) -> int:
        return 2 if self.bidirectional else 1

    def modes(self) -> tuple:
        return ("step",) if self.step else ("infer", "train")

    def describe(self) -> str:
        if self.step:
            return f"one step, B={self.B} I={self.I} H={self.H}"
        s = f"T={self.T} B={self.B} I={self.I} H={self.H}"
        if self.layers > 1 or self.bidirectional:
            s += f", {self.layers} layers" + (", bidirectional" if self.bidirectional else "")
        if self.ragged:
            s += ", lengths U(1..T)"
        return s


GRID = {c.name: c for c in [
    Case("S", 100, 1, 32, 64),
    Case("M", 100, 16, 64, 128),
    Case("L", 50, 64, 256, 256),
    Case("XL", 20, 128, 512, 512),
    Case("long", 4000, 1, 32, 128),
    Case("ragged", 200, 32, 64, 128, ragged=True),
    Case("step", 1, 1, 32, 128, step=True),
    Case("M-bi2", 100, 16, 64, 128, layers=2, bidirectional=True),
]}

# How many steps the agreement check of a step case feeds through each engine.
STEP_CHECK_STEPS = 8

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


@dataclass
class Problem:
    """A case made concrete: weights (PyTorch names, float32), inputs and lengths.

    x: (T, B, I); for a step case T is the number of steps the check feeds, and the
    timed call repeats x[0] with the state carried.
    """
    case: Case
    params: dict
    x: np.ndarray
    lengths: Optional[np.ndarray]
    extra: dict = field(default_factory=dict)

    @property
    def cell(self) -> str:
        return self.case.cell


def make_problem(case: Case, seed: int = 0, shrink: Optional[dict] = None) -> Problem:
    """Weights from nlstm's own initialiser (so they look like a real layer's) and N(0,1) input.

    ``shrink`` replaces sizes (e.g. ``{"T": 7, "B": 3}``) for the functional test.
    """
    import dataclasses

    import nlstm

    if shrink:
        case = dataclasses.replace(case, **shrink)
    rng = np.random.default_rng(seed)
    layer_cls = getattr(nlstm, case.cell.upper())
    model = layer_cls(case.I, case.H, num_layers=case.layers, bidirectional=case.bidirectional,
                      seed=seed)
    params = {k: np.ascontiguousarray(v, np.float32) for k, v in model.state_dict().items()}
    T = STEP_CHECK_STEPS if case.step else case.T
    x = rng.standard_normal((T, case.B, case.I)).astype(np.float32)
    lengths = None
    if case.ragged:
        lengths = rng.integers(1, case.T + 1, size=case.B).astype(np.int64)
    return Problem(case, params, x, lengths)


def flops(case: Case, mode: str, lengths=None) -> float:
    """Matrix-product FLOPs of one call (2 per multiply-add), the part BLAS could do.

    Forward: per layer and direction, x·W_ihᵀ and h·W_hhᵀ over every valid (t, b).
    Training adds the backward products dx, dW_ih, dh, dW_hh: twice the forward's.
    Pointwise gate work is left out (it is O(T·B·H), not O(T·B·H²)).
    A ragged case counts only the valid steps.
    """
    G = GATES[case.cell] * case.H
    rows = float(np.sum(lengths)) if lengths is not None else float(case.T * case.B)
    if case.step:
        rows = float(case.B)
    total = 0.0
    for k in range(case.layers):
        I = case.I if k == 0 else case.D * case.H
        total += case.D * 2.0 * rows * G * (I + case.H)
    return total * (3.0 if mode == "train" else 1.0)
