"""Checks that run before any kernel: the only wall between bad input and a kernel
that has no bounds checks. Each raises TypeError or ValueError naming the argument."""
from __future__ import annotations

import numbers
from typing import Mapping

import numpy as np

from .kernels import tuning

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def layer_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from e
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def is_real(value) -> bool:
    """Whether ``value`` is a real number: Python's or NumPy's (np.float32(0.25) too), not a
    bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def seed_value(seed):
    """A layer's ``seed``: None or an int (NumPy's integers become Python's, so the config
    saves as JSON). TypeError otherwise."""
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be None or an int, got {type(seed).__name__}")
    return int(seed)


_SKIP_HINT = "pass check_finite=False to the layer to skip this check"
_PARAM_HINT = "parameters must be finite"


def real_array(name: str, value, check_finite: bool, dtype=None,
               hint: str = _SKIP_HINT) -> np.ndarray:
    """``value`` as an ndarray of a real numeric dtype (not yet converted).

    With ``check_finite``, a ValueError if it holds NaN or Inf, or, given the ``dtype`` it
    will be converted to, values finite as given but outside that dtype's range (float64
    1e39 becomes Inf in float32): the same error, saying which.
    """
    try:
        a = np.asarray(value)
    except Exception as e:  # ragged lists and the like
        raise TypeError(f"{name} must be array-like of real numbers: {e}") from e
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must have a real numeric dtype, got {a.dtype}")
    if check_finite and a.dtype.kind == "f":
        check_in_range(name, a, dtype, hint)
    return a


def check_in_range(name: str, a: np.ndarray, dtype=None, hint: str = _SKIP_HINT) -> None:
    """A ValueError if the float array ``a`` holds NaN or Inf, or values that ``dtype``
    (narrower than a's) cannot hold. One ``isfinite`` pass when nothing narrows; when
    something does, a min and a max (NaN propagates through both), and ``isfinite`` only
    to word the error."""
    dt = a.dtype if dtype is None else np.dtype(dtype)
    if dt.itemsize >= a.dtype.itemsize or a.size == 0:
        if not all_finite(a):
            raise ValueError(f"{name} contains NaN or Inf ({hint})")
        return
    top = np.finfo(dt).max
    lo, hi = a.min(), a.max()
    if lo >= -top and hi <= top:
        return
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf ({hint})")
    worst = hi if hi > top else lo
    raise ValueError(f"{name} has values outside {dt.name}'s range (±{float(top):.4g}), e.g. "
                     f"{float(worst):.4g}: they would be Inf in {dt.name} ({hint})")


def all_finite(a: np.ndarray) -> bool:
    """Whether the float array ``a`` holds no NaN and no Inf. A C-contiguous one from
    ``tuning.NUMBA_CHECK`` elements on in one pass of nlstm's (``kernels.checks``), from
    ``tuning.PARALLEL_CHECK`` on over its threads; otherwise NumPy's ``isfinite``."""
    if a.size < tuning.NUMBA_CHECK or not (a.flags.c_contiguous and a.flags.aligned) \
            or a.dtype not in FLOAT_DTYPES:
        return bool(np.isfinite(a).all())
    from . import _threads
    from .kernels import parallel
    chunks = -(-a.size // tuning.CHECK_CHUNK)
    found = np.zeros(chunks, np.int64)
    _threads.run_rows(chunks, float(a.size), parallel.nonfinite, (a, found), [()], (),
                      min_work=tuning.PARALLEL_CHECK)
    return not found.any()


def expect_shape(name: str, a: np.ndarray, shape: tuple) -> None:
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")


def lengths_array(lengths, B: int, T: int) -> np.ndarray:
    """``lengths`` as a fresh int64 array of shape (B,) with values in 0..T."""
    try:
        a = np.asarray(lengths)
    except Exception as e:
        raise TypeError(f"lengths must be an array of ints: {e}") from e
    if a.dtype.kind not in "iu":
        raise TypeError(f"lengths must have an integer dtype, got {a.dtype}")
    if a.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), one per batch row, got {a.shape}")
    if B and (a.min() < 0 or a.max() > T):
        raise ValueError(f"lengths must be in 0..{T} (the sequence length), got values in "
                         f"{a.min()}..{a.max()}")
    return np.array(a, dtype=np.int64)


def checked_state_dict(state_dict, shapes: Mapping, dtype=None) -> dict:
    """The arrays of ``state_dict`` for exactly the keys and shapes in ``shapes``, each
    checked (real, finite in ``dtype``, the parameters' dtype, right shape), so that a load
    can copy them without failing half-way. Raises TypeError/ValueError naming the keys."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    missing = sorted(set(shapes) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(shapes))
    if missing or unexpected:
        raise ValueError(f"state_dict keys do not match: missing {missing}, unexpected {unexpected}")
    checked = {}
    for name, shape in shapes.items():
        a = real_array(f"state_dict[{name!r}]", state_dict[name], True, dtype, _PARAM_HINT)
        expect_shape(f"state_dict[{name!r}]", a, shape)
        checked[name] = a
    return checked
