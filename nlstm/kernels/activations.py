"""Gate nonlinearities, chosen per dtype at compile time.

float32 uses a clamped rational tanh (odd degree-13 numerator over degree-6
denominator in x, about 3e-7 absolute error, below float32's own rounding at the
gate outputs). Unlike ``np.tanh`` it is a handful of FMAs and one division, so LLVM
vectorises the loops that call it. The sigmoid is ½·tanh(x/2) + ½, which keeps it
in the same vectorisable form. float64 keeps the exact libm functions.

The coefficients were fitted for nlstm by a weighted least-squares rational fit
(Lawson iterations) to tanh on [0, 7.9053]; past that clamp it returns ±1 exactly (true
tanh is within 2.7e-7 of it there), so saturated gates pass no gradient, as in float64.
"""
import math

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload

from .config import FASTMATH
from .simd import wide

_CLAMP = np.float32(7.90531110763549805)
_P1, _P3, _P5, _P7 = (np.float32(1.0), np.float32(0.13124315440654755),
                      np.float32(0.003149382071569562), np.float32(1.1644482583506033e-05))
_P9, _P11, _P13 = (np.float32(-2.233729823331032e-08), np.float32(6.38697983390557e-11),
                   np.float32(-1.1656924340727737e-13))
_Q0, _Q2, _Q4, _Q6 = (np.float32(1.0), np.float32(0.46457645297050476),
                      np.float32(0.02467491291463375), np.float32(0.00026131016784347594))
_HALF32 = np.float32(0.5)
_ONE32 = np.float32(1.0)
_CLAMP2 = _CLAMP * _CLAMP  # c·c at the clamp, as the kernels round it


def tanh(x):
    """tanh for use inside kernels (float32: rational approximation)."""
    return np.tanh(x)


def sigmoid(x):
    """Logistic sigmoid for use inside kernels."""
    return 0.5 * np.tanh(0.5 * x) + 0.5


@intrinsic
def _pick(typingctx, cond, a, b):
    """a if cond else b, as one LLVM ``select`` (a conditional expression in an inlined
    function makes Numba branch, which blocks vectorisation and warns)."""
    if not (isinstance(cond, types.Boolean) and isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, sig, args):
        c = context.cast(builder, args[0], sig.args[0], types.boolean)
        return builder.select(c, args[1], args[2])
    return a(cond, a, b), codegen


@numba.njit(inline="always", fastmath=set(FASTMATH), cache=True)
def _tanh_f32(x):
    c = min(max(x, -_CLAMP), _CLAMP)
    z = c * c
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
    # Past the clamp, exactly ±1: the rational there is 0.9999997, and saturated units
    # would keep a derivative floor 1 - t² ≈ 6e-7 (σ's 1.2e-7) that large inputs turn into
    # gradients of order one. (NaN fails the test and propagates through c.)
    return _pick(z >= _CLAMP2, math.copysign(_ONE32, c), c * p / q)


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


# ---- ONNX's activation functions, for layers with non-default activations ---------------
# A layer with the default activations never reaches these: its kernels keep the
# vectorised loops above. A non-default layer hands each kernel a ``spec`` array of rows
# (code, alpha, beta), one row per activation of the cell (f, g, h for the LSTM, f, g for
# the GRU, f for the RNN), in the layer's dtype, and the kernels call ``act`` / ``dact``
# per element. The codes index ``nlstm.activations.NAMES`` (ONNX's names).
SIGMOID, TANH, RELU, AFFINE, LEAKY_RELU, THRESHOLDED_RELU, SCALED_TANH, HARD_SIGMOID, ELU, \
    SOFTSIGN, SOFTPLUS = range(11)


@numba.njit(inline="always", fastmath=set(FASTMATH), cache=True)
def act(k, x, a, b):
    """Activation code k with parameters a (alpha), b (beta) at x (ONNX's definitions)."""
    zero = x - x
    if k == SIGMOID:
        return sigmoid(x)
    if k == TANH:
        return tanh(x)
    if k == RELU:
        return max(x, zero)
    if k == AFFINE:
        return a * x + b
    if k == LEAKY_RELU:
        return x if x >= zero else a * x
    if k == THRESHOLDED_RELU:
        return x if x > a else zero
    if k == SCALED_TANH:
        return a * tanh(b * x)
    if k == HARD_SIGMOID:
        return min(max(a * x + b, zero), zero + 1)
    if k == ELU:
        return x if x >= zero else a * (np.exp(x) - 1)
    if k == SOFTSIGN:
        return x / (1 + abs(x))
    # SOFTPLUS, written to stay finite for large x: log(1 + e^x) = max(x, 0) + log1p(e^-|x|)
    return max(x, zero) + np.log1p(np.exp(-abs(x)))


@numba.njit(inline="always", fastmath=set(FASTMATH), cache=True)
def dact(k, x, y, a, b):
    """The derivative of ``act(k, ·, a, b)`` at x, given its value y there."""
    zero = x - x
    one = zero + 1
    if k == SIGMOID:
        return y - y * y
    if k == TANH:
        return one - y * y
    if k == RELU:
        return one if x > zero else zero
    if k == AFFINE:
        return zero + a
    if k == LEAKY_RELU:
        return one if x >= zero else zero + a
    if k == THRESHOLDED_RELU:
        return one if x > a else zero
    if k == SCALED_TANH:
        t = tanh(b * x)
        return a * b * (one - t * t)
    if k == HARD_SIGMOID:
        v = a * x + b
        return zero + a if zero < v < one else zero
    if k == ELU:
        return one if x >= zero else y + a
    if k == SOFTSIGN:
        s = one + abs(x)
        return one / (s * s)
    return sigmoid(x)  # SOFTPLUS


@numba.njit(inline="always", fastmath=set(FASTMATH), cache=True)
def gate(spec, x, clip):
    """``act`` of the activation row ``spec`` (code, alpha, beta) at x clamped to ±clip."""
    v = min(max(x, -clip), clip)
    return act(int(spec[0]), v, spec[1], spec[2])


@numba.njit(inline="always", fastmath=set(FASTMATH), cache=True)
def dgate(spec, x, y, clip):
    """The derivative of ``gate(spec, ·, clip)`` at x (the pre-activation before the clamp),
    given its value y: zero where the clamp cut x."""
    if abs(x) > clip:
        return x - x
    return dact(int(spec[0]), x, y, spec[1], spec[2])


@numba.njit(inline="always", fastmath=set(FASTMATH), cache=True)
def gates_inplace(v, pre, spec, clip):
    """v[j] = gate(spec, v[j], clip), keeping each v[j] in pre[j] (both (n,))."""
    wide()
    for j in range(v.shape[0]):
        x = v[j]
        pre[j] = x
        v[j] = gate(spec, x, clip)


@numba.njit(fastmath=set(FASTMATH), cache=True, _nrt=True)  # ravel may copy: Numba's runtime
def dact_into(spec, x, out):
    """out = the derivative of ``act`` of the row ``spec`` (code, alpha, beta) at x,
    element-wise over arrays of any shape (unclipped: for the LSTM's h(c))."""
    wide()
    k, a, b = int(spec[0]), spec[1], spec[2]
    xf, of = x.ravel(), out.ravel()
    for j in range(xf.shape[0]):
        of[j] = dact(k, xf[j], act(k, xf[j], a, b), a, b)
