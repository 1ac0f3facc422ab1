"""``nlstm.RNN``: the Elman RNN, as ``torch.nn.RNN``."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .kernels import parallel as P
from .kernels import rnn as K
from .recurrent import RecurrentLayer


class RNN(RecurrentLayer):
    """Elman RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu.

    PyTorch's names and layout (``weight_ih_l{k}`` (H, I_k), ``weight_hh_l{k}`` (H, H),
    ``bias_ih_l{k}``, ``bias_hh_l{k}`` (H)). The state is h, (L·D, B, H) or (L·D, H).

    ONNX's options: ``clip=x`` clamps the pre-activation to [-x, x]; ``activations=(f,)``
    (with ``activation_alpha``/``activation_beta``) is any of ONNX's functions by name (see
    :mod:`nlstm.activations`; ``("Relu",)`` is ``nonlinearity="relu"``). Functions other
    than tanh and relu, and clip, take a slower, general path.
    """

    _G = 1
    _state_labels = ("h0",)
    _name = "RNN"
    _gate_math = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 bidirectional: bool = False, dtype=np.float32, seed: Optional[int] = None,
                 check_finite: bool = True, dropout: float = 0.0, clip: Optional[float] = None,
                 activations: Optional[Sequence[str]] = None,
                 activation_alpha: Optional[Sequence[float]] = None,
                 activation_beta: Optional[Sequence[float]] = None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        if activations is not None and nonlinearity != "tanh":
            raise ValueError("give nonlinearity or activations, not both "
                             "(activations=('Relu',) is nonlinearity='relu')")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, bidirectional,
                         dtype, seed, check_finite, dropout)
        self._set_options(clip, activations, activation_alpha, activation_beta)
        spec = self._act_spec
        if spec is not None and all(s[0][0] == "Relu" for s in spec):
            self._act_spec, self._relu = None, True  # the relu loops
            self.nonlinearity = "relu"
        else:
            self._relu = nonlinearity == "relu"
        if self.clip is not None and self._act_spec is None:
            from .activations import parse
            self._act_spec = parse("RNN", ("Relu" if self._relu else "Tanh",),
                                   directions=self.num_directions)
        self._clip = self.dtype.type(np.inf if self.clip is None else self.clip)
        self._init_params()

    def _config_extra(self) -> dict:
        # The constructor's argument: with activations given it can only have been "tanh"
        # (the relu an all-Relu list means shows in self.nonlinearity, not in the config).
        return dict(nonlinearity="tanh" if self.activations is not None else self.nonlinearity,
                    **self._options_config())

    def _config_defaults(self) -> dict:
        return dict(nonlinearity="tanh", clip=None, activations=None, activation_alpha=None,
                    activation_beta=None)

    def _scratch(self, B: int, e) -> tuple:
        H = self.hidden_size
        return (np.empty(B, np.int64), np.empty(B, np.int64), e(B, H), e(B, H))

    def backward(self, dy, dh_n=None):
        """``dx, dh0 = rnn.backward(dy, dh_n)``; see ``RecurrentLayer._backward``."""
        return self._backward(dy, [dh_n])

    def _forward_dir(self, ws, k, d, inp) -> None:
        pre = self._project(ws, k, d, inp)  # the kernel adds the biases
        i, H = k * self.num_directions + d, self.hidden_size
        w = self._w("weight_hh", k, d)
        wf = self._packed_panels(k, d, w, "forward")
        args = K.rnn_forward_args(
            y=ws.y[k], h=ws.states[0][k][d], h_n=ws.final[0][i], pre=pre, w_hh_t=w,
            bias=self._p("bias_ih", k, d) + self._p("bias_hh", k, d), h0=ws.init[0][i],
            lengths=ws.lengths, reverse=d == 1, col=d * H, relu=self._relu, acts=self._acts(d),
            clip=self._clip, wf=wf)
        if ws.key[1] == 1:  # one row: its own kernel (see LSTM._forward_dir)
            K.rnn_forward_row(0, *args)
            return
        self._rows(ws, P.rnn_forward, args)

    def _backward_dir(self, ws, k, d, inp, dy, dx) -> None:
        i, H = k * self.num_directions + d, self.hidden_size
        dpre, h = ws.gates[k][d], ws.states[0][k][d]
        w = self._w("weight_hh", k, d)
        wc = self._packed_panels(k, d, w.T, "carry")
        self._rows(ws, P.rnn_backward, K.rnn_backward_args(
            dpre=dpre, dh0=ws.dinit[0][i], dy=dy, dh_n=ws.dfinal[0][i], h=h, w_hh_t=w,
            lengths=ws.lengths, reverse=d == 1, col=d * H, relu=self._relu, acts=self._acts(d),
            clip=self._clip, wc=wc))
        self._input_grads(ws, k, d, inp, dpre, dx, hprev=self._hprev(h, d))

    def _step_kernel(self):
        return K.rnn_step if self._act_spec is None else K.rnn_step_options

    def _step_table_kernel(self):
        return K.rnn_step_table if self._step_kernel() is K.rnn_step else None

    def _make_step_args(self, k: int) -> tuple:
        return K.rnn_step_args(
            w_ih_t=self._w("weight_ih", k, 0), w_hh_t=self._w("weight_hh", k, 0),
            b_ih=self._p("bias_ih", k, 0), b_hh=self._p("bias_hh", k, 0), relu=self._relu,
            options=None if self._act_spec is None else (self._acts(0), self._clip),
            pre=self._step_work)
