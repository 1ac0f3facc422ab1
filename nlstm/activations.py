"""ONNX's activation functions for the recurrent cells: names, codes, default parameters and
the per-layer ``activations=`` option.

A layer's ``activations`` lists the cell's activation functions in ONNX's order and with
ONNX's names: (f, g, h) for the LSTM (gates, cell input, cell output; default
("Sigmoid", "Tanh", "Tanh")), (f, g) for the GRU (default ("Sigmoid", "Tanh")), (f,) for
the RNN (default ("Tanh",)). A bidirectional layer may give one list for both directions
or, as ONNX does, the forward list followed by the reverse one. ``activation_alpha`` and
``activation_beta`` are consumed in order by the functions that take them (as ONNX
Runtime reads the attributes of the same names); a function left without one gets ONNX's
default for its operator.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

# Index = the kernels' code (nlstm.kernels.activations).
NAMES = ("Sigmoid", "Tanh", "Relu", "Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh",
         "HardSigmoid", "Elu", "Softsign", "Softplus")
# (alpha, beta) defaults of the functions that take them: those of the ONNX operators of the
# same name (Affine, ScaledTanh: the ONNX operators' alpha = 1, beta = 0 and alpha = beta = 1,
# the identity-like choice; ONNX Runtime reads 0 for an absent Affine, ScaledTanh or
# ThresholdedRelu parameter, so give those explicitly when a model must match it).
DEFAULTS = {"Affine": (1.0, 0.0), "LeakyRelu": (0.01, None), "ThresholdedRelu": (1.0, None),
            "ScaledTanh": (1.0, 1.0), "HardSigmoid": (0.2, 0.5), "Elu": (1.0, None)}
CELL_DEFAULTS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
_BY_LOWER = {n.lower(): i for i, n in enumerate(NAMES)}

Spec = Tuple[Tuple[str, float, float], ...]  # per activation: (name, alpha, beta)


def parse(cell: str, activations: Optional[Sequence[str]], alphas: Optional[Sequence[float]] = None,
          betas: Optional[Sequence[float]] = None, directions: int = 1, what: str = "activations"
          ) -> Optional[Tuple[Spec, ...]]:
    """Checked activations of a cell: one ``Spec`` per direction, or None for the defaults.

    cell: "LSTM", "GRU" or "RNN"; activations: ONNX names (any case), n or directions·n of
    them (n = the cell's count); alphas, betas: consumed in order by the functions that take
    them. ValueError naming ``what`` for anything else.
    """
    n = len(CELL_DEFAULTS[cell])
    alphas = [] if alphas is None else [float(a) for a in alphas]
    betas = [] if betas is None else [float(b) for b in betas]
    if activations is None:
        if alphas or betas:
            raise ValueError(f"activation_alpha/activation_beta need {what}")
        return None
    if isinstance(activations, str):
        raise TypeError(f"{what} must be a sequence of names, e.g. {CELL_DEFAULTS[cell]}, "
                        f"not a string")
    names = list(activations)
    if len(names) not in {n, directions * n}:
        want = f"{n}" if directions == 1 else f"{n} (both directions) or {2 * n} (forward, then reverse)"
        raise ValueError(f"{what}: {cell} takes {want} activation names, got {len(names)}: {names}")
    rows = []
    ai = bi = 0
    for name in names:
        code = _BY_LOWER.get(str(name).lower()) if isinstance(name, str) else None
        if code is None:
            raise ValueError(f"{what}: unknown activation {name!r}; ONNX's are {list(NAMES)}")
        canon = NAMES[code]
        da, db = DEFAULTS.get(canon, (None, None))
        a = b = 0.0
        if da is not None:
            a = alphas[ai] if ai < len(alphas) else da
            ai += 1
        if db is not None:
            b = betas[bi] if bi < len(betas) else db
            bi += 1
        if not (np.isfinite(a) and np.isfinite(b)):
            raise ValueError(f"{what}: {canon}'s alpha and beta must be finite, got {a}, {b}")
        rows.append((canon, a, b))
    if ai < len(alphas) or bi < len(betas):
        raise ValueError(f"{what}: {len(alphas)} alphas and {len(betas)} betas given, but "
                         f"{names} take {ai} and {bi}")
    per = [tuple(rows[i:i + n]) for i in range(0, len(rows), n)]
    if len(per) == 1:
        per = per * directions
    return tuple(per)


def is_default(cell: str, spec: Optional[Tuple[Spec, ...]]) -> bool:
    """Whether every direction runs the cell's default functions (Sigmoid and Tanh take no
    parameters)."""
    return spec is None or all(tuple(r[0] for r in s) == CELL_DEFAULTS[cell] for s in spec)


def array(spec: Spec, dtype) -> np.ndarray:
    """One direction's functions as the kernels' (n, 3) rows (code, alpha, beta)."""
    return np.array([(NAMES.index(name), a, b) for name, a, b in spec], dtype)


def flat(spec: Optional[Tuple[Spec, ...]]):
    """(names, alphas, betas) in ONNX's attribute form, for export and get_config."""
    if spec is None:
        return None
    names, alphas, betas = [], [], []
    for s in spec:
        for name, a, b in s:
            names.append(name)
            da, db = DEFAULTS.get(name, (None, None))
            if da is not None:
                alphas.append(a)
            if db is not None:
                betas.append(b)
    return names, alphas, betas
