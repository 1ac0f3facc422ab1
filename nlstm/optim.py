"""Optimizers, gradient clipping and learning-rate schedules.

Optimizers update the parameter arrays in place, as ``torch.optim`` does, from the
gradient arrays beside them. Every buffer (moments, momentum, scratch) is allocated
when the optimizer is made, so a ``step()`` allocates no arrays: each update is a chain
of ufuncs writing into those buffers (``out=`` or in-place operators). A step writes its
new values to scratch, checks them, and only then commits (see ``Optimizer``).
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional, Tuple

import numpy as np


def _number(name: str, value, low: float = 0.0, high: float = math.inf, low_open: bool = False,
            high_open: bool = True) -> float:
    """``value`` as a float in the given interval, or a TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    below = v <= low if low_open else v < low
    above = v >= high if high_open else v > high
    if not math.isfinite(v) or below or above:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {value!r}")
    return v


def _pairs(params, grads) -> Tuple[dict, dict]:
    """The (params, grads) mappings of a layer or model, or the two given mappings, checked."""
    if grads is None:
        if not (hasattr(params, "params") and hasattr(params, "grads")):
            raise TypeError("params must be a layer or model (with .params and .grads), or a "
                            "mapping of arrays given together with grads=")
        params, grads = params.params, params.grads
    if not isinstance(params, Mapping) or not isinstance(grads, Mapping):
        raise TypeError("params and grads must be mappings of names to arrays")
    if set(params) != set(grads):
        raise ValueError(f"params and grads must have the same keys; only in params: "
                         f"{sorted(set(params) - set(grads))}, only in grads: "
                         f"{sorted(set(grads) - set(params))}")
    if not params:
        raise ValueError("params is empty: nothing to optimize")
    for k, p in params.items():
        g = grads[k]
        if not isinstance(p, np.ndarray) or not isinstance(g, np.ndarray):
            raise TypeError(f"params[{k!r}] and grads[{k!r}] must be NumPy arrays")
        if p.dtype.kind != "f" or g.dtype != p.dtype:
            raise TypeError(f"params[{k!r}] and grads[{k!r}] must share one floating dtype, got "
                            f"{p.dtype} and {g.dtype}")
        if g.shape != p.shape:
            raise ValueError(f"grads[{k!r}] must have shape {p.shape}, got {g.shape}")
        if not p.flags.writeable:
            raise ValueError(f"params[{k!r}] is read-only; the optimizer updates it in place")
    return dict(params), dict(grads)


def _finite(a: np.ndarray) -> bool:
    """Whether every element is finite, without a temporary array (NaN propagates through
    min and max): a step allocates nothing."""
    return a.size == 0 or bool(np.isfinite(a.min()) and np.isfinite(a.max()))


class Optimizer:
    """Base class. ``params`` is a layer or model (its ``.params``/``.grads``), or a mapping
    of names to parameter arrays with the matching gradient mapping as ``grads=``.

    A step computes every new value (parameters and buffers) into scratch first and
    commits only when all are finite in the parameters' dtype: a step that would overflow
    (a huge gradient or learning rate) raises FloatingPointError and changes nothing.
    """

    _buffers: Tuple[str, ...] = ()   # per-parameter state saved by state_dict
    _scratch = 3                     # per-parameter scratch arrays

    def __init__(self, params, lr: float, grads: Optional[Mapping] = None):
        self.params, self.grads = _pairs(params, grads)
        self.lr = _number("lr", lr, 0.0, low_open=True)
        self.steps = 0
        self.state = {k: {b: np.zeros_like(p) for b in self._buffers} for k, p in self.params.items()}
        self._tmp = {k: [np.empty_like(p) for _ in range(self._scratch)] for k, p in self.params.items()}

    def zero_grad(self) -> None:
        """Set every gradient to zero."""
        for g in self.grads.values():
            g.fill(0)

    def step(self) -> None:
        """Update every parameter in place from its gradient; FloatingPointError, with
        nothing changed, if a new value would not be finite."""
        self.steps += 1
        at_p, at_state = self._where()
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow: the error below
                for k, p in self.params.items():
                    tmp = self._tmp[k]
                    self._update(p, self.grads[k], self.state[k], *tmp)
                    for what, i in (("parameter", at_p), *at_state.items()):
                        if not _finite(tmp[i]):
                            raise FloatingPointError(
                                f"{type(self).__name__} step {self.steps}: the new {what} of "
                                f"{k!r} is not finite in {p.dtype} (the gradient, lr={self.lr} "
                                "or the update overflowed); nothing was changed: lower lr, clip "
                                "the gradients (clip_grad_norm) or check the data")
        except BaseException:
            self.steps -= 1
            raise
        # Every value is finite: commit (each parameter has its own scratch, so every
        # result is still there).
        for k, p in self.params.items():
            tmp, state = self._tmp[k], self.state[k]
            np.copyto(p, tmp[at_p])
            for b, i in at_state.items():  # buffers swap with their scratch (no copy)
                tmp[i], state[b] = state[b], tmp[i]

    def _where(self) -> Tuple[int, dict]:
        """Which scratch array ``_update`` writes the new parameter to, and each buffer it
        updates: (index, {buffer name: index})."""
        raise NotImplementedError

    def _update(self, p, g, state, *tmp) -> None:
        """Write the new value of p and of its buffers into the scratch arrays ``tmp`` (at
        ``_where()``), leaving p, g and state unchanged."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Copies of the step count, the learning rate and every per-parameter buffer."""
        return {"steps": self.steps, "lr": self.lr,
                "state": {k: {b: a.copy() for b, a in s.items()} for k, s in self.state.items()}}

    def load_state_dict(self, d: Mapping) -> None:
        """Restore a ``state_dict()``; checks every key and shape before changing anything."""
        try:
            steps, lr, state = int(d["steps"]), d["lr"], d["state"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"optimizer state_dict must have steps, lr and state: {e}") from None
        lr = _number("lr", lr, 0.0, low_open=True)
        if set(state) != set(self.state):
            raise ValueError("optimizer state_dict is for different parameters")
        for k, s in self.state.items():
            if set(state[k]) != set(s):
                raise ValueError(f"optimizer state_dict[{k!r}] must hold {sorted(s)}")
            for b, a in s.items():
                if np.shape(state[k][b]) != a.shape:
                    raise ValueError(f"optimizer state {k}.{b} must have shape {a.shape}")
        for k, s in self.state.items():
            for b, a in s.items():
                np.copyto(a, state[k][b], casting="unsafe")
        self.steps, self.lr = steps, lr

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr}, {len(self.params)} parameter arrays)"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    d = g + wd·p; buf = d on the first step, then momentum·buf + (1 − dampening)·d;
    the step is d + momentum·buf with Nesterov, else buf; p −= lr·step.
    """

    _buffers = ("momentum_buffer",)

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, grads: Optional[Mapping] = None):
        self.momentum = _number("momentum", momentum)
        self.dampening = _number("dampening", dampening)
        self.weight_decay = _number("weight_decay", weight_decay)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening = 0")
        super().__init__(params, lr, grads)

    def _where(self):
        return 2, ({"momentum_buffer": 1} if self.momentum else {})

    def _update(self, p, g, state, t1, t2, t3):
        d = g
        if self.weight_decay:
            np.multiply(p, self.weight_decay, out=t1)
            t1 += g
            d = t1
        if self.momentum:
            buf = t2
            if self.steps == 1:
                np.copyto(buf, d)
            else:
                np.multiply(state["momentum_buffer"], self.momentum, out=buf)
                np.multiply(d, 1.0 - self.dampening, out=t3)
                buf += t3
            if self.nesterov:
                np.multiply(buf, self.momentum, out=t3)
                t3 += d
                d = t3
            else:
                d = buf
        np.multiply(d, self.lr, out=t3)
        np.subtract(p, t3, out=t3)


class Adam(Optimizer):
    """Adam (Kingma & Ba), as ``torch.optim.Adam``; ``weight_decay`` is an L2 term added to
    the gradient. Bias-corrected: p −= lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + eps)."""

    _buffers = ("exp_avg", "exp_avg_sq")
    _scratch = 4
    _decoupled = False  # AdamW: weight decay scales p instead of adding to g

    def __init__(self, params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, grads: Optional[Mapping] = None):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_number("betas[0]", betas[0], 0.0, 1.0), _number("betas[1]", betas[1], 0.0, 1.0))
        self.eps = _number("eps", eps)
        self.weight_decay = _number("weight_decay", weight_decay)
        super().__init__(params, lr, grads)

    def _where(self):
        return 2, {"exp_avg": 0, "exp_avg_sq": 1}

    def _update(self, p, g, state, t1, t2, t3, t4):
        b1, b2 = self.betas
        m, v = state["exp_avg"], state["exp_avg_sq"]
        base = p                           # what the step is subtracted from
        if self.weight_decay and self._decoupled:
            np.multiply(p, 1.0 - self.lr * self.weight_decay, out=t4)
            base = t4
        elif self.weight_decay:
            np.multiply(p, self.weight_decay, out=t3)
            t3 += g
            g = t3
        np.subtract(g, m, out=t1)          # m' = m + (1 − β1)(g − m)
        t1 *= 1.0 - b1
        t1 += m
        np.multiply(v, b2, out=t2)         # v' = β2·v + (1 − β2)·g²
        np.multiply(g, g, out=t3)          # (g is no longer needed after this)
        t3 *= 1.0 - b2
        t2 += t3
        bc1 = 1.0 - b1 ** self.steps
        bc2_sqrt = math.sqrt(1.0 - b2 ** self.steps)
        np.sqrt(t2, out=t3)
        t3 /= bc2_sqrt
        t3 += self.eps
        np.divide(t1, t3, out=t3)
        t3 *= self.lr / bc1
        np.subtract(base, t3, out=t3)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``:
    p *= 1 − lr·wd before the Adam step. Default ``weight_decay`` 0.01, as PyTorch."""

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, *, grads: Optional[Mapping] = None):
        super().__init__(params, lr, betas, eps, weight_decay, grads=grads)


def clip_grad_norm(grads, max_norm: float) -> float:
    """Scale the gradients in place so that their global L2 norm is at most ``max_norm``,
    as ``torch.nn.utils.clip_grad_norm_``. ``grads`` is a mapping or an iterable of arrays
    (or a layer/model with ``.grads``). Returns the norm before clipping."""
    max_norm = _number("max_norm", max_norm, 0.0, low_open=True)
    if hasattr(grads, "grads"):
        grads = grads.grads
    arrays: Iterable[np.ndarray] = grads.values() if isinstance(grads, Mapping) else grads
    arrays = list(arrays)
    total = 0.0
    for g in arrays:
        flat = g.reshape(-1)
        total += float(np.dot(flat, flat))
    norm = math.sqrt(total)
    scale = max_norm / (norm + 1e-6)
    if scale < 1.0:
        for g in arrays:
            g *= scale
    return norm


class LRScheduler:
    """Base: sets ``optimizer.lr`` from the epoch count; call ``step()`` once per epoch."""

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be an nlstm Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self) -> float:
        """Advance one epoch; returns the new learning rate."""
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)
        return self.optimizer.lr


class StepLR(LRScheduler):
    """lr = base · gamma^⌊epoch / step_size⌋, as ``torch.optim.lr_scheduler.StepLR``."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        if isinstance(step_size, bool) or not isinstance(step_size, (int, np.integer)) or step_size < 1:
            raise ValueError(f"step_size must be a positive int, got {step_size!r}")
        self.step_size = int(step_size)
        self.gamma = _number("gamma", gamma, 0.0, low_open=True)
        super().__init__(optimizer)

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineLR(LRScheduler):
    """Cosine annealing from the base rate to ``eta_min`` over ``T_max`` epochs, as
    ``torch.optim.lr_scheduler.CosineAnnealingLR``, after an optional linear warm-up
    of ``warmup`` epochs; stays at ``eta_min`` after ``T_max``."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, warmup: int = 0):
        if isinstance(T_max, bool) or not isinstance(T_max, (int, np.integer)) or T_max < 1:
            raise ValueError(f"T_max must be a positive int, got {T_max!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or not 0 <= warmup < T_max:
            raise ValueError(f"warmup must be an int in 0..T_max-1, got {warmup!r}")
        self.T_max, self.warmup = int(T_max), int(warmup)
        self.eta_min = _number("eta_min", eta_min)
        super().__init__(optimizer)
        if self.warmup:
            optimizer.lr = self.lr_at(0)

    def lr_at(self, epoch: int) -> float:
        if epoch < self.warmup:
            return self.base_lr * (epoch + 1) / (self.warmup + 1)
        t = min(epoch - self.warmup, self.T_max - self.warmup)
        frac = t / (self.T_max - self.warmup)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * frac)) / 2
