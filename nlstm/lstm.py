"""``nlstm.LSTM``: a multi-layer, optionally bidirectional LSTM with PyTorch's API and layout."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .kernels import lstm as K
from .recurrent import RecurrentLayer, Workspace

State = Tuple[np.ndarray, np.ndarray]


class LSTM(RecurrentLayer):
    """Long short-term memory, as ``torch.nn.LSTM``.

    i = σ(W_ii x + b_ii + W_hi h + b_hi), f = σ(…), g = tanh(…), o = σ(…),
    c' = f⊙c + i⊙g, h' = o⊙tanh(c').

    Parameters are kept in PyTorch's layout and names (``weight_ih_l{k}`` (4H, I_k),
    ``weight_hh_l{k}`` (4H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4H), gates i, f, g, o,
    ``_reverse`` for the backward direction), so PyTorch checkpoints load unchanged.
    The state is the pair (h, c), each (L·D, B, H), or (L·D, H) for unbatched input.
    ``dropout`` applies between stacked layers in training forwards only.
    """

    _G = 4
    _state_labels = ("h0", "c0")
    _name = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, bidirectional: bool = False, dtype=np.float32,
                 seed: Optional[int] = None, check_finite: bool = True, dropout: float = 0.0):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, bidirectional,
                         dtype, seed, check_finite, dropout)
        self._init_params()

    def _state_sizes(self):
        return (self.hidden_size, self.hidden_size)

    def __call__(self, x, state: Optional[State] = None, lengths=None):
        """Inference: ``y, (h_n, c_n) = lstm(x, state, lengths)``."""
        return self.forward(x, state, lengths, train=False)

    def backward(self, dy, dh_n=None, dc_n=None):
        """``dx, (dh0, dc0) = lstm.backward(dy, dh_n, dc_n)``; see ``RecurrentLayer._backward``."""
        return self._backward(dy, [dh_n, dc_n])

    def _forward_dir(self, ws: Workspace, k: int, d: int, inp: np.ndarray) -> None:
        gates = self._project(ws, k, d, inp, self._p("bias_ih", k, d) + self._p("bias_hh", k, d))
        i, H = k * self.num_directions + d, self.hidden_size
        (h, c), (h0, c0), (h_n, c_n) = self._per_dir(ws, k, d, i)
        args = (ws.y[k], h, c, h_n, c_n, gates, self._p("weight_hh", k, d), h0, c0, ws.lengths,
                d == 1, d * H)
        self._rows(ws, lambda b0, b1, _: K.lstm_forward(b0, b1, *args))

    def _per_dir(self, ws: Workspace, k: int, d: int, i: int):
        return ([s[k][d] for s in ws.states], [a[i] for a in ws.init], [a[i] for a in ws.final])

    def _backward_dir(self, ws, k, d, inp, dy, dx) -> None:
        i, H = k * self.num_directions + d, self.hidden_size
        gates = ws.gates[k][d]
        h, c = ws.states[0][k][d], ws.states[1][k][d]
        args = (gates, ws.dinit[0][i], ws.dinit[1][i], dy, ws.dfinal[0][i], ws.dfinal[1][i],
                gates, h, c, self._p("weight_hh", k, d), ws.lengths, d == 1, d * H)
        self._rows(ws, lambda b0, b1, t: K.lstm_backward(b0, b1, *args, ws.work[t]))
        # The gates buffer now holds the gate gradients.
        self._input_grads(ws, k, d, inp, gates, dx)
        self._hidden_grads(ws, k, d, gates, self._hprev(h, d))

    def _step_layer(self, k, x, old, new) -> None:
        K.lstm_step(new[0], new[1], x, old[0], old[1], self._p("weight_ih", k, 0),
                    self._p("weight_hh", k, 0), self._p("bias_ih", k, 0), self._p("bias_hh", k, 0),
                    self._step_work)

    def _work_size(self) -> int:
        return self._G * self.hidden_size
