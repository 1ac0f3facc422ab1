"""The kernels' compile policy (``nlstm.kernels.config``): no reference counting.

Numba counts references to every array a function holds (a pair of atomic operations per
view made and per array passed on) and relies on an LLVM pass to pair them away; inside
branches and across calls it could not, and those pairs took 19% of the plain LSTM's and
42% of the LayerNorm cell's time at M on one thread. Kernels allocate nothing, so they
compile without Numba's runtime; only the few that call ``np.dot`` (and ``ravel``) keep
it.
"""
import importlib
import pkgutil

import numba
import numpy as np

import nlstm.kernels
from nlstm.kernels import config, tiles

# Kernels that keep Numba's runtime: ravel may allocate.
WITH_RUNTIME = {"activations.dact_into"}


def _dispatchers():
    """(module.name, dispatcher) of every compiled function the kernel modules define."""
    for info in pkgutil.iter_modules(nlstm.kernels.__path__):
        mod = importlib.import_module(f"nlstm.kernels.{info.name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, numba.core.registry.CPUDispatcher) and \
                    obj.py_func.__module__ == mod.__name__:
                yield f"{info.name}.{name}", obj


def test_every_kernel_compiles_without_reference_counts():
    runtime = set()
    serial = 0
    for name, disp in _dispatchers():
        if disp.targetoptions.get("parallel") or disp.targetoptions.get("inline") == "always":
            continue  # prange drivers (parfors need the runtime); inlined: the caller's policy
        serial += 1
        if disp.targetoptions.get("_nrt", True):
            runtime.add(name)
    assert serial > 50, "the kernels were not found"
    assert runtime == WITH_RUNTIME


def _panel_rows_refcounts(**extra) -> int:
    """NRT_incref calls in the LLVM IR of ``tiles.panel_rows`` compiled afresh (Numba cannot
    show the IR of code loaded from its cache)."""
    fresh = numba.njit(**dict(config.options(), **extra))(tiles.panel_rows.py_func)
    S = tiles.panel_width(np.float32)
    out, a = np.zeros((8, S), np.float32), np.ones((8, 16), np.float32)
    fresh(out, a, np.empty(0, np.int64), 8, np.ones(16 * S, np.float32), 0, S, 0, 16, False)
    assert (out == 16).all()
    return fresh.inspect_llvm(fresh.signatures[0]).count("call void @NRT_incref")


def test_tile_loops_hold_no_reference_counts():
    """The panel product under the policy: no reference counts at all. With Numba's
    runtime the same function counts references inside its tile loop (the branches on
    where a tile's sums start keep LLVM from pairing them): the check can fail."""
    assert _panel_rows_refcounts() == 0
    assert _panel_rows_refcounts(_nrt=True) > 0
