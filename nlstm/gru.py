"""``nlstm.GRU``: the gated recurrent unit, as ``torch.nn.GRU`` (and ONNX's default form)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from . import _threads
from .kernels import gru as K
from .kernels import gru_units as KU
from .kernels import parallel as P
from .kernels import units
from .recurrent import RecurrentLayer


class GRU(RecurrentLayer):
    """Gated recurrent unit, gates r, z, n in PyTorch's layout (``weight_ih_l{k}`` (3H, I_k),
    ``weight_hh_l{k}`` (3H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (3H)):

    r = σ(W_ir x + b_ir + W_hr h + b_hr), z = σ(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h' = (1 − z) ⊙ n + z ⊙ h.

    ``linear_before_reset=False`` gives ONNX's default formula instead,
    n = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn). The state is h, (L·D, B, H) or (L·D, H).

    ``zoneout=p`` (Krueger et al., 2017): in training forwards each unit of h keeps its
    previous value with probability p (masks from the layer's seeded stream, as dropout's),
    h' ← m⊙h + (1 − m)⊙h'; inference uses the expectation (m = p).
    ONNX's options: ``clip=x`` clamps the pre-activations of r, z and n to [-x, x];
    ``activations=(f, g)`` (with ``activation_alpha``/``activation_beta``) replaces σ (r, z)
    and tanh (n) by other functions by ONNX's names (see :mod:`nlstm.activations`). Either
    takes a slower, general path.
    """

    _G = 3
    _state_labels = ("h0",)
    _name = "GRU"
    _gate_math = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, bidirectional: bool = False, dtype=np.float32,
                 seed: Optional[int] = None, check_finite: bool = True, dropout: float = 0.0,
                 linear_before_reset: bool = True, clip: Optional[float] = None,
                 activations: Optional[Sequence[str]] = None,
                 activation_alpha: Optional[Sequence[float]] = None,
                 activation_beta: Optional[Sequence[float]] = None, zoneout: float = 0.0):
        self.linear_before_reset = bool(linear_before_reset)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, bidirectional,
                         dtype, seed, check_finite, dropout)
        self._set_options(clip, activations, activation_alpha, activation_beta)
        self._set_zoneout(zoneout)
        self._init_params()
        self._special = self.clip is not None or self._act_spec is not None
        self._clip = self.dtype.type(np.inf if self.clip is None else self.clip)
        self._empty3 = np.zeros((1, 1, 0), self.dtype)

    def _config_extra(self) -> dict:
        return dict(linear_before_reset=self.linear_before_reset, zoneout=self.zoneout,
                    **self._options_config())

    def _config_defaults(self) -> dict:
        return dict(linear_before_reset=True, clip=None, activations=None, activation_alpha=None,
                    activation_beta=None, zoneout=0.0)

    def _gen(self, d: int) -> tuple:
        """The kernels' acts, clip and pre arguments' first two for direction d: the
        layer's activations, or its default ones when it only clips."""
        if not self._special:
            return self._no_acts, self._clip
        from .activations import parse
        spec = self._act_spec or parse("GRU", ("Sigmoid", "Tanh"), directions=self.num_directions)
        return self._acts(d, spec), self._clip

    def backward(self, dy, dh_n=None):
        """``dx, dh0 = gru.backward(dy, dh_n)``; see ``RecurrentLayer._backward``."""
        return self._backward(dy, [dh_n])

    def _extra_buffers(self, T, B, e) -> dict:
        H = self.hidden_size
        return dict(aux=e(T, B, H), dgates_hh=e(T, B, 3 * H),
                    pre=e(T, B, 3 * H) if self._special else self._empty3,
                    **self._zoneout_buffers(T, B, e))

    def _work_size(self) -> int:
        return 10 * self.hidden_size

    def _scratch(self, B: int, e) -> tuple:
        H = self.hidden_size
        return (np.empty(B, np.int64), np.empty(B, np.int64), e(B, H), e(B, H), e(B, H), e(B, 3 * H))

    def _split_units(self) -> bool:
        # see nlstm.kernels.gru_units
        return self.linear_before_reset and not self._special and not self.zoneout

    def _folded_bias(self, k, d) -> np.ndarray:
        """b_ih plus the hidden biases that can move into the input projection."""
        b = self._p("bias_ih", k, d) + self._p("bias_hh", k, d)
        if self.linear_before_reset:  # b_hn stays inside r ⊙ (W_hn h + b_hn)
            H = self.hidden_size
            b[2 * H:] = self._p("bias_ih", k, d)[2 * H:]
        return b

    def _forward_dir(self, ws, k, d, inp) -> None:
        gates = self._project(ws, k, d, inp, self._folded_bias(k, d))
        i, H = k * self.num_directions + d, self.hidden_size
        w, ex = self._w("weight_hh", k, d), ws.extra[k][d]
        named = dict(y=ws.y[k], h=ws.states[0][k][d], h_n=ws.final[0][i], gates=gates,
                     aux=ex["aux"], w_hh_t=w, b_hh=self._p("bias_hh", k, d), h0=ws.init[0][i],
                     lengths=ws.lengths, reverse=d == 1, col=d * H)
        parts = self._unit_parts(ws)
        one_row = parts or (ws.key[1] == 1 and self.linear_before_reset and not self._special)
        if one_row and not ws.train:  # aux, which only backward reads: one row, rewritten
            named["aux"] = named["aux"][:1]  # every step (kernels.slots.saved_at)
        if parts:  # a one-row batch: its hidden units split over the threads
            j0, j1 = units.unit_range(0, parts, H)  # part 0's is the widest
            w_own, acc = self._unit_scratch(parts, H, 3 * (j1 - j0))
            args = KU.gru_forward_units_args(flags=self._barrier_flags(parts), w_own=w_own,
                                             acc=acc, **named)
            _threads.run_units(parts, P.gru_forward_units, args)
            return
        # (the panels end partial at other H; without lbr, W_hn's columns start mid-panel)
        wf = (self._packed_panels(k, d, w, "forward")
              if self._panels_fit() or self.linear_before_reset else self._no_pack)
        if one_row:
            # one row of the PyTorch form: its own kernel (see LSTM._forward_dir)
            K.gru_forward_row(0, *K.gru_forward_row_args(zm=ex["zoneout"][0],
                                                         s=ws.scratch[0][5][0], wf=wf, **named))
            return
        acts, clip = self._gen(d)
        self._rows(ws, P.gru_forward, K.gru_forward_args(
            lbr=self.linear_before_reset, zm=ex["zoneout"][0], acts=acts, clip=clip,
            pre=ex["pre"], wf=wf, **named))

    def _backward_dir(self, ws, k, d, inp, dy, dx) -> None:
        i, H = k * self.num_directions + d, self.hidden_size
        gates, h, ex = ws.gates[k][d], ws.states[0][k][d], ws.extra[k][d]
        # dgates is gates: the kernels write the gradients over the gates they read
        named = dict(dgates=gates, dgates_hh=ex["dgates_hh"], dh0=ws.dinit[0][i], dy=dy,
                     dh_n=ws.dfinal[0][i], gates=gates, aux=ex["aux"], h=h,
                     w_hh_t=self._w("weight_hh", k, d), lengths=ws.lengths, reverse=d == 1,
                     col=d * H)
        parts = self._unit_parts(ws)
        if parts:  # as in _forward_dir
            ws.ensure_scratch(self, 1)
            args = KU.gru_backward_units_args(flags=self._barrier_flags(parts),
                                              direct=ws.scratch[0][4][0], **named)
            _threads.run_units(parts, P.gru_backward_units, args)
        else:
            wc = self._packed_panels(k, d, self._w("weight_hh", k, d).T, "carry")
            acts, clip = self._gen(d)
            self._rows(ws, P.gru_backward, K.gru_backward_args(
                lbr=self.linear_before_reset, zm=ex["zoneout"][0], acts=acts, clip=clip,
                pre=ex["pre"], wc=wc, **named))
        self._input_grads(ws, k, d, inp, gates, dx)
        hprev = self._hprev(h, d)
        if self.linear_before_reset:
            self._hidden_grads(ws, k, d, ex["dgates_hh"], hprev)
        else:  # W_hn reads r ⊙ h, saved in aux
            self._hidden_grads(ws, k, d, ex["dgates_hh"], hprev, slice(0, 2 * H))
            self._hidden_grads(ws, k, d, ex["dgates_hh"], ex["aux"], slice(2 * H, 3 * H))

    def _step_kernel(self):
        return K.gru_step_options if self._special else K.gru_step

    def _step_table_kernel(self):
        return K.gru_step_table if self._step_kernel() is K.gru_step else None

    def _make_step_args(self, k: int) -> tuple:
        return K.gru_step_args(
            w_ih_t=self._w("weight_ih", k, 0), w_hh_t=self._w("weight_hh", k, 0),
            b_ih=self._p("bias_ih", k, 0), b_hh=self._p("bias_hh", k, 0),
            lbr=self.linear_before_reset, p=self.dtype.type(self.zoneout),
            options=self._gen(0) if self._special else None, work=self._step_work)
