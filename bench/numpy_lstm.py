"""Plain NumPy LSTM, GRU and RNN: the "numpy" peer (float32) and the float64 reference of the check.

Written the way a careful NumPy user would: the input projection of all steps is one
matrix product, the loop over time does one (B, H)·(H, G·H) product per step, and the
backward pass is hand-written BPTT with whole-sequence weight-gradient products.
It shares no code with nlstm, so agreeing with it in float64 is an independent check.

Layout and names are PyTorch's: x (T, B, I), states (L·D, B, H); gates i, f, g, o (LSTM),
r, z, n (GRU, PyTorch's form: r multiplies W_hn h + b_hn), one block (RNN).
Padded batches: row b runs steps 0..lengths[b]-1; its outputs past that are zero and its
final state is the state after its own last step. The reverse direction of row b reads
its valid prefix backwards, done here by a per-row permutation of time that is its own
inverse, so the same masked forward loop serves both directions.

``NumpyRecurrent`` holds the layers, directions, lengths and BPTT loop; each cell only
writes its step (``_cell``) and that step's gradient (``_cell_back``).
"""
from __future__ import annotations

import numpy as np


def _sigmoid(z):
    # tanh form: exact, and no overflow warnings for large |z| in float32
    return 0.5 * np.tanh(0.5 * z) + 0.5


def reverse_index(lengths, T: int) -> np.ndarray:
    """(T, B) time index that reverses each row's first lengths[b] steps and fixes the rest."""
    t = np.arange(T)[:, None]
    L = np.asarray(lengths)[None, :]
    return np.where(t < L, L - 1 - t, t)


class NumpyRecurrent:
    """Multi-layer, optionally bidirectional recurrent layer in NumPy, any float dtype.

    forward -> y, states (a tuple: (h_n,) or (h_n, c_n), each (L·D, B, H));
    backward -> dx, initial-state gradients (same tuple form), grads (PyTorch names);
    step -> y_t, states (each (L, B, H)).
    """
    G = 1            # gate blocks of H rows in weight_ih / weight_hh
    N_STATES = 1     # h, or (h, c)
    FOLD_BIAS = True  # b_hh can join b_ih in the input projection (not for the GRU's n gate)
    SAME_DZ = True   # the input- and recurrent-side pre-activation gradients coincide

    def __init__(self, params: dict, num_layers: int, bidirectional: bool, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        self.L = num_layers
        self.D = 2 if bidirectional else 1
        self.H = params["weight_hh_l0"].shape[1]
        self.has_bias = "bias_ih_l0" in params
        GH = self.G * self.H
        self.layers = []  # layers[k][d] = (w_ih (GH, I), w_hhᵀ (H, GH), b_x (GH,), b_h (GH,) or None)
        for k in range(num_layers):
            dirs = []
            for d in range(self.D):
                s = f"l{k}" + ("_reverse" if d else "")
                w_ih = np.asarray(params[f"weight_ih_{s}"], self.dtype)
                w_hh = np.asarray(params[f"weight_hh_{s}"], self.dtype)
                zero = np.zeros(GH, self.dtype)
                b_ih = np.asarray(params[f"bias_ih_{s}"], self.dtype) if self.has_bias else zero
                b_hh = np.asarray(params[f"bias_hh_{s}"], self.dtype) if self.has_bias else zero
                b_x, b_h = (b_ih + b_hh, None) if self.FOLD_BIAS else (b_ih, b_hh)
                dirs.append((np.ascontiguousarray(w_ih), np.ascontiguousarray(w_hh.T), b_x, b_h))
            self.layers.append(dirs)
        self._cache = None

    # ---- the cell: subclasses -------------------------------------------------------------
    def _cell(self, xw_t, hw_t, states):
        """One step: xw_t = x·W_ihᵀ + b_x, hw_t = h·W_hhᵀ (+ b_h). Returns (new states, saved)."""
        raise NotImplementedError

    def _cell_back(self, saved, dstates, dzx, dzh):
        """Gradient of one step. Writes the pre-activation gradients of the input side into
        dzx (B, G·H) and of the recurrent side into dzh (the same array when SAME_DZ); returns
        the gradients of the previous states that bypass W_hh (None where there is none)."""
        raise NotImplementedError

    # ---- one direction --------------------------------------------------------------------
    def _scan(self, x, p, states, mask, train):
        """Masked forward loop. x (T, B, I); mask (T, B, 1) bool or None (all steps valid)."""
        w_ih, w_hhT, b_x, b_h = p
        T, B, _ = x.shape
        H = self.H
        xw = (x.reshape(T * B, -1) @ w_ih.T).reshape(T, B, self.G * H)
        xw += b_x
        y = np.zeros((T, B, H), self.dtype)
        saved, hp = ([], np.empty((T, B, H), self.dtype)) if train else (None, None)
        for t in range(T):
            hw = states[0] @ w_hhT
            if b_h is not None:
                hw += b_h
            new, sv = self._cell(xw[t], hw, states)
            if train:
                saved.append(sv)
                hp[t] = states[0]
            if mask is None:
                states = new
                y[t] = new[0]
            else:
                m = mask[t]
                states = tuple(np.where(m, a, b) for a, b in zip(new, states))
                y[t] = np.where(m, new[0], 0)
        return y, states, (saved, hp)

    def _scan_backward(self, x, p, cache, mask, dy, dstates):
        """BPTT of ``_scan``: returns dx, dW_ih, dW_hh, db_ih, db_hh, initial-state gradients."""
        saved, hp = cache
        w_ih, w_hhT, _, _ = p
        T, B, _ = x.shape
        GH = self.G * self.H
        dzx = np.empty((T, B, GH), self.dtype)
        dzh = dzx if self.SAME_DZ else np.empty_like(dzx)
        w_hh = w_hhT.T
        for t in range(T - 1, -1, -1):
            m = None if mask is None else mask[t]
            ds = (dy[t] + dstates[0],) + tuple(dstates[1:])
            if m is not None:  # steps past a row's length pass the gradient straight through
                ds = tuple(np.where(m, d, 0) for d in ds)
            direct = self._cell_back(saved[t], ds, dzx[t], dzh[t])
            back = dzh[t] @ w_hh
            prev = (back if direct[0] is None else direct[0] + back,) + tuple(direct[1:])
            if m is not None:
                prev = tuple(np.where(m, a, d) for a, d in zip(prev, dstates))
            dstates = prev
        dzx2 = dzx.reshape(T * B, GH)
        dzh2 = dzh.reshape(T * B, GH)
        dx = (dzx2 @ w_ih).reshape(T, B, -1)
        dw_ih = dzx2.T @ x.reshape(T * B, -1)
        dw_hh = dzh2.T @ hp.reshape(T * B, self.H)
        db_ih = dzx2.sum(axis=0)
        db_hh = db_ih.copy() if self.SAME_DZ else dzh2.sum(axis=0)
        return dx, dw_ih, dw_hh, db_ih, db_hh, dstates

    # ---- whole layer ----------------------------------------------------------------------
    def forward(self, x, lengths=None, state=None, train=False):
        """x (T, B, I) -> y (T, B, D·H), final states (tuple, each (L·D, B, H))."""
        x = np.asarray(x, self.dtype)
        T, B, _ = x.shape
        H, D = self.H, self.D
        if state is None:
            init = (np.zeros((self.L * D, B, H), self.dtype),) * self.N_STATES
        else:
            init = tuple(np.asarray(s, self.dtype) for s in state)
        mask = rev = None
        if lengths is not None and np.any(np.asarray(lengths) < T):
            mask = (np.arange(T)[:, None] < np.asarray(lengths)[None, :])[:, :, None]
            rev = reverse_index(lengths, T)
        cols = np.arange(B)
        flip = (lambda a: a[::-1]) if rev is None else (lambda a: a[rev, cols])
        final = tuple(np.empty((self.L * D, B, H), self.dtype) for _ in range(self.N_STATES))
        inp = x
        caches = []
        for k, dirs in enumerate(self.layers):
            y = np.empty((T, B, D * H), self.dtype)
            layer_cache = []
            for d, p in enumerate(dirs):
                xin = inp if d == 0 else flip(inp)
                s = k * D + d
                yd, st, cache = self._scan(xin, p, tuple(a[s] for a in init), mask, train)
                for f, a in zip(final, st):
                    f[s] = a
                y[:, :, d * H:(d + 1) * H] = yd if d == 0 else flip(yd)
                layer_cache.append((xin, cache))
            caches.append(layer_cache)
            inp = y
        self._cache = (caches, mask, flip, T, B) if train else None
        return y, final

    def backward(self, dy, dfinal=None):
        """Gradients of the last training forward: dx, initial-state gradients, grads."""
        caches, mask, flip, T, B = self._cache
        H, D = self.H, self.D
        dy = np.asarray(dy, self.dtype)
        zeros = np.zeros((self.L * D, B, H), self.dtype)
        dfinal = (zeros,) * self.N_STATES if dfinal is None else \
            tuple(zeros if a is None else np.asarray(a, self.dtype) for a in dfinal)
        dinit = tuple(np.empty_like(zeros) for _ in range(self.N_STATES))
        grads = {}
        dout = dy
        for k in reversed(range(self.L)):
            dinp = None
            for d, p in enumerate(self.layers[k]):
                xin, cache = caches[k][d]
                s = k * D + d
                dyd = dout[:, :, d * H:(d + 1) * H]
                if d == 1:
                    dyd = flip(dyd)
                dx, dw_ih, dw_hh, db_ih, db_hh, d0 = self._scan_backward(
                    xin, p, cache, mask, dyd, tuple(a[s] for a in dfinal))
                for a, g in zip(dinit, d0):
                    a[s] = g
                if d == 1:
                    dx = flip(dx)
                dinp = dx if dinp is None else dinp + dx
                sfx = f"l{k}" + ("_reverse" if d else "")
                grads[f"weight_ih_{sfx}"] = dw_ih
                grads[f"weight_hh_{sfx}"] = dw_hh
                if self.has_bias:
                    grads[f"bias_ih_{sfx}"] = db_ih
                    grads[f"bias_hh_{sfx}"] = db_hh
            dout = dinp
        self._cache = None
        return dout, dinit, grads

    def step(self, x_t, state=None):
        """One step of every layer (unidirectional): x_t (B, I) -> y_t (B, H), states (L, B, H)."""
        x_t = np.asarray(x_t, self.dtype)
        B = x_t.shape[0]
        if state is None:
            state = (np.zeros((self.L, B, self.H), self.dtype),) * self.N_STATES
        new = tuple(np.empty((self.L, B, self.H), self.dtype) for _ in range(self.N_STATES))
        inp = x_t
        for k, ((w_ih, w_hhT, b_x, b_h),) in enumerate(self.layers):
            hw = state[0][k] @ w_hhT
            if b_h is not None:
                hw += b_h
            st, _ = self._cell(inp @ w_ih.T + b_x, hw, tuple(a[k] for a in state))
            for a, v in zip(new, st):
                a[k] = v
            inp = st[0]
        return inp, new


class NumpyLSTM(NumpyRecurrent):
    """c' = f⊙c + i⊙g, h' = o⊙tanh(c'); state (h, c)."""
    G, N_STATES = 4, 2

    def _cell(self, xw_t, hw_t, states):
        h, c = states
        H = self.H
        z = xw_t + hw_t
        i = _sigmoid(z[:, :H])
        f = _sigmoid(z[:, H:2 * H])
        g = np.tanh(z[:, 2 * H:3 * H])
        o = _sigmoid(z[:, 3 * H:])
        cn = f * c + i * g
        tc = np.tanh(cn)
        return (o * tc, cn), (i, f, g, o, c, tc)

    def _cell_back(self, saved, dstates, dzx, dzh):
        i, f, g, o, c, tc = saved
        dhn, dcn = dstates
        H = self.H
        dcn = dcn + dhn * o * (1 - tc * tc)
        dzx[:, :H] = dcn * g * i * (1 - i)
        dzx[:, H:2 * H] = dcn * c * f * (1 - f)
        dzx[:, 2 * H:3 * H] = dcn * i * (1 - g * g)
        dzx[:, 3 * H:] = dhn * tc * o * (1 - o)
        return None, dcn * f


class NumpyGRU(NumpyRecurrent):
    """PyTorch's GRU (ONNX linear_before_reset=1): n = tanh(W_in x + b_in + r⊙(W_hn h + b_hn)),
    h' = (1 − z)⊙n + z⊙h. b_hn stays on the recurrent side, so r's gradient differs there."""
    G, N_STATES, FOLD_BIAS, SAME_DZ = 3, 1, False, False

    def _cell(self, xw_t, hw_t, states):
        (h,) = states
        H = self.H
        r = _sigmoid(xw_t[:, :H] + hw_t[:, :H])
        z = _sigmoid(xw_t[:, H:2 * H] + hw_t[:, H:2 * H])
        hn = hw_t[:, 2 * H:]
        n = np.tanh(xw_t[:, 2 * H:] + r * hn)
        return (n + z * (h - n),), (r, z, n, hn, h)

    def _cell_back(self, saved, dstates, dzx, dzh):
        r, z, n, hn, h = saved
        (dh,) = dstates
        H = self.H
        dn = dh * (1 - z) * (1 - n * n)
        dzx[:, :H] = dn * hn * r * (1 - r)
        dzx[:, H:2 * H] = dh * (h - n) * z * (1 - z)
        dzx[:, 2 * H:] = dn
        dzh[:, :2 * H] = dzx[:, :2 * H]
        dzh[:, 2 * H:] = dn * r
        return (dh * z,)


class NumpyRNN(NumpyRecurrent):
    """Elman RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu."""
    G, N_STATES = 1, 1

    def __init__(self, params, num_layers, bidirectional, dtype=np.float32, nonlinearity="tanh"):
        self.relu = nonlinearity == "relu"
        super().__init__(params, num_layers, bidirectional, dtype)

    def _cell(self, xw_t, hw_t, states):
        pre = xw_t + hw_t
        hn = np.maximum(pre, 0) if self.relu else np.tanh(pre)
        return (hn,), (hn,)

    def _cell_back(self, saved, dstates, dzx, dzh):
        (hn,), (dh,) = saved, dstates
        dzx[:] = dh * (hn > 0) if self.relu else dh * (1 - hn * hn)
        return (None,)


NUMPY_CELLS = {"lstm": NumpyLSTM, "gru": NumpyGRU, "rnn": NumpyRNN}
