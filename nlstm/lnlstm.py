"""``nlstm.LayerNormLSTM``, and the whole-sequence passes it shares with ``LSTM(zoneout=p)``
(both run the kernels of :mod:`nlstm.kernels.lnlstm`)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from . import _threads
from .kernels import lnlstm as K
from .kernels import lnlstm_row as R
from .kernels import parallel as P
from .kernels import tiles
from .lstm import LSTM


class LayerNormLSTM(LSTM):
    """LSTM with layer normalisation inside the cell (Ba, Kiros and Hinton, 2016), in haste's
    form: W·x and R·h are normalised separately, each with its own gain and bias, and the cell
    state before its tanh. Per row and step, LN(a) = (a − mean a)/√(var a + 1e-5):

    z = γ_ih ⊙ LN(W_ih x) + b_ih + γ_hh ⊙ LN(W_hh h) + b_hh   (over the 4H gates i, f, g, o)
    c' = σ(z_f)⊙c + σ(z_i)⊙tanh(z_g),  h' = σ(z_o) ⊙ tanh(γ_c ⊙ LN(c') + β_c)

    Parameters: PyTorch's ``weight_ih_l{k}`` (4H, I_k), ``weight_hh_l{k}`` (4H, H),
    ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4H; the biases of the two normalisations), and
    ``ln_weight_ih_l{k}``, ``ln_weight_hh_l{k}`` (4H: γ_ih, γ_hh), ``ln_weight_c_l{k}``,
    ``ln_bias_c_l{k}`` (H: γ_c, β_c); ``_reverse`` for the backward direction. The gains
    start at 1 and β_c at 0; with ``bias=False`` there are no biases, β_c included.

    Everything else is as ``nlstm.LSTM``: state (h, c), calls, streaming, lengths, stacking,
    directions, dtypes, ``dropout`` between layers, ``forget_bias``, ``zoneout``, and the
    variants, which enter after the normalisations:

    - ``peephole=True``: ``peephole_l{k}`` (3H,); i and f add p_i⊙c, p_f⊙c to the normalised
      z, o adds p_o⊙c' (c' itself, not LN(c')).
    - ``clip=x``: the final pre-activations (normalised, shifted, peepholed) clamped to
      [-x, x] before their activations.
    - ``input_forget=True``: f = 1 − i.
    - ``activations=(f, g, h)`` (with ``activation_alpha``/``activation_beta``): in place of
      σ, tanh and the tanh of h' = o⊙tanh(γ_c⊙LN(c') + β_c).
    - ``proj_size=P``: h = W_hr (o⊙tanh(γ_c⊙LN(c') + β_c)), ``weight_hr_l{k}`` (P, H);
      W_hh is (4H, P) and LN(W_hh h) still normalises over its 4H rows. With zoneout, h's
      mask applies to the projected h.
    """

    _name = "LayerNormLSTM"
    _layer_norm = True

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, bidirectional: bool = False, dtype=np.float32,
                 seed: Optional[int] = None, check_finite: bool = True, dropout: float = 0.0,
                 proj_size: int = 0, peephole: bool = False, clip: Optional[float] = None,
                 input_forget: bool = False, forget_bias: float = 0.0,
                 activations: Optional[Sequence[str]] = None,
                 activation_alpha: Optional[Sequence[float]] = None,
                 activation_beta: Optional[Sequence[float]] = None, zoneout: float = 0.0):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, bidirectional,
                         dtype, seed, check_finite, dropout, proj_size=proj_size,
                         peephole=peephole, clip=clip,
                         input_forget=input_forget, forget_bias=forget_bias,
                         activations=activations, activation_alpha=activation_alpha,
                         activation_beta=activation_beta, zoneout=zoneout)

    def _extra_param_shapes(self, k: int, sfx: str) -> dict:
        G, H = 4 * self.hidden_size, self.hidden_size
        shapes = dict(super()._extra_param_shapes(k, sfx), **{
            f"ln_weight_ih_l{k}{sfx}": (G,), f"ln_weight_hh_l{k}{sfx}": (G,),
            f"ln_weight_c_l{k}{sfx}": (H,)})
        if self.bias:
            shapes[f"ln_bias_c_l{k}{sfx}"] = (H,)
        return shapes

    def _adjust_init(self) -> None:
        for name, p in self.params.items():
            if name.startswith("ln_weight"):
                p.fill(1)
            elif name.startswith("ln_bias"):
                p.fill(0)
        super()._adjust_init()

    def _extra_buffers(self, T, B, e) -> dict:
        H = self.hidden_size
        return dict(super()._extra_buffers(T, B, e), xhat=e(T, B, 4 * H), rhat=e(T, B, 4 * H),
                    dr=e(T, B, 4 * H), chat=e(T, B, H), du=e(T, B, H), rstd=e(T, B, 3))

    def _split_units(self) -> bool:
        return splits_units(self)

    def _work_size(self) -> int:
        return 16 * self.hidden_size  # see lnlstm_step


def splits_units(layer) -> bool:
    """Whether a one-row batch's forward may split its hidden units over threads
    (``kernels.lnlstm_units``; its backward too): the plain cell (no variant options, no
    projection) with H on the tiles."""
    return layer._plain() and tiles.packable(layer._w("weight_hh", 0, 0), 4)


def _one_row(layer, ws) -> bool:
    """Whether a batch runs the one-row kernels (``kernels.lnlstm_row``): one row of the
    plain cell, with H on the one-row tile and on the carry's panels."""
    return ws.key[1] == 1 and splits_units(layer) and layer._panels_fit()


def _norm_params(layer, k: int, d: int) -> tuple:
    """γ_hh, γ_c, β_c of layer k, direction d (empty arrays for the plain cell)."""
    if not layer._layer_norm:
        none = layer._empty1
        return none, none, none
    sfx = layer._suffixes()[d]
    H = layer.hidden_size
    b_c = layer.params.get(f"ln_bias_c_l{k}{sfx}")
    return (layer.params[f"ln_weight_hh_l{k}{sfx}"], layer.params[f"ln_weight_c_l{k}{sfx}"],
            layer._zero_bias[:H] if b_c is None else b_c)


def _saved(layer, ex: dict) -> tuple:
    """rhat, chat, rstd, dr, du of a direction's extra buffers (empty for the plain cell)."""
    if not layer._layer_norm:
        return (layer._empty3,) * 5
    return ex["rhat"], ex["chat"], ex["rstd"], ex["dr"], ex["du"]


def _zeroed_sums(layer, n: int, width: int) -> np.ndarray:
    """(n, 5, width) zeros: each of n parts' sums of the LayerNorm parameters' gradients
    (see ``kernels.lnlstm.input_back``; width 0 where no kernel sums them). One buffer for
    the three ways backward sums them: one runs per ``backward_dir``, and its sums are added
    to the gradients before the next starts."""
    sums = layer._part_rows("ln sums", n, 5, width)
    sums[...] = 0
    return sums


def _input_side(layer, ws, k: int, d: int) -> tuple:
    """γ_ih and xhat of layer k, direction d, for a backward kernel that runs
    ``input_back`` itself (empty for the plain cell)."""
    if not layer._layer_norm:
        return layer._empty1, layer._empty3
    return layer.params[f"ln_weight_ih_l{k}{layer._suffixes()[d]}"], ws.extra[k][d]["xhat"]


def _variants(layer, k: int, d: int) -> tuple:
    """peep, clip, input_forget, acts, proj, w_hr_t: the kernels' variant options of layer k,
    direction d."""
    opt = layer._options(k, d)
    return opt.peep, opt.clip, opt.input_forget, opt.acts, opt.proj, opt.w_hr_t


def _variant_args(layer, ws, k: int, d: int) -> tuple:
    """``_variants`` of the whole-sequence kernels: peep, clip, input_forget, acts, pre."""
    return (*_variants(layer, k, d)[:4], ws.extra[k][d]["pre"])


def forward_dir(layer, ws, k: int, d: int, inp: np.ndarray) -> None:
    """``_forward_dir`` of LayerNormLSTM and of LSTM with zoneout."""
    ln, ex = layer._layer_norm, ws.extra[k][d]
    gates = layer._project(ws, k, d, inp)
    if ln:
        sfx = layer._suffixes()[d]
        xhat = ex["xhat"] if ws.train else layer._empty3  # only backward reads it
        args = (gates, xhat, ex["rstd"], layer.params[f"ln_weight_ih_l{k}{sfx}"],
                layer._p("bias_ih", k, d), ws.lengths)
        _flat_rows(layer, ws, P.normalize_input, args)
        bias = layer._p("bias_hh", k, d)
    else:
        bias = layer._p("bias_ih", k, d) + layer._p("bias_hh", k, d)
    i = k * layer.num_directions + d
    zh, zc = ex["zoneout"]
    rhat, chat, rstd, _, _ = _saved(layer, ex)
    if ln and not ws.train:  # only backward reads them: one row, rewritten every step
        rhat, chat = rhat[:1], chat[:1]  # (kernels.slots.saved_at)
    parts = layer._unit_parts(ws)
    if parts:  # a one-row batch: its hidden units split over the threads
        ws.ensure_scratch(layer, 1)
        H = layer.hidden_size
        r = layer._part_rows("forward units W_hh h", 1, 2, 4 * H)[0]  # shared by the parts
        args = (layer._barrier_flags(parts), ws.y[k], ws.states[0][k][d], ws.states[1][k][d],
                ws.final[0][i], ws.final[1][i], gates, layer._packed_gates(k, d), bias,
                ws.init[0][i], ws.init[1][i], ws.lengths, d == 1, d * layer._out_size, ln,
                *_norm_params(layer, k, d), rhat, chat, rstd, zh, zc, r,
                ws.scratch[0][5][0], layer._part_rows("forward units", parts, 13 if ln else 0, H))
        _threads.run_units(parts, P.lnlstm_forward_units, args)
        return
    if _one_row(layer, ws):  # its own kernel, on the one-row tile
        ws.ensure_scratch(layer, 1)
        R.lnlstm_forward_row(0, ws.y[k], ws.states[0][k][d], ws.states[1][k][d], ws.final[0][i],
                             ws.final[1][i], gates, layer._packed_gates(k, d), bias,
                             ws.init[0][i], ws.init[1][i], ws.lengths, d == 1,
                             d * layer._out_size, ln, *_norm_params(layer, k, d), rhat, chat,
                             rstd, zh, zc, ws.scratch[0][5][0])
        return
    args = (ws.y[k], ws.states[0][k][d], ws.states[1][k][d], ws.final[0][i], ws.final[1][i], gates,
            layer._w("weight_hh", k, d), bias, ws.init[0][i], ws.init[1][i], ws.lengths, d == 1,
            d * layer._out_size, ln, *_norm_params(layer, k, d), rhat, chat, rstd, zh, zc,
            *_variant_args(layer, ws, k, d), ex["ctil"], *_variants(layer, k, d)[4:], ex["m"],
            layer._packed_gates(k, d) if ws.key[1] > 1 else layer._no_pack)
    layer._rows(ws, P.lnlstm_forward, args)


def backward_dir(layer, ws, k: int, d: int, inp: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """``_backward_dir`` of LayerNormLSTM and of LSTM with zoneout."""
    ln, ex = layer._layer_norm, ws.extra[k][d]
    i = k * layer.num_directions + d
    gates, h, c = ws.gates[k][d], ws.states[0][k][d], ws.states[1][k][d]
    zh, zc = ex["zoneout"]
    rhat, chat, rstd, dr, du = _saved(layer, ex)
    parts = layer._unit_parts(ws)
    fused = None  # the LayerNorm parameters' gradient sums if the kernel ran input_back
    if parts:  # as in forward_dir
        ws.ensure_scratch(layer, 1)
        sp2, sg, sh = ws.scratch[0][3:6]  # shared by the parts
        args = (layer._barrier_flags(parts), gates, ws.dinit[0][i], ws.dinit[1][i], dy,
                ws.dfinal[0][i], ws.dfinal[1][i], gates, c, layer._w("weight_hh", k, d),
                ws.lengths, d == 1, d * layer._out_size, ln, *_norm_params(layer, k, d), rhat,
                chat, rstd, dr, du, zh, zc, sh[0], sp2[0], sg[0],
                layer._part_rows("backward units", parts, 4, layer.hidden_size))
        _threads.run_units(parts, P.lnlstm_backward_units, args)
    elif _one_row(layer, ws):  # as in forward_dir
        ws.ensure_scratch(layer, 1)
        sp2, sh = ws.scratch[0][3][0], ws.scratch[0][5][0]
        fused = _zeroed_sums(layer, 1, 4 * layer.hidden_size * ln)
        R.lnlstm_backward_row(0, gates, ws.dinit[0][i], ws.dinit[1][i], dy, ws.dfinal[0][i],
                              ws.dfinal[1][i], gates, c, layer._w("weight_hh", k, d), ws.lengths,
                              d == 1, d * layer._out_size, ln, *_norm_params(layer, k, d), rhat,
                              chat, rstd, dr, du, zh, zc, *_input_side(layer, ws, k, d),
                              fused[0], sh, sp2)
    else:
        fused = _backward_rows(layer, ws, k, d, dy)
    # gates now holds dz, the gradients of the gate pre-activations (or, fused, dz⊙γ_ih)
    hprev = layer._hprev(h, d)
    if layer.proj_size:
        layer._proj_grads(ws, k, d)
    if layer.peephole:  # c̃ is c's new slot unless zoneout kept it apart (then ctil)
        c_new = ex["ctil"] if layer.zoneout else (c[:-1] if d == 1 else c[1:])
        layer._peephole_grads(k, d, gates, layer._hprev(c, d), c_new)
    if not ln:
        layer._input_grads(ws, k, d, inp, gates, dx, hprev=hprev)
        return
    sfx = layer._suffixes()[d]
    G, H = 4 * layer.hidden_size, layer.hidden_size
    # xhat becomes the gradient of W_ih x, gates dz⊙γ_ih; every LayerNorm parameter's
    # gradient is summed on the way, each part of the rows into its own (5, G) sums
    sums = fused
    if sums is None:
        sums = _zeroed_sums(layer, _flat_parts(ws), G)
        args = (gates, ex["xhat"], ex["rstd"], layer.params[f"ln_weight_ih_l{k}{sfx}"],
                ws.lengths, rhat, du, chat)
        _flat_rows(layer, ws, P.normalize_input_back, args, (sums,))
    total = sums[0] if len(sums) == 1 else sums.sum(axis=0)
    gr = layer.grads
    gr[f"ln_weight_ih_l{k}{sfx}"] += total[0]
    gr[f"ln_weight_hh_l{k}{sfx}"] += total[1]
    gr[f"ln_weight_c_l{k}{sfx}"] += total[3, :H]
    db = None
    if layer.bias:  # b_ih's and b_hh's: both add to z
        gr[f"ln_bias_c_l{k}{sfx}"] += total[4, :H]
        db = total[2]
    layer._input_grads(ws, k, d, inp, ex["xhat"], dx, db=db)
    layer._hidden_grads(ws, k, d, dr, hprev, db=db)


def _flat_parts(ws) -> int:
    """How many threads share the T·B (step, batch row) pairs of ``_flat_rows``."""
    T, B = ws.key
    return _threads.parts_for(T * B, _flat_work(ws))


def _flat_work(ws) -> float:
    T, B = ws.key
    return float(T) * B * ws.gates[0][0].shape[2] * 4  # a few operations per gate value


def _flat_rows(layer, ws, split, args: tuple, stacked: tuple = ()) -> None:
    """Run the kernel ``split`` over the T·B (step, batch row) pairs on nlstm's threads
    (a whole sequence splits however small B is), part i's scratch ``s[i]`` of each array
    s of ``stacked`` ((parts, ...) each)."""
    T, B = ws.key
    n = _flat_parts(ws)
    parts = [tuple(s[i] for s in stacked) for i in range(n)]
    cost = _flat_cost(ws) if n > 1 and ws.valid < T * B else None  # (one part: unused)
    _threads.run_rows(T * B, _flat_work(ws), split, args, parts, stacked, row_cost=cost, n=n)


def _flat_cost(ws) -> np.ndarray:
    """The cost of each (step, batch row) pair, flat: 1 within its row's length, else 0."""
    T, B = ws.key
    return (np.arange(T)[:, None] < ws.lengths[None, :]).reshape(T * B)


def _backward_rows(layer, ws, k: int, d: int, dy: np.ndarray) -> Optional[np.ndarray]:
    """``lnlstm_backward`` over the batch's rows on nlstm's threads. With LayerNorm and no
    peepholes the kernel also runs each row's ``input_back`` (in place of the flat
    ``normalize_input_back`` after it): then the per-thread (threads, 5, 4H) sums of the
    LayerNorm parameters' gradients it returns; else None."""
    ln, ex, i = layer._layer_norm, ws.extra[k][d], k * layer.num_directions + d
    fuse = ln and not layer.peephole  # (the peepholes' gradients read dz after the kernel)
    gates, h, c = ws.gates[k][d], ws.states[0][k][d], ws.states[1][k][d]
    zh, zc = ex["zoneout"]
    rhat, chat, rstd, dr, du = _saved(layer, ex)
    # (the carry's panels for batches of more than one row, as the LSTM's)
    wc = layer._packed_carry(k, d) if ws.key[1] > 1 else layer._no_pack
    args = (gates, ws.dinit[0][i], ws.dinit[1][i], dy, ws.dfinal[0][i], ws.dfinal[1][i], gates, h,
            c, layer._w("weight_hh", k, d), ws.lengths, d == 1, d * layer._out_size, ln,
            *_norm_params(layer, k, d), rhat, chat, rstd, dr, du, zh, zc,
            *_variant_args(layer, ws, k, d), *_variants(layer, k, d)[4:], ex["dh_all"], wc,
            *_input_side(layer, ws, k, d))
    sums = _zeroed_sums(layer, _threads.get_num_threads(), 4 * layer.hidden_size * fuse)
    layer._rows(ws, P.lnlstm_backward, args, more=(sums,))
    return sums if fuse else None


def step_kernel():
    return K.lnlstm_step


def step_args(layer, k: int) -> tuple:
    """Layer k's weight and option arguments of ``lnlstm_step``."""
    ln = layer._layer_norm
    g_hh, g_c, b_c = _norm_params(layer, k, 0)
    g_ih = layer.params[f"ln_weight_ih_l{k}"] if ln else layer._empty1
    return (layer._w("weight_ih", k, 0), layer._w("weight_hh", k, 0), layer._p("bias_ih", k, 0),
            layer._p("bias_hh", k, 0), ln, g_ih, g_hh, g_c, b_c,
            layer.dtype.type(layer.zoneout), *_variants(layer, k, 0), layer._step_work)
