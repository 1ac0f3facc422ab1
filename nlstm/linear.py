"""``nlstm.Linear``: an affine layer over the last axis, with PyTorch's layout and init."""
from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np

from ._validate import (checked_state_dict, expect_shape, is_real, layer_dtype, positive_int,
                        real_array, seed_value)


class Linear:
    """y = x·Wᵀ + b over the last axis, as ``torch.nn.Linear``.

    ``weight`` is (out_features, in_features) and ``bias`` (out_features,); both start
    uniform over ±1/√in_features from ``seed``, as PyTorch's default init.
    x is (..., in_features) with any leading shape; y is (..., out_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=np.float32,
                 seed: Optional[int] = None, check_finite: bool = True):
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        self.bias = bool(bias)
        self.dtype = layer_dtype(dtype)
        self.seed = seed_value(seed)
        self.check_finite = bool(check_finite)
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(self.in_features)
        self.params: dict = {"weight": rng.uniform(-bound, bound, self._shapes()["weight"]).astype(self.dtype)}
        if self.bias:
            self.params["bias"] = rng.uniform(-bound, bound, self.out_features).astype(self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._x: Optional[np.ndarray] = None  # (N, in) input of the last training forward

    def _shapes(self) -> dict:
        shapes = {"weight": (self.out_features, self.in_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    # ---- forward / backward ---------------------------------------------------------------
    def _check(self, name: str, a, features: int) -> np.ndarray:
        a = real_array(name, a, self.check_finite, self.dtype)
        if a.ndim < 1:
            raise ValueError(f"{name} must have at least 1 dimension (..., {features}), got a scalar")
        if a.shape[-1] != features:
            raise ValueError(f"{name}.size(-1) must be equal to {features}, got {a.shape[-1]}")
        return a

    def __call__(self, x) -> np.ndarray:
        """Inference: ``y = linear(x)``."""
        return self.forward(x, train=False)

    def forward(self, x, train: bool = True) -> np.ndarray:
        """x: (..., in_features) -> y: (..., out_features) in the layer's dtype.

        With ``train``, keeps a copy of x for ``backward``.
        """
        x = self._check("input", x, self.in_features)
        lead = x.shape[:-1]
        x2 = np.asarray(x, dtype=self.dtype).reshape(-1, self.in_features)
        y = x2 @ self.params["weight"].T
        if self.bias:
            y += self.params["bias"]
        # Keep our own copy: the caller may reuse its array before backward.
        self._x = (x2.copy() if np.shares_memory(x2, x) else x2) if train else None
        self._lead = lead
        return y.reshape(*lead, self.out_features)

    def backward(self, dy) -> np.ndarray:
        """dy: (..., out_features), the shape of the last training forward's y.

        Adds into ``grads`` and returns dx: (..., in_features). Once per training forward.
        """
        if self._x is None:
            raise ValueError("backward() needs a forward(..., train=True) first, and each "
                             "training forward can be backpropagated once")
        dy = self._check("dy", dy, self.out_features)
        expect_shape("dy", dy, (*self._lead, self.out_features))
        x2, self._x = self._x, None
        dy2 = np.asarray(dy, dtype=self.dtype).reshape(-1, self.out_features)
        self.grads["weight"] += dy2.T @ x2
        if self.bias:
            self.grads["bias"] += dy2.sum(axis=0)
        return (dy2 @ self.params["weight"]).reshape(*self._lead, self.in_features)

    # ---- parameters -----------------------------------------------------------------------
    def zero_grad(self) -> None:
        """Set every accumulated parameter gradient to zero."""
        for g in self.grads.values():
            g.fill(0)

    def state_dict(self) -> dict:
        """Copies of the parameters: ``weight`` (out, in) and ``bias`` (out,)."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Load ``weight`` (and ``bias``); checks every key and shape before changing anything."""
        new = checked_state_dict(state_dict, self._shapes(), self.dtype)
        for name, a in new.items():
            np.copyto(self.params[name], a, casting="unsafe")

    def get_config(self) -> dict:
        """The constructor arguments, as JSON-compatible values."""
        return dict(in_features=self.in_features, out_features=self.out_features, bias=self.bias,
                    dtype=self.dtype.name, seed=self.seed, check_finite=self.check_finite)

    def __repr__(self) -> str:
        extra = "" if self.bias else ", bias=False"
        return f"Linear({self.in_features}, {self.out_features}{extra}, dtype={self.dtype.name})"


class Dropout:
    """Inverted dropout, as ``torch.nn.Dropout``: in training, zero each element with
    probability p and scale the rest by 1/(1-p); identity in inference.

    The mask comes from the layer's own generator, seeded by ``seed``. x may have any shape.
    """

    def __init__(self, p: float = 0.5, seed: Optional[int] = None):
        if not is_real(p) or not 0 <= p < 1:
            raise ValueError(f"p must be a number in [0, 1), got {p!r}")
        self.p = float(p)
        self.seed = seed_value(seed)
        self.params: dict = {}
        self.grads: dict = {}
        self._rng = np.random.default_rng(seed)
        self._mask = None  # mask of the last training forward (1.0 when p == 0)

    def reseed(self, seed) -> None:
        """Restart the mask stream from ``seed`` (``Sequential.fit(seed=...)`` does this)."""
        self._rng = np.random.default_rng(seed)

    def __call__(self, x) -> np.ndarray:
        return self.forward(x, train=False)

    def forward(self, x, train: bool = True) -> np.ndarray:
        """x: any shape -> an array of the same shape (floating point)."""
        x = real_array("input", x, check_finite=False)
        dt = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
        if not train:
            self._mask = None
            return np.array(x, dtype=dt)
        if self.p == 0:
            self._mask = dt.type(1)
            return np.array(x, dtype=dt)
        mask = self._rng.random(x.shape, dtype=dt if dt in (np.float32, np.float64) else np.float64)
        mask = mask.astype(dt, copy=False)
        keep = 1.0 - self.p
        np.less(mask, keep, out=mask)
        mask *= dt.type(1.0 / keep)
        self._mask = mask
        return x * mask

    def backward(self, dy) -> np.ndarray:
        """The gradient through the last training forward's mask (same shape as dy)."""
        if self._mask is None:
            raise ValueError("backward() needs a forward(..., train=True) first, and each "
                             "training forward can be backpropagated once")
        dy = real_array("dy", dy, check_finite=False)
        mask = self._mask
        if np.ndim(mask) and dy.shape != mask.shape:
            raise ValueError(f"dy must have shape {mask.shape}, got {dy.shape}")
        self._mask = None
        return dy * mask

    def zero_grad(self) -> None:
        """No parameters: nothing to do."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: Mapping) -> None:
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        if state_dict:
            raise ValueError(f"state_dict keys do not match: missing [], unexpected {sorted(state_dict)}")

    def get_config(self) -> dict:
        """The constructor arguments, as JSON-compatible values."""
        return dict(p=self.p, seed=self.seed)

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"
