"""Streaming with the state kept between calls: ``stream = layer.stream(); y_t = stream(x_t)``.

``layer.step(x_t, state)`` is functional, like ``nn.LSTMCell``: it checks the state it is
handed and returns new arrays every call. A stream owns its state instead (Keras's
``stateful=True``; ONNX Runtime's I/O binding plays the same part): two preallocated
buffers per state, written alternately, so a step reads one and writes the other and a
failed step leaves the state as it was. The common call is checked with a few identity and
shape tests, so it costs the step kernel plus about a microsecond.

After the first call through Numba's dispatcher, a stream calls the kernel's compiled entry
point directly: every argument but x is the stream's own and fixed, and x is always
converted to one type, so the dispatcher's typing of eleven or so arguments on every call
(about 0.4 µs) would decide nothing.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ._validate import positive_int, real_array
from .kernels import table


class Stream:
    """A unidirectional layer's running state, advanced one time step per call.

    Made by ``layer.stream(batch_size=None, state=None)``. With ``batch_size=None`` a call
    takes x_t (I,) and returns y_t (O,); with an int B, x_t (B, I) and y_t (B, O)
    (O = ``layer.output_size``). The state starts at zero or at ``state`` (shaped like
    ``forward``'s final state: (L, B, ·), or (L, ·) without a batch).

    The stream reads the layer's parameters live (optimizers update them in place). It
    shares the layer's scratch with ``layer.step``, and the layer's lock: calls from
    several threads take turns.
    """

    def __init__(self, layer, batch_size: Optional[int] = None, state=None):
        if layer.bidirectional:
            raise ValueError(f"stream() needs a unidirectional {layer._name}: a bidirectional "
                             "layer must see the whole sequence")
        self.layer = layer
        self.batch_size = None if batch_size is None else positive_int("batch_size", batch_size)
        self._unbatched = batch_size is None
        B, L, dt = self.batch_size or 1, layer.num_layers, layer.dtype
        self._dtype = dt
        I = layer.input_size
        self._x_shape = (I,) if self._unbatched else (B, I)
        self._y_shape = (layer._out_size,) if self._unbatched else (B, layer._out_size)
        self._bufs = [[np.zeros((L, B, n), dt) for n in layer._step_sizes] for _ in range(2)]
        self._cur = 0  # which of the two buffer sets holds the state
        # Each call's arguments but x, per buffer set holding the state, built once:
        # (k, old state..., new state..., layer k's weights...) for every layer k.
        self._kernel, layers = layer._step_plan()
        self._calls = [[(k, (*self._bufs[p], *self._bufs[1 - p], *args))
                        for k, args in enumerate(layers)] for p in (0, 1)]
        # Where the cell has one, the kernel that takes all of those as one table of
        # addresses (kernels.table): two arrays for the entry point to unbox instead of
        # eight to ten (0.11 µs of an RNN step). _held keeps the tables' arrays alive.
        tabled = layer._step_table_kernel()
        if tabled is not None:
            tables = [[table.encode(rest, dt) for _, rest in calls] for calls in self._calls]
            if all(t is not None for ts in tables for t in ts):
                self._held, self._kernel = self._calls, tabled
                self._calls = [[(k, (t,)) for (k, _), t in zip(calls, ts)]
                               for calls, ts in zip(self._calls, tables)]
        # y_t: a view of the last layer's new h, per buffer set written
        self._y = [b[0][-1, 0] if self._unbatched else b[0][-1] for b in self._bufs]
        self._entry = None  # what later calls call (see __call__)
        # A one-layer stream's arguments after (k, check, x), per buffer set, once _entry is
        # set: its calls skip the loop over layers (0.18 µs of a 2.4 µs RNN step).
        self._one = None
        self.reset(state)

    def reset(self, state=None) -> None:
        """Start again from ``state`` (checked before anything changes), or from zeros."""
        layer, B = self.layer, self.batch_size or 1
        arrays = layer._check_state(state, B, self._unbatched)
        with layer._lock:
            cur = self._bufs[self._cur]
            if arrays is None:
                for a in cur:
                    a.fill(0)
                return
            for a, given in zip(cur, arrays):
                np.copyto(a, given.reshape(a.shape), casting="unsafe")

    @property
    def state(self):
        """A copy of the current state, in ``forward``'s form: (h, c) for an LSTM, else h;
        each (L, B, ·), or (L, ·) without a batch."""
        with self.layer._lock:
            arrays = [a[:, 0].copy() if self._unbatched else a.copy()
                      for a in self._bufs[self._cur]]
        return self.layer._pack_state(arrays)

    def __call__(self, x_t, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Advance one step: x_t (I,) or (B, I) -> y_t (O,) or (B, O), a new array, or
        written into ``out`` (that shape, the layer's dtype) and returned."""
        x = x_t
        # The usual input is exactly the type the kernel is compiled for: a C-contiguous,
        # aligned, writeable (``carray``) array of the layer's dtype, 2-D after the [None]
        # below. Any other input is checked and converted to that type: one signature.
        if type(x) is not np.ndarray or x.dtype is not self._dtype \
                or x.shape != self._x_shape or not x.flags.carray:
            x = self._checked_x(x_t)
        if self._unbatched:
            x = x[None]
        if out is not None:
            self._check_out(out)
        # The layer's lock: a call reads and flips this stream's state and writes the
        # layer's step scratch, which every stream of the layer and its step() share.
        # (acquire and release: a with statement costs 0.08 µs more, 3% of an RNN step)
        lock = self.layer._lock
        lock.acquire()
        try:
            p, check, one = self._cur, self.layer.check_finite, self._one
            if one is not None:
                if not self._entry(0, check, x, *one[p]):
                    self._raise_not_finite(x)
            else:
                kernel = self._entry or self._kernel
                for k, rest in self._calls[p]:
                    if not kernel(k, check, x, *rest):
                        self._raise_not_finite(x)
                if self._entry is None:  # the first call: from now on, the compiled function
                    every = [(k, check, x, *r) for calls in self._calls for k, r in calls]
                    self._entry = _entry_point(self._kernel, every) or self._kernel
                    if len(self._calls[0]) == 1:
                        self._one = [calls[0][1] for calls in self._calls]
            self._cur = p = 1 - p
            if out is None:
                return self._y[p].copy()
            np.copyto(out, self._y[p])
            return out
        finally:
            lock.release()

    step = __call__

    def __reduce_ex__(self, protocol):
        # A copy would point into this stream's buffers (the table holds their addresses).
        raise TypeError("a Stream cannot be copied or pickled: it runs on its layer's live "
                        "buffers; make another with layer.stream(state=stream.state)")

    def _checked_x(self, x_t) -> np.ndarray:
        # Finite in the layer's dtype too: the kernel checks the converted x again, but a
        # finite value that overflows on conversion is named as such here.
        x = real_array("x_t", x_t, self.layer.check_finite, self._dtype)
        if x.shape != self._x_shape:
            raise ValueError(f"x_t must have shape {self._x_shape} (this stream's "
                             f"{'(I,)' if self._unbatched else '(batch_size, I)'}), got {x.shape}")
        return np.require(x, self._dtype, "CAW")  # a copy unless already so

    def _check_out(self, out) -> None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
        if out.dtype != self.layer.dtype:
            raise TypeError(f"out must have the layer's dtype {self.layer.dtype}, got {out.dtype}")
        if out.shape != self._y_shape:
            raise ValueError(f"out must have shape {self._y_shape}, got {out.shape}")
        if not out.flags.writeable:
            raise ValueError("out must be writeable")

    def _raise_not_finite(self, x) -> None:
        if not np.isfinite(x).all():
            raise ValueError("x_t contains NaN or Inf (pass check_finite=False to the layer to "
                             "skip this check); the stream's state is unchanged")
        raise ValueError("the stream's state or a layer's output contains NaN or Inf "
                         "(non-finite parameters?); reset() the stream")

    def __repr__(self) -> str:
        b = "" if self._unbatched else f"batch_size={self.batch_size}"
        return f"Stream({self.layer!r}{', ' if b else ''}{b})"


def _entry_point(dispatcher, calls):
    """The compiled function that ``dispatcher(*args)`` runs for every ``args`` of
    ``calls``, callable without the dispatcher's typing of the arguments; None if the calls'
    argument types differ (one entry point could not serve them all) or this Numba does not
    expose it. The entry point converts each argument to its compiled type without checking
    it (an array of another dtype or dimension would be misread), so it may only be called
    with arguments of exactly these types."""
    try:
        types = {tuple(dispatcher.typeof_pyval(a) for a in args) for args in calls}
        return dispatcher.overloads[types.pop()].entry_point if len(types) == 1 else None
    except (AttributeError, KeyError, TypeError):
        return None
