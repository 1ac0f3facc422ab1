"""A plain NumPy LSTM: the "numpy" peer (float32) and the float64 reference of the check.

Written the way a careful NumPy user would: the input projection of all steps is one
matrix product, the loop over time does one (B, H)·(H, 4H) product per step, and the
backward pass is hand-written BPTT with whole-sequence weight-gradient products.
It shares no code with nlstm, so agreeing with it in float64 is an independent check.

Layout and names are PyTorch's: x (T, B, I), states (L·D, B, H), gates i, f, g, o.
Padded batches: row b runs steps 0..lengths[b]-1; its outputs past that are zero and its
final state is the state after its own last step. The reverse direction of row b reads
its valid prefix backwards, done here by a per-row permutation of time that is its own
inverse, so the same masked forward loop serves both directions.
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


class NumpyLSTM:
    """Multi-layer, optionally bidirectional LSTM in NumPy, any float dtype."""

    def __init__(self, params: dict, num_layers: int, bidirectional: bool, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        self.L = num_layers
        self.D = 2 if bidirectional else 1
        self.H = params["weight_hh_l0"].shape[1]
        self.layers = []  # layers[k][d] = (w_ih (4H, I), w_hhᵀ (H, 4H), b (4H,))
        for k in range(num_layers):
            dirs = []
            for d in range(self.D):
                s = f"l{k}" + ("_reverse" if d else "")
                w_ih = np.asarray(params[f"weight_ih_{s}"], self.dtype)
                w_hh = np.asarray(params[f"weight_hh_{s}"], self.dtype)
                b = np.zeros(4 * self.H, self.dtype)
                if f"bias_ih_{s}" in params:
                    b = np.asarray(params[f"bias_ih_{s}"], self.dtype) + np.asarray(params[f"bias_hh_{s}"], self.dtype)
                dirs.append((np.ascontiguousarray(w_ih), np.ascontiguousarray(w_hh.T), b))
            self.layers.append(dirs)
        self.has_bias = "bias_ih_l0" in params
        self._cache = None

    # ---- one direction ------------------------------------------------------------------
    def _scan(self, x, w_ih, w_hhT, b, h, c, mask, train):
        """Masked forward loop. x (T, B, I); mask (T, B, 1) bool or None (all steps valid)."""
        T, B, _ = x.shape
        H = self.H
        xw = (x.reshape(T * B, -1) @ w_ih.T).reshape(T, B, 4 * H)
        xw += b
        y = np.zeros((T, B, H), self.dtype)
        saved = None
        if train:  # post-activation gates, state before each step, cell after each step
            saved = (np.empty((T, B, 4 * H), self.dtype), np.empty((T, B, H), self.dtype),
                     np.empty((T, B, H), self.dtype), np.empty((T, B, H), self.dtype))
        for t in range(T):
            z = xw[t] + h @ w_hhT
            i = _sigmoid(z[:, :H])
            f = _sigmoid(z[:, H:2 * H])
            g = np.tanh(z[:, 2 * H:3 * H])
            o = _sigmoid(z[:, 3 * H:])
            cn = f * c + i * g
            hn = o * np.tanh(cn)
            if train:
                act, hp, cp, cnew = saved
                act[t, :, :H], act[t, :, H:2 * H], act[t, :, 2 * H:3 * H], act[t, :, 3 * H:] = i, f, g, o
                hp[t], cp[t], cnew[t] = h, c, cn
            if mask is None:
                h, c = hn, cn
                y[t] = hn
            else:
                m = mask[t]
                h = np.where(m, hn, h)
                c = np.where(m, cn, c)
                y[t] = np.where(m, hn, 0)
        return y, h, c, saved

    def _scan_backward(self, x, w_ih, w_hhT, saved, mask, dy, dh, dc):
        """BPTT of ``_scan``: returns dx, dW_ih, dW_hh, db, dh0, dc0."""
        act, hp, cp, cnew = saved
        T, B, _ = x.shape
        H = self.H
        dz = np.empty((T, B, 4 * H), self.dtype)
        w_hh = w_hhT.T
        for t in range(T - 1, -1, -1):
            i, f, g, o = act[t, :, :H], act[t, :, H:2 * H], act[t, :, 2 * H:3 * H], act[t, :, 3 * H:]
            m = None if mask is None else mask[t]
            dhn = dy[t] + dh
            dcn = dc
            if m is not None:  # steps past a row's length pass the gradient straight through
                dhn = np.where(m, dhn, 0)
                dcn = np.where(m, dcn, 0)
            tc = np.tanh(cnew[t])
            dcn = dcn + dhn * o * (1 - tc * tc)
            dz[t, :, :H] = dcn * g * i * (1 - i)
            dz[t, :, H:2 * H] = dcn * cp[t] * f * (1 - f)
            dz[t, :, 2 * H:3 * H] = dcn * i * (1 - g * g)
            dz[t, :, 3 * H:] = dhn * tc * o * (1 - o)
            dh_prev = dz[t] @ w_hh
            dc_prev = dcn * f
            if m is not None:
                dh_prev = np.where(m, dh_prev, dh)
                dc_prev = np.where(m, dc_prev, dc)
            dh, dc = dh_prev, dc_prev
        dz2 = dz.reshape(T * B, 4 * H)
        dx = (dz2 @ w_ih).reshape(T, B, -1)
        dw_ih = dz2.T @ x.reshape(T * B, -1)
        dw_hh = dz2.T @ hp.reshape(T * B, H)
        return dx, dw_ih, dw_hh, dz2.sum(axis=0), dh, dc

    # ---- whole layer ----------------------------------------------------------------------
    def forward(self, x, lengths=None, state=None, train=False):
        """x (T, B, I) -> y (T, B, D·H), (h_n, c_n) each (L·D, B, H)."""
        x = np.asarray(x, self.dtype)
        T, B, _ = x.shape
        H, D = self.H, self.D
        if state is None:
            h0 = np.zeros((self.L * D, B, H), self.dtype)
            c0 = h0
        else:
            h0, c0 = (np.asarray(s, self.dtype) for s in state)
        mask = rev = None
        if lengths is not None and np.any(np.asarray(lengths) < T):
            mask = (np.arange(T)[:, None] < np.asarray(lengths)[None, :])[:, :, None]
            rev = reverse_index(lengths, T)
        cols = np.arange(B)
        flip = (lambda a: a[::-1]) if rev is None else (lambda a: a[rev, cols])
        h_n = np.empty((self.L * D, B, H), self.dtype)
        c_n = np.empty_like(h_n)
        inp = x
        caches = []
        for k, dirs in enumerate(self.layers):
            y = np.empty((T, B, D * H), self.dtype)
            layer_cache = []
            for d, (w_ih, w_hhT, b) in enumerate(dirs):
                xin = inp if d == 0 else flip(inp)
                s = k * D + d
                yd, h_n[s], c_n[s], saved = self._scan(xin, w_ih, w_hhT, b, h0[s], c0[s], mask, train)
                y[:, :, d * H:(d + 1) * H] = yd if d == 0 else flip(yd)
                layer_cache.append((xin, saved))
            caches.append(layer_cache)
            inp = y
        self._cache = (caches, mask, flip, T, B) if train else None
        return y, (h_n, c_n)

    def backward(self, dy, dh_n=None, dc_n=None):
        """Gradients of the last training forward: dx, (dh0, dc0), grads (PyTorch names)."""
        caches, mask, flip, T, B = self._cache
        H, D = self.H, self.D
        dy = np.asarray(dy, self.dtype)
        zeros = np.zeros((self.L * D, B, H), self.dtype)
        dh_n = zeros if dh_n is None else np.asarray(dh_n, self.dtype)
        dc_n = zeros if dc_n is None else np.asarray(dc_n, self.dtype)
        dh0 = np.empty_like(zeros)
        dc0 = np.empty_like(zeros)
        grads = {}
        dout = dy
        for k in reversed(range(self.L)):
            dinp = None
            for d, (w_ih, w_hhT, _) in enumerate(self.layers[k]):
                xin, saved = caches[k][d]
                s = k * D + d
                dyd = dout[:, :, d * H:(d + 1) * H]
                if d == 1:
                    dyd = flip(dyd)
                dx, dw_ih, dw_hh, db, dh0[s], dc0[s] = self._scan_backward(
                    xin, w_ih, w_hhT, saved, mask, dyd, dh_n[s], dc_n[s])
                if d == 1:
                    dx = flip(dx)
                dinp = dx if dinp is None else dinp + dx
                sfx = f"l{k}" + ("_reverse" if d else "")
                grads[f"weight_ih_{sfx}"] = dw_ih
                grads[f"weight_hh_{sfx}"] = dw_hh
                if self.has_bias:
                    grads[f"bias_ih_{sfx}"] = db
                    grads[f"bias_hh_{sfx}"] = db.copy()
            dout = dinp
        self._cache = None
        return dout, (dh0, dc0), grads

    def step(self, x_t, state=None):
        """One step of every layer (unidirectional): x_t (B, I) -> y_t (B, H), (h, c) (L, B, H)."""
        x_t = np.asarray(x_t, self.dtype)
        B = x_t.shape[0]
        if state is None:
            h = np.zeros((self.L, B, self.H), self.dtype)
            c = h
        else:
            h, c = state
        h_new = np.empty((self.L, B, self.H), self.dtype)
        c_new = np.empty_like(h_new)
        inp = x_t
        H = self.H
        for k, ((w_ih, w_hhT, b),) in enumerate(self.layers):
            z = inp @ w_ih.T + h[k] @ w_hhT + b
            i, f, o = _sigmoid(z[:, :H]), _sigmoid(z[:, H:2 * H]), _sigmoid(z[:, 3 * H:])
            c_new[k] = f * c[k] + i * np.tanh(z[:, 2 * H:3 * H])
            h_new[k] = o * np.tanh(c_new[k])
            inp = h_new[k]
        return h_new[-1], (h_new, c_new)
