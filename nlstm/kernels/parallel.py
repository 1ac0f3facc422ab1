"""The recurrent kernels run over threads: Numba ``prange`` drivers, one per kernel.

Each batched kernel takes a row range b0:b1 and its own scratch; a driver splits the rows
of the batch into ``len(bounds) - 1`` parts and runs part i (rows bounds[i]:bounds[i+1],
scratch ``s[i]`` of every stacked scratch array s) on its own thread, the time loop inside.
A unit-split driver runs every part of one row's hidden units at once; those parts meet at
spin barriers (kernels/sync.py), so the host runs them only on a threading layer that gives
each part its own thread (see nlstm._threads).

One driver per kernel, written out: a driver that takes the kernel as an argument (or a
closure over it) compiles, but Numba's cache never finds it again (the dispatcher's type is
keyed by the object, new in every process), and a parallel driver takes seconds to compile.
``Split`` pairs each kernel with its driver; the host passes the pair, and calls the kernel
itself when one thread is enough.
"""
from typing import Callable, NamedTuple

from numba import prange
from numba.extending import overload

from . import checks, gru, gru_units, lnlstm, lnlstm_units, lstm, lstm_units, rnn, tiles
from .config import parallel_kernel


def part(stacked, i):
    """(s[i] for s in stacked): part i's scratch, from a tuple of (parts, ...) arrays."""
    raise NotImplementedError("compiled code only")


@overload(part, inline="always")
def _part(stacked, i):
    src = ("def impl(stacked, i):\n    return ("
           + "".join(f"stacked[{j}][i], " for j in range(len(stacked))) + ")\n")
    scope: dict = {"__name__": __name__}
    exec(src, scope)  # a tuple of any length, one element per stacked array
    return scope["impl"]


class Split(NamedTuple):
    """A batched kernel ``serial(b0, b1, *args, *scratch)`` and its driver
    ``parallel(bounds, args, stacked)``; or a unit-split kernel ``serial(part, parts, *args)``
    and ``parallel(parts, args)``."""
    serial: Callable
    parallel: Callable


# ---- row drivers: bounds (parts+1,) int64, args the kernel's arguments after b0, b1,
# stacked: a tuple of (parts, ...) scratch arrays (empty for kernels without scratch)

@parallel_kernel
def _lstm_forward(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        lstm.lstm_forward(bounds[i], bounds[i + 1], *args, *part(stacked, i))


@parallel_kernel
def _lstm_backward(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        lstm.lstm_backward(bounds[i], bounds[i + 1], *args, *part(stacked, i))


@parallel_kernel
def _gru_forward(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        gru.gru_forward(bounds[i], bounds[i + 1], *args, *part(stacked, i))


@parallel_kernel
def _gru_backward(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        gru.gru_backward(bounds[i], bounds[i + 1], *args, *part(stacked, i))


@parallel_kernel
def _rnn_forward(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        rnn.rnn_forward(bounds[i], bounds[i + 1], *args, *part(stacked, i))


@parallel_kernel
def _rnn_backward(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        rnn.rnn_backward(bounds[i], bounds[i + 1], *args, *part(stacked, i))


@parallel_kernel
def _lnlstm_forward(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        lnlstm.lnlstm_forward(bounds[i], bounds[i + 1], *args, *part(stacked, i))


@parallel_kernel
def _lnlstm_backward(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        lnlstm.lnlstm_backward(bounds[i], bounds[i + 1], *args, *part(stacked, i))


@parallel_kernel
def _normalize_input(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        lnlstm.normalize_input(bounds[i], bounds[i + 1], *args, *part(stacked, i))


@parallel_kernel
def _normalize_input_back(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        lnlstm.normalize_input_back(bounds[i], bounds[i + 1], *args, *part(stacked, i))


@parallel_kernel
def _project_panels(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        tiles.project_panels(bounds[i], bounds[i + 1], *args, *part(stacked, i))


@parallel_kernel
def _project_narrow(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        tiles.project_narrow(bounds[i], bounds[i + 1], *args, *part(stacked, i))


@parallel_kernel
def _project_ragged_panels(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        tiles.project_ragged_panels(bounds[i], bounds[i + 1], *args, *part(stacked, i))


@parallel_kernel
def _weight_grad_panels(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        tiles.weight_grad_panels(bounds[i], bounds[i + 1], *args, *part(stacked, i))


@parallel_kernel
def _nonfinite(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        checks.nonfinite_part(bounds[i], bounds[i + 1], *args, *part(stacked, i))


@parallel_kernel
def _pack_gates(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        tiles.pack_gates_part(bounds[i], bounds[i + 1], *args, *part(stacked, i))


@parallel_kernel
def _pack_panels(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        tiles.pack_panels_part(bounds[i], bounds[i + 1], *args, *part(stacked, i))


@parallel_kernel
def _pack_panels_of_transpose(bounds, args, stacked):
    for i in prange(bounds.shape[0] - 1):
        tiles.pack_panels_of_transpose_part(bounds[i], bounds[i + 1], *args, *part(stacked, i))


# ---- unit-split drivers: every part of ``parts`` at once (one per thread; see the module doc)

@parallel_kernel
def _lstm_forward_units(parts, args):
    for i in prange(parts):
        lstm_units.lstm_forward_units(i, parts, *args)


@parallel_kernel
def _lstm_backward_units(parts, args):
    for i in prange(parts):
        lstm_units.lstm_backward_units(i, parts, *args)


@parallel_kernel
def _lnlstm_forward_units(parts, args):
    for i in prange(parts):
        lnlstm_units.lnlstm_forward_units(i, parts, *args)


@parallel_kernel
def _lnlstm_backward_units(parts, args):
    for i in prange(parts):
        lnlstm_units.lnlstm_backward_units(i, parts, *args)


@parallel_kernel
def _gru_forward_units(parts, args):
    for i in prange(parts):
        gru_units.gru_forward_units(i, parts, *args)


@parallel_kernel
def _gru_backward_units(parts, args):
    for i in prange(parts):
        gru_units.gru_backward_units(i, parts, *args)


project_ragged_panels = Split(tiles.project_ragged_panels, _project_ragged_panels)
project_panels = Split(tiles.project_panels, _project_panels)
project_narrow = Split(tiles.project_narrow, _project_narrow)
weight_grad_panels = Split(tiles.weight_grad_panels, _weight_grad_panels)
pack_gates = Split(tiles.pack_gates_part, _pack_gates)
nonfinite = Split(checks.nonfinite_part, _nonfinite)
pack_panels = Split(tiles.pack_panels_part, _pack_panels)
pack_panels_of_transpose = Split(tiles.pack_panels_of_transpose_part, _pack_panels_of_transpose)
lstm_forward = Split(lstm.lstm_forward, _lstm_forward)
lstm_backward = Split(lstm.lstm_backward, _lstm_backward)
gru_forward = Split(gru.gru_forward, _gru_forward)
gru_backward = Split(gru.gru_backward, _gru_backward)
rnn_forward = Split(rnn.rnn_forward, _rnn_forward)
rnn_backward = Split(rnn.rnn_backward, _rnn_backward)
lnlstm_forward = Split(lnlstm.lnlstm_forward, _lnlstm_forward)
lnlstm_backward = Split(lnlstm.lnlstm_backward, _lnlstm_backward)
normalize_input = Split(lnlstm.normalize_input, _normalize_input)
normalize_input_back = Split(lnlstm.normalize_input_back, _normalize_input_back)
lnlstm_forward_units = Split(lnlstm_units.lnlstm_forward_units, _lnlstm_forward_units)
lnlstm_backward_units = Split(lnlstm_units.lnlstm_backward_units, _lnlstm_backward_units)
lstm_forward_units = Split(lstm_units.lstm_forward_units, _lstm_forward_units)
lstm_backward_units = Split(lstm_units.lstm_backward_units, _lstm_backward_units)
gru_forward_units = Split(gru_units.gru_forward_units, _gru_forward_units)
gru_backward_units = Split(gru_units.gru_backward_units, _gru_backward_units)
