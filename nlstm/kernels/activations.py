"""Gate nonlinearities, chosen per dtype at compile time.

float32 uses a clamped rational tanh (odd degree-13 numerator over degree-6
denominator in x, about 3e-7 absolute error, below float32's own rounding at the
gate outputs). Unlike ``np.tanh`` it is a handful of FMAs and one division, so LLVM
vectorises the loops that call it. The sigmoid is ½·tanh(x/2) + ½, which keeps it
in the same vectorisable form. float64 keeps the exact libm functions.

The coefficients were fitted for nlstm by a weighted least-squares rational fit
(Lawson iterations) to tanh on [0, 7.9053]; past the clamp tanh is 1 in float32.
"""
import numba
import numpy as np
from numba import types
from numba.extending import overload

from .config import FASTMATH

_CLAMP = np.float32(7.90531110763549805)
_P1, _P3, _P5, _P7 = (np.float32(1.0), np.float32(0.13124315440654755),
                      np.float32(0.003149382071569562), np.float32(1.1644482583506033e-05))
_P9, _P11, _P13 = (np.float32(-2.233729823331032e-08), np.float32(6.38697983390557e-11),
                   np.float32(-1.1656924340727737e-13))
_Q0, _Q2, _Q4, _Q6 = (np.float32(1.0), np.float32(0.46457645297050476),
                      np.float32(0.02467491291463375), np.float32(0.00026131016784347594))
_HALF32 = np.float32(0.5)


def tanh(x):
    """tanh for use inside kernels (float32: rational approximation)."""
    return np.tanh(x)


def sigmoid(x):
    """Logistic sigmoid for use inside kernels."""
    return 0.5 * np.tanh(0.5 * x) + 0.5


@numba.njit(inline="always", fastmath=set(FASTMATH), cache=True)
def _tanh_f32(x):
    x = min(max(x, -_CLAMP), _CLAMP)
    z = x * x
    p = _P13
    p = p * z + _P11
    p = p * z + _P9
    p = p * z + _P7
    p = p * z + _P5
    p = p * z + _P3
    p = p * z + _P1
    q = _Q6
    q = q * z + _Q4
    q = q * z + _Q2
    q = q * z + _Q0
    return x * p / q


def _is_f32(x):
    return isinstance(x, types.Float) and x.bitwidth == 32


@overload(tanh, inline="always")
def _ov_tanh(x):
    if _is_f32(x):
        return lambda x: _tanh_f32(x)
    return lambda x: np.tanh(x)


@overload(sigmoid, inline="always")
def _ov_sigmoid(x):
    if _is_f32(x):
        return lambda x: _HALF32 * _tanh_f32(_HALF32 * x) + _HALF32
    return lambda x: 1.0 / (1.0 + np.exp(-x))


def cast_like(a, v):
    """v as a scalar of array a's dtype (a bare literal would promote float32 to float64)."""
    return a.dtype.type(v)


@overload(cast_like, inline="always")
def _ov_cast_like(a, v):
    dt = a.dtype
    return lambda a, v: dt(v)
