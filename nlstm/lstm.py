"""``nlstm.LSTM``: a multi-layer, optionally bidirectional LSTM with PyTorch's API and layout."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from . import _threads
from .kernels import lstm as K
from .kernels import lstm_units as KU
from .kernels import parallel as P
from .kernels import tiles
from .kernels import units
from ._validate import is_real, positive_int
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

    Variants (PyTorch's and ONNX's), each with its own gradients:

    - ``proj_size=P`` (PyTorch): h = W_hr (o⊙tanh c) with ``weight_hr_l{k}`` (P, H); h, y
      and ``weight_hh`` use P features, c keeps H.
    - ``peephole=True`` (ONNX ``P``): ``peephole_l{k}`` (3H,) = p_i, p_f, p_o; i and f add
      p⊙c_{t-1}, o adds p_o⊙c_t.
    - ``clip=x`` (ONNX ``clip``): gate pre-activations clamped to [-x, x].
    - ``activations=(f, g, h)`` (ONNX ``activations``, with ``activation_alpha`` and
      ``activation_beta``): other functions in place of σ, tanh, tanh, by ONNX's names,
      e.g. ``("HardSigmoid", "Tanh", "Tanh")``; see :mod:`nlstm.activations`. Such a layer
      takes a slower, general path.
    - ``input_forget=True`` (ONNX): coupled gates, f = 1 − i (the f rows of the weights
      are kept but unused).
    - ``forget_bias=v``: adds v to the forget gate's ``bias_ih`` at init (Keras's
      ``unit_forget_bias`` is v = 1 with zero biases).

    ``zoneout=p`` (Krueger et al., 2017; with any of the variants above): in training forwards
    each unit of h and of c keeps its previous value with probability p (masks from the
    layer's seeded stream, as dropout's), h = m_h⊙h_prev + (1 − m_h)⊙o⊙tanh(c̃), c = m_c⊙c_prev
    + (1 − m_c)⊙c̃ with c̃ = f⊙c_prev + i⊙g; inference uses the expectation (m = p). The
    new h reads c̃ (and so does o's peephole); with ``proj_size`` m_h applies to the
    projected h.
    """

    _G = 4
    _state_labels = ("h0", "c0")
    _name = "LSTM"
    _gate_math = "LSTM"
    _layer_norm = False  # LayerNormLSTM's cell (see nlstm.lnlstm)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, bidirectional: bool = False, dtype=np.float32,
                 seed: Optional[int] = None, check_finite: bool = True, dropout: float = 0.0,
                 proj_size: int = 0, peephole: bool = False, clip: Optional[float] = None,
                 input_forget: bool = False, forget_bias: float = 0.0,
                 activations: Optional[Sequence[str]] = None,
                 activation_alpha: Optional[Sequence[float]] = None,
                 activation_beta: Optional[Sequence[float]] = None, zoneout: float = 0.0):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, bidirectional,
                         dtype, seed, check_finite, dropout)
        self.proj_size = positive_int("proj_size", proj_size, minimum=0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size ({self.hidden_size}), "
                             f"got {self.proj_size}")
        self._set_options(clip, activations, activation_alpha, activation_beta)
        if not is_real(forget_bias) or not np.isfinite(forget_bias):
            raise ValueError(f"forget_bias must be a finite number, got {forget_bias!r}")
        if forget_bias and not self.bias:
            raise ValueError("forget_bias needs bias=True")
        self.peephole = bool(peephole)
        self.input_forget = bool(input_forget)
        self.forget_bias = float(forget_bias)
        self._set_zoneout(zoneout)
        self._init_params()
        self._empty1 = np.zeros(0, self.dtype)
        self._empty2 = np.zeros((0, 0), self.dtype)
        self._empty3 = np.zeros((1, 1, 0), self.dtype)

    @property
    def _out_size(self) -> int:
        return self.proj_size or self.hidden_size

    def _state_sizes(self):
        return (self._out_size, self.hidden_size)

    def _extra_param_shapes(self, k: int, sfx: str) -> dict:
        shapes = {}
        if self.proj_size:
            shapes[f"weight_hr_l{k}{sfx}"] = (self.proj_size, self.hidden_size)
        if self.peephole:
            shapes[f"peephole_l{k}{sfx}"] = (3 * self.hidden_size,)
        return shapes

    def _adjust_init(self) -> None:
        if self.forget_bias:
            H = self.hidden_size
            for name, p in self.params.items():
                if name.startswith("bias_ih"):
                    p[H:2 * H] += self.dtype.type(self.forget_bias)

    def _config_extra(self) -> dict:
        return dict(proj_size=self.proj_size, peephole=self.peephole,
                    input_forget=self.input_forget, forget_bias=self.forget_bias,
                    zoneout=self.zoneout, **self._options_config())

    def _config_defaults(self) -> dict:
        return dict(proj_size=0, peephole=False, clip=None, input_forget=False, forget_bias=0.0,
                    activations=None, activation_alpha=None, activation_beta=None, zoneout=0.0)

    def _options(self, k: int, d: int) -> K.Options:
        sfx = self._suffixes()[d]
        return K.Options(
            peep=self.params[f"peephole_l{k}{sfx}"] if self.peephole else self._empty1,
            clip=self.dtype.type(np.inf if self.clip is None else self.clip),
            input_forget=self.input_forget, proj=self.proj_size > 0,
            w_hr_t=self._wt[f"weight_hr_l{k}{sfx}"] if self.proj_size else self._empty2,
            acts=self._acts(d))

    def _extra_buffers(self, T, B, e) -> dict:
        H, P, none = self.hidden_size, self._out_size, self._empty3
        save = self.clip is not None or self._act_spec is not None
        return dict(pre=e(T, B, 4 * H) if save else none,
                    m=e(T, B, H) if self.proj_size else none,
                    dh_all=e(T, B, P) if self.proj_size else none,
                    ctil=e(T, B, H) if self.peephole and self.zoneout else none,
                    **self._zoneout_buffers(T, B, e))

    def __call__(self, x, state: Optional[State] = None, lengths=None):
        """Inference: ``y, (h_n, c_n) = lstm(x, state, lengths)``."""
        return self.forward(x, state, lengths, train=False)

    def backward(self, dy, dh_n=None, dc_n=None):
        """``dx, (dh0, dc0) = lstm.backward(dy, dh_n, dc_n)``; see ``RecurrentLayer._backward``."""
        return self._backward(dy, [dh_n, dc_n])

    def _forward_dir(self, ws: Workspace, k: int, d: int, inp: np.ndarray) -> None:
        if self._layer_norm or self.zoneout:
            from . import lnlstm
            return lnlstm.forward_dir(self, ws, k, d, inp)
        gates = self._project(ws, k, d, inp)  # the kernels add the biases
        parts = self._unit_parts(ws)
        wp = self._packed_gates(k, d) if self._plain() else self._no_pack
        bias = self._p("bias_ih", k, d) + self._p("bias_hh", k, d)
        i, ex = k * self.num_directions + d, ws.extra[k][d]
        w = self._w("weight_hh", k, d)
        named = dict(y=ws.y[k], h=ws.states[0][k][d], c=ws.states[1][k][d], h_n=ws.final[0][i],
                     c_n=ws.final[1][i], gates=gates, w_hh_t=w, bias=bias, h0=ws.init[0][i],
                     c0=ws.init[1][i], lengths=ws.lengths, reverse=d == 1,
                     col=d * self._out_size, wp=wp)
        if parts:  # a one-row batch: its hidden units split over the threads
            j0, j1 = units.unit_range(0, parts, self.hidden_size)  # part 0's is the widest
            # with wp each part reads its units' blocks where they lie: no copy of W_hh's
            # columns (16 MB at H = 1024 otherwise), so its scratch has no rows
            w_own, acc = self._unit_scratch(parts, 0 if wp.size else w.shape[0], 4 * (j1 - j0))
            args = KU.lstm_forward_units_args(flags=self._barrier_flags(parts), w_own=w_own,
                                              acc=acc, **named)
            _threads.run_units(parts, P.lstm_forward_units, args)
        elif ws.key[1] == 1 and self._plain():
            # One plain row: its own kernel, which compiles in a fraction of lstm_forward's
            # time (it runs on the calling thread, as _rows runs one row).
            K.lstm_forward_row(0, *K.lstm_forward_row_args(**named))
        else:
            # blocks of rows off the gate tiles: W_hh's panels (see blocks.add_recurrent)
            wf = (self._packed_panels(k, d, w, "forward") if not wp.size and ws.key[1] > 1
                  else self._no_pack)
            self._rows(ws, P.lstm_forward, K.lstm_forward_args(
                opt=self._options(k, d), pre=ex["pre"], m=ex["m"], wf=wf, **named))

    def _backward_dir(self, ws, k, d, inp, dy, dx) -> None:
        if self._layer_norm or self.zoneout:
            from . import lnlstm
            return lnlstm.backward_dir(self, ws, k, d, inp, dy, dx)
        i, ex = k * self.num_directions + d, ws.extra[k][d]
        gates = ws.gates[k][d]
        h, c = ws.states[0][k][d], ws.states[1][k][d]
        w = self._w("weight_hh", k, d)
        # dgates is gates: the kernels write the gradients over the gates they read
        named = dict(dgates=gates, dh0=ws.dinit[0][i], dc0=ws.dinit[1][i], dy=dy,
                     dh_n=ws.dfinal[0][i], dc_n=ws.dfinal[1][i], gates=gates, c=c, w_hh_t=w,
                     lengths=ws.lengths, reverse=d == 1, col=d * self._out_size)
        parts = self._unit_parts(ws)
        if parts:  # as in _forward_dir
            ws.ensure_scratch(self, 1)
            args = KU.lstm_backward_units_args(flags=self._barrier_flags(parts),
                                               dm=ws.scratch[0][5][0], **named)
            _threads.run_units(parts, P.lstm_backward_units, args)
        elif ws.key[1] == 1 and self._plain():  # one plain row: as in _forward_dir
            ws.ensure_scratch(self, 1)
            K.lstm_backward_row(0, *K.lstm_backward_row_args(dm=ws.scratch[0][5][0], **named))
        else:
            wc = self._packed_carry(k, d) if ws.key[1] > 1 else self._no_pack
            self._rows(ws, P.lstm_backward, K.lstm_backward_args(
                h=h, opt=self._options(k, d), pre=ex["pre"], m=ex["m"], dh_all=ex["dh_all"],
                wc=wc, **named))
        # The gates buffer now holds the gate gradients.
        self._input_grads(ws, k, d, inp, gates, dx, hprev=self._hprev(h, d))
        if self.proj_size:
            self._proj_grads(ws, k, d)
        if self.peephole:
            self._peephole_grads(k, d, gates, self._hprev(c, d), c[:-1] if d == 1 else c[1:])

    def _proj_grads(self, ws: Workspace, k: int, d: int) -> None:
        """Add W_hr's gradient: Σ_t m_tᵀ dh_t over the saved m and dh_all."""
        T, B = ws.key
        ex = ws.extra[k][d]
        gw_t = self.grads[f"weight_hr_l{k}{self._suffixes()[d]}"].T  # the storage layout
        gw_t += ex["m"].reshape(T * B, self.hidden_size).T @ ex["dh_all"].reshape(T * B, -1)

    def _peephole_grads(self, k: int, d: int, dz: np.ndarray, c_prev: np.ndarray,
                        c_new: np.ndarray) -> None:
        """Add the peepholes' gradients: dz (T, B, 4H) the gate pre-activations' gradients,
        c_prev, c_new (T, B, H) the cell state each step reads and the one o reads."""
        H = self.hidden_size
        dp = self.grads[f"peephole_l{k}{self._suffixes()[d]}"]
        dp[:H] += np.einsum("tbj,tbj->j", dz[..., :H], c_prev)
        dp[H:2 * H] += np.einsum("tbj,tbj->j", dz[..., H:2 * H], c_prev)
        dp[2 * H:] += np.einsum("tbj,tbj->j", dz[..., 3 * H:], c_new)

    def _split_units(self) -> bool:
        if self.zoneout:
            from . import lnlstm
            return lnlstm.splits_units(self)
        return self._plain()

    def _plain(self) -> bool:
        return not (self.peephole or self.clip is not None or self.input_forget or self.proj_size
                    or self._act_spec is not None)

    def _step_kernel(self):
        if self._layer_norm or self.zoneout:
            from . import lnlstm
            return lnlstm.step_kernel()
        return K.lstm_step if self._plain() else K.lstm_step_options

    def _step_table_kernel(self):
        return K.lstm_step_table if self._step_kernel() is K.lstm_step else None

    def _make_step_args(self, k: int) -> tuple:
        if self._layer_norm or self.zoneout:
            from . import lnlstm
            return lnlstm.step_args(self, k)
        return K.lstm_step_args(
            w_ih_t=self._w("weight_ih", k, 0), w_hh_t=self._w("weight_hh", k, 0),
            b_ih=self._p("bias_ih", k, 0), b_hh=self._p("bias_hh", k, 0),
            opt=None if self._plain() else self._options(k, 0), work=self._step_work)

    def _work_size(self) -> int:
        return (16 if self.zoneout else 9) * self.hidden_size  # see lnlstm_step

    def _scratch(self, B: int, e) -> tuple:
        H, P = self.hidden_size, self._out_size
        # sg's spare rows: the tiled forward keeps B gate rows there at a padded stride
        sg = e(tiles.padded_rows(B, 4 * H, self.dtype.itemsize), 4 * H)
        return (np.empty(B, np.int64), np.empty(B, np.int64), e(B, P), e(B, P), sg, e(B, H))
