"""Losses with their gradients, masked by sequence lengths so that padding never counts.

Layouts are batch-first. A loss is either per sequence (pred (B, O), one target per
row) or per step (pred (B, T, O), one target per row and step). With ``lengths`` (B,),
steps t >= lengths[b] are left out of a per-step loss, and rows of length 0 are left out
of a per-sequence loss; the mean is over what is left.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ._validate import expect_shape, lengths_array, real_array


def _mask(lengths, B: int, T: Optional[int]) -> Optional[np.ndarray]:
    """A bool mask of the positions that count: (B,) per sequence, (B, T) per step; None = all."""
    if lengths is None:
        return None
    if T is None:
        lens = lengths_array(lengths, B, np.iinfo(np.int64).max)
        return lens > 0
    lens = lengths_array(lengths, B, T)
    return np.arange(T)[None, :] < lens[:, None]


class Loss:
    """Base: ``value = loss.forward(pred, target, lengths)``, then ``dpred = loss.backward()``.

    ``count`` is the number of positions (rows or row-steps) that the last forward
    averaged over, so several batches can be combined into one exact mean.
    """

    name = "loss"

    def __init__(self):
        self._grad: Optional[np.ndarray] = None
        self.count = 0

    def __call__(self, pred, target, lengths=None) -> float:
        return self.forward(pred, target, lengths)

    def _pred(self, pred) -> np.ndarray:
        p = real_array("pred", pred, check_finite=False)
        if p.ndim not in (2, 3):
            raise ValueError(f"pred must be 2-D (B, O) per sequence or 3-D (B, T, O) per step, "
                             f"got shape {p.shape}")
        if p.dtype.kind != "f":
            p = p.astype(np.float64)
        return p

    def backward(self) -> np.ndarray:
        """The gradient of the last forward's value with respect to pred (pred's shape)."""
        if self._grad is None:
            raise ValueError("backward() needs a forward() first")
        g, self._grad = self._grad, None
        return g

    def get_config(self) -> dict:
        return {}


class MSELoss(Loss):
    """Mean squared error over the positions that count and over the O outputs.

    pred: (B, O) or (B, T, O); target: the same shape; lengths: optional (B,).
    """

    name = "mse"

    def forward(self, pred, target, lengths=None) -> float:
        p = self._pred(pred)
        y = real_array("target", target, check_finite=False)
        expect_shape("target", y, p.shape)
        mask = _mask(lengths, p.shape[0], p.shape[1] if p.ndim == 3 else None)
        diff = p - y.astype(p.dtype, copy=False)
        if mask is not None:
            if not np.isfinite(y[mask]).all():
                raise ValueError("target contains NaN or Inf where it counts")
            diff = np.where(mask[..., None], diff, p.dtype.type(0))  # padding may hold NaN
            n = int(mask.sum())
        else:
            if not np.isfinite(y).all():
                raise ValueError("target contains NaN or Inf")
            n = int(np.prod(p.shape[:-1]))
        self.count = n
        denom = n * p.shape[-1]
        if denom == 0:
            self._grad = np.zeros_like(p)
            return 0.0
        value = float(np.dot(diff.ravel(), diff.ravel())) / denom
        diff *= p.dtype.type(2.0 / denom)
        self._grad = diff
        return value


class CrossEntropyLoss(Loss):
    """Cross-entropy from logits (softmax over the last axis), as ``torch.nn.CrossEntropyLoss``.

    pred: logits (B, C) with integer target (B,), or (B, T, C) with target (B, T);
    targets must be in 0..C-1 where they count (padding may hold anything).
    The mean is over the positions that count.
    """

    name = "cross_entropy"

    def forward(self, pred, target, lengths=None) -> float:
        p = self._pred(pred)
        t = np.asarray(target)
        if t.dtype.kind not in "iu":
            if t.dtype.kind == "f" and t.size and np.all(np.isfinite(t)) and np.all(t == np.round(t)):
                t = t.astype(np.int64)
            else:
                raise TypeError(f"target must hold integer class indices, got dtype {t.dtype}")
        expect_shape("target", t, p.shape[:-1])
        C = p.shape[-1]
        mask = _mask(lengths, p.shape[0], p.shape[1] if p.ndim == 3 else None)
        valid = np.ones(t.shape, bool) if mask is None else mask
        tv = t[valid]
        if tv.size and (tv.min() < 0 or tv.max() >= C):
            raise ValueError(f"target must be class indices in 0..{C - 1}, got values in "
                             f"{tv.min()}..{tv.max()}")
        n = int(valid.sum())
        self.count = n
        if n == 0:
            self._grad = np.zeros_like(p)
            return 0.0
        t = np.where(valid, t, 0)
        # log-softmax, shifted by the row maximum so exp never overflows.
        z = p - p.max(axis=-1, keepdims=True)
        logsum = np.log(np.exp(z).sum(axis=-1, keepdims=True))
        logp = z - logsum
        picked = np.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
        value = -float(picked[valid].sum(dtype=np.float64)) / n
        grad = np.exp(logp)
        np.put_along_axis(grad, t[..., None], np.take_along_axis(grad, t[..., None], -1) - 1, -1)
        grad *= (valid / n).astype(p.dtype)[..., None]
        self._grad = grad
        return value


LOSSES = {"mse": MSELoss, "cross_entropy": CrossEntropyLoss}


def get_loss(loss) -> Loss:
    """A loss instance from a name ("mse", "cross_entropy") or an instance."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]()
    raise ValueError(f"loss must be one of {sorted(LOSSES)} or a Loss instance, got {loss!r}")
