"""``nlstm.LSTM``: a multi-layer, optionally bidirectional LSTM with PyTorch's API and layout."""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from . import _threads
from ._validate import expect_shape, layer_dtype, lengths_array, positive_int, real_array
from .kernels import lstm as K

State = Tuple[np.ndarray, np.ndarray]


class _Workspace:
    """Every buffer one (T, B) shape needs, allocated once and reused.

    x: (T, B, I) the input, time-major, in the layer's dtype
    y[k]: (T, B, D·H) output of layer k
    gates[k][d]: (T, B, 4H) input projection, then gates, then (in backward) gate gradients
    h[k][d], c[k][d]: (T+1, B, H) state slots (see nlstm.kernels.lstm)
    h_n, c_n, dh0, dc0: (L·D, B, H)
    dy_a, dy_b: (T, B, D·H) ping-pong buffers for gradients between layers; dx: (T, B, I)
    work: (threads, H) scratch of the backward kernel
    masks[k]: (T, B, D·H) dropout mask (0 or 1/(1-p)) applied to y[k] for k < L-1
    """

    def __init__(self, T, B, I, H, L, D, dtype, threads, dropout):
        self.key = (T, B)
        e = lambda *s: np.empty(s, dtype)
        self.x = e(T, B, I)
        self.y = [e(T, B, D * H) for _ in range(L)]
        self.gates = [[e(T, B, 4 * H) for _ in range(D)] for _ in range(L)]
        self.h = [[e(T + 1, B, H) for _ in range(D)] for _ in range(L)]
        self.c = [[e(T + 1, B, H) for _ in range(D)] for _ in range(L)]
        self.h0 = e(L * D, B, H)
        self.c0 = e(L * D, B, H)
        self.h_n = e(L * D, B, H)
        self.c_n = e(L * D, B, H)
        self.dh_n = e(L * D, B, H)
        self.dc_n = e(L * D, B, H)
        self.dh0 = e(L * D, B, H)
        self.dc0 = e(L * D, B, H)
        self.dy_a = e(T, B, D * H)
        self.dy_b = e(T, B, D * H)
        self.dx = e(T, B, I)
        self.work = e(threads, H)
        self.lengths = np.empty(B, np.int64)
        self.masks = [e(T, B, D * H) for _ in range(L - 1)] if dropout else []


class LSTM:
    """Long short-term memory, as ``torch.nn.LSTM``.

    Parameters are kept in PyTorch's layout and names (``weight_ih_l{k}`` (4H, I_k),
    ``weight_hh_l{k}`` (4H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4H), gates i, f, g, o,
    ``_reverse`` for the backward direction), so PyTorch checkpoints load unchanged.

    Shapes: x is (T, B, I), (B, T, I) with ``batch_first``, or unbatched (T, I); states
    are (L·D, B, H), or (L·D, H) for unbatched input.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, bidirectional: bool = False, dtype=np.float32,
                 seed: Optional[int] = None, check_finite: bool = True, dropout: float = 0.0):
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.num_layers = positive_int("num_layers", num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        self.dtype = layer_dtype(dtype)
        self.check_finite = bool(check_finite)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.seed = seed
        H = self.hidden_size
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(H)
        self.params: dict = {}
        for name, shape in self._param_shapes().items():
            self.params[name] = rng.uniform(-bound, bound, shape).astype(self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._dropout_rng = rng  # continues the init stream: one seed fixes both
        self._zero_bias = np.zeros(4 * H, self.dtype)
        self._ws: Optional[_Workspace] = None
        self._trained = False  # the workspace holds a training forward that backward may use
        self._step_pre = np.empty(4 * H, self.dtype)

    # ---- parameters -------------------------------------------------------------------
    def _suffixes(self):
        return ("", "_reverse")[: self.num_directions]

    def _param_shapes(self) -> dict:
        H, D = self.hidden_size, self.num_directions
        shapes = {}
        for k in range(self.num_layers):
            I = self.input_size if k == 0 else D * H
            for sfx in self._suffixes():
                shapes[f"weight_ih_l{k}{sfx}"] = (4 * H, I)
                shapes[f"weight_hh_l{k}{sfx}"] = (4 * H, H)
                if self.bias:
                    shapes[f"bias_ih_l{k}{sfx}"] = (4 * H,)
                    shapes[f"bias_hh_l{k}{sfx}"] = (4 * H,)
        return shapes

    def _weights(self, k: int, d: int):
        sfx = self._suffixes()[d]
        p = self.params
        if self.bias:
            return (p[f"weight_ih_l{k}{sfx}"], p[f"weight_hh_l{k}{sfx}"],
                    p[f"bias_ih_l{k}{sfx}"], p[f"bias_hh_l{k}{sfx}"])
        return p[f"weight_ih_l{k}{sfx}"], p[f"weight_hh_l{k}{sfx}"], self._zero_bias, self._zero_bias

    def get_config(self) -> dict:
        """The constructor arguments, as JSON-compatible values."""
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                    bidirectional=self.bidirectional, dtype=self.dtype.name, seed=self.seed,
                    check_finite=self.check_finite, dropout=self.dropout)

    def state_dict(self) -> dict:
        """Copies of the parameters, under PyTorch's key names."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Load parameters from PyTorch-named arrays (anything ``np.asarray`` takes).

        Checks every key and shape before changing anything.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        shapes = self._param_shapes()
        missing = sorted(set(shapes) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(shapes))
        if missing or unexpected:
            raise ValueError(f"state_dict keys do not match: missing {missing}, unexpected {unexpected}")
        new = {}
        for name, shape in shapes.items():
            a = real_array(f"state_dict[{name!r}]", state_dict[name], check_finite=True)
            expect_shape(f"state_dict[{name!r}]", a, shape)
            new[name] = a
        for name, a in new.items():
            np.copyto(self.params[name], a, casting="unsafe")

    def zero_grad(self) -> None:
        """Set every accumulated parameter gradient to zero."""
        for g in self.grads.values():
            g.fill(0)

    # ---- input checks -----------------------------------------------------------------
    def _check_input(self, x) -> Tuple[np.ndarray, bool]:
        """x as given (checked), and whether it is unbatched."""
        x = real_array("input", x, self.check_finite)
        if x.ndim not in (2, 3):
            raise ValueError(f"input must be 2-D (T, I) unbatched or 3-D batched, got {x.ndim}-D "
                             f"with shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input.size(-1) must be equal to input_size. Expected "
                             f"{self.input_size}, got {x.shape[-1]}")
        if x.size == 0:
            raise ValueError(f"input must have at least one time step and one batch row, got "
                             f"shape {x.shape}")
        return x, x.ndim == 2

    def _state_shape(self, B: int, unbatched: bool) -> tuple:
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        return (LD, H) if unbatched else (LD, B, H)

    def _check_state(self, state, B: int, unbatched: bool):
        if state is None:
            return None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError("state must be a pair (h0, c0)")
        shape = self._state_shape(B, unbatched)
        out = []
        for name, s in zip(("h0", "c0"), state):
            a = real_array(f"state {name}", s, self.check_finite)
            expect_shape(f"state {name}", a, shape)
            out.append(a)
        return out

    def _time_major(self, a: np.ndarray, unbatched: bool) -> np.ndarray:
        """A view of a user-layout sequence array as (T, B, F)."""
        if unbatched:
            return a[:, None, :]
        return a.transpose(1, 0, 2) if self.batch_first else a

    def _user_layout(self, a: np.ndarray, unbatched: bool) -> np.ndarray:
        """A fresh user-layout copy of a (T, B, F) array."""
        if unbatched:
            return a[:, 0, :].copy()
        return np.ascontiguousarray(a.transpose(1, 0, 2)) if self.batch_first else a.copy()

    def _workspace(self, T: int, B: int) -> _Workspace:
        ws = self._ws
        if ws is None or ws.key != (T, B):
            ws = _Workspace(T, B, self.input_size, self.hidden_size, self.num_layers,
                            self.num_directions, self.dtype, _threads.get_num_threads(),
                            self.dropout > 0)
            self._ws = ws
        return ws

    # ---- forward ----------------------------------------------------------------------
    def __call__(self, x, state: Optional[State] = None, lengths=None):
        """Inference: ``y, (h_n, c_n) = lstm(x, state, lengths)``."""
        return self.forward(x, state, lengths, train=False)

    def forward(self, x, state: Optional[State] = None, lengths=None, train: bool = True):
        """Run the whole sequence; with ``train`` keep what ``backward`` needs.

        x: (T, B, I), (B, T, I) with batch_first, or (T, I)
        state: optional (h0, c0), each (L·D, B, H) or (L·D, H)
        lengths: optional (B,) ints in 0..T; outputs past a row's length are zero and its
                 final state is the state at its own last step
        Returns y: (T, B, D·H) (or batch-first / unbatched) and (h_n, c_n).
        """
        x, unbatched = self._check_input(x)
        xt = self._time_major(x, unbatched)
        T, B = xt.shape[0], xt.shape[1]
        state = self._check_state(state, B, unbatched)
        if lengths is not None:
            if unbatched:
                raise ValueError("lengths is only for batched input; unbatched input is one "
                                 "sequence of length T")
            lens = lengths_array(lengths, B, T)
        # Everything is checked: from here on the workspace may change.
        self._trained = False
        ws = self._workspace(T, B)
        np.copyto(ws.x, xt, casting="unsafe")
        if lengths is None:
            ws.lengths.fill(T)
        else:
            ws.lengths[:] = lens
        if state is None:
            ws.h0.fill(0)
            ws.c0.fill(0)
        else:
            np.copyto(ws.h0, state[0].reshape(ws.h0.shape), casting="unsafe")
            np.copyto(ws.c0, state[1].reshape(ws.c0.shape), casting="unsafe")
        self._run_forward(ws, train)
        self._unbatched = unbatched
        self._trained = bool(train)
        y = self._user_layout(ws.y[-1], unbatched)
        shape = self._state_shape(B, unbatched)
        return y, (ws.h_n.reshape(shape).copy(), ws.c_n.reshape(shape).copy())

    def _run_forward(self, ws: _Workspace, train: bool) -> None:
        T, B = ws.key
        H, D = self.hidden_size, self.num_directions
        work = float(T) * B * 4 * H * H
        inp = ws.x
        for k in range(self.num_layers):
            y = ws.y[k]
            for d in range(D):
                w_ih, w_hh, b_ih, b_hh = self._weights(k, d)
                gates = ws.gates[k][d]
                # The input projection of every step at once, biases folded in.
                np.matmul(inp.reshape(T * B, -1), w_ih.T, out=gates.reshape(T * B, 4 * H))
                gates += b_ih
                gates += b_hh
                h, c, i = ws.h[k][d], ws.c[k][d], k * D + d
                args = (y, h, c, ws.h_n[i], ws.c_n[i], gates, w_hh, ws.h0[i], ws.c0[i],
                        ws.lengths, d == 1, d * H)
                _threads.run_rows(B, work, lambda b0, b1, _: K.lstm_forward(b0, b1, *args))
            if train and self.dropout and k < self.num_layers - 1:
                # Inverted dropout on the input of the next layer; y[k] is not needed again
                # except as that input, so it is masked in place.
                mask = ws.masks[k]
                keep = 1.0 - self.dropout
                self._dropout_rng.random(dtype=self.dtype, out=mask)
                np.less(mask, keep, out=mask)
                mask *= self.dtype.type(1.0 / keep)
                y *= mask
            inp = y

    # ---- backward ---------------------------------------------------------------------
    def backward(self, dy, dh_n=None, dc_n=None):
        """Gradients of the last training forward.

        dy: gradient of y, same shape as y; dh_n, dc_n: optional gradients of h_n, c_n.
        Returns dx (shape of x) and (dh0, dc0) (shape of the state), and adds every
        parameter gradient into ``self.grads``.
        """
        if not self._trained:
            raise ValueError("backward() needs a forward(..., train=True) first, and each "
                             "training forward can be backpropagated once")
        ws = self._ws
        T, B = ws.key
        unbatched = self._unbatched
        dy = real_array("dy", dy, self.check_finite)
        y_shape = self._y_shape(T, B, unbatched)
        expect_shape("dy", dy, y_shape)
        s_shape = self._state_shape(B, unbatched)
        grads_n = []
        for name, g in (("dh_n", dh_n), ("dc_n", dc_n)):
            if g is not None:
                g = real_array(name, g, self.check_finite)
                expect_shape(name, g, s_shape)
            grads_n.append(g)
        # Everything is checked.
        self._trained = False
        np.copyto(ws.dy_a, self._time_major(dy, unbatched), casting="unsafe")
        for buf, g in zip((ws.dh_n, ws.dc_n), grads_n):
            if g is None:
                buf.fill(0)
            else:
                np.copyto(buf, g.reshape(buf.shape), casting="unsafe")
        dx = self._run_backward(ws)
        return (self._user_layout(dx, unbatched),
                (ws.dh0.reshape(s_shape).copy(), ws.dc0.reshape(s_shape).copy()))

    def _y_shape(self, T, B, unbatched):
        F = self.num_directions * self.hidden_size
        if unbatched:
            return (T, F)
        return (B, T, F) if self.batch_first else (T, B, F)

    def _run_backward(self, ws: _Workspace) -> np.ndarray:
        T, B = ws.key
        H, D = self.hidden_size, self.num_directions
        work = float(T) * B * 4 * H * H
        if ws.work.shape[0] < _threads.get_num_threads():  # threads were added since allocation
            ws.work = np.empty((_threads.get_num_threads(), H), self.dtype)
        dy, spare = ws.dy_a, ws.dy_b
        for k in reversed(range(self.num_layers)):
            inp = ws.x if k == 0 else ws.y[k - 1]
            dx = ws.dx if k == 0 else spare
            for d in range(D):
                w_ih, w_hh, _, _ = self._weights(k, d)
                gates, h, c, i = ws.gates[k][d], ws.h[k][d], ws.c[k][d], k * D + d
                args = (gates, ws.dh0[i], ws.dc0[i], dy, ws.dh_n[i], ws.dc_n[i], gates, h, c, w_hh,
                        ws.lengths, d == 1, d * H)
                _threads.run_rows(B, work, lambda b0, b1, t: K.lstm_backward(b0, b1, *args, ws.work[t]))
                # Whole-sequence products: gates now hold the gate gradients.
                dg = gates.reshape(T * B, 4 * H)
                sfx = self._suffixes()[d]
                hprev = h[1:] if d == 1 else h[:-1]
                self.grads[f"weight_ih_l{k}{sfx}"] += dg.T @ inp.reshape(T * B, -1)
                self.grads[f"weight_hh_l{k}{sfx}"] += dg.T @ hprev.reshape(T * B, H)
                if self.bias:
                    db = dg.sum(axis=0)
                    self.grads[f"bias_ih_l{k}{sfx}"] += db
                    self.grads[f"bias_hh_l{k}{sfx}"] += db
                dx2 = dx.reshape(T * B, -1)
                if d == 0:
                    np.matmul(dg, w_ih, out=dx2)
                else:
                    dx2 += dg @ w_ih
            if k > 0 and self.dropout:
                dx *= ws.masks[k - 1]
            dy, spare = dx, dy
        return ws.dx

    # ---- streaming --------------------------------------------------------------------
    def step(self, x_t, state: Optional[State] = None):
        """Advance every layer by one time step: ``y_t, (h, c) = lstm.step(x_t, state)``.

        x_t: (B, I) or (I,); state: optional (h, c), each (L, B, H) or (L, H).
        Equal to running the sequence in one call, one step at a time.
        """
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional LSTM: a bidirectional layer must see "
                             "the whole sequence")
        x = real_array("x_t", x_t, self.check_finite)
        if x.ndim not in (1, 2):
            raise ValueError(f"x_t must be 1-D (I,) or 2-D (B, I), got shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x_t.size(-1) must be equal to input_size. Expected "
                             f"{self.input_size}, got {x.shape[-1]}")
        unbatched = x.ndim == 1
        B = 1 if unbatched else x.shape[0]
        if B == 0:
            raise ValueError("x_t must have at least one batch row")
        st = self._check_state(state, B, unbatched)
        L, H, dt = self.num_layers, self.hidden_size, self.dtype
        x = np.ascontiguousarray(x.reshape(B, self.input_size), dtype=dt)
        h_new = np.empty((L, B, H), dt)
        c_new = np.empty((L, B, H), dt)
        if st is None:
            h_old = np.zeros((L, B, H), dt)
            c_old = h_old
        else:
            h_old = np.ascontiguousarray(st[0], dtype=dt).reshape(L, B, H)
            c_old = np.ascontiguousarray(st[1], dtype=dt).reshape(L, B, H)
        inp = x
        for k in range(L):
            w_ih, w_hh, b_ih, b_hh = self._weights(k, 0)
            K.lstm_step(h_new[k], c_new[k], inp, h_old[k], c_old[k], w_ih, w_hh, b_ih, b_hh,
                        self._step_pre)
            inp = h_new[k]
        if unbatched:
            return h_new[-1, 0].copy(), (h_new[:, 0], c_new[:, 0])
        return h_new[-1].copy(), (h_new, c_new)

    def __repr__(self) -> str:
        extra = "".join(f", {n}={getattr(self, n)}" for n, default in
                        (("num_layers", 1), ("bias", True), ("batch_first", False),
                         ("bidirectional", False), ("dropout", 0.0)) if getattr(self, n) != default)
        return f"LSTM({self.input_size}, {self.hidden_size}{extra}, dtype={self.dtype.name})"
