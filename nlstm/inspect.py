"""``nlstm.inspect``: see inside the cell. The gates, the cell state and the gradient flowing
back through time, step by step, for every layer and direction of a model.

The numbers are the training kernels' own: one training forward saves the post-activation
gates and the states (which the backward needs anyway), one backward turns the saved gates
into the gradients of the gate pre-activations. From those, the gradient with respect to
each step's output h_t is the upstream gradient plus what the next step sends back,
dL/dh_t = dy_t + dz_{t+1}·W_hh (the kernels' own carry, at every step instead of only the
last), the gradient reaching c_t follows c's path back through the forget gates, and the
gradient reaching each input step is dz_t·W_ih, the product the layer's backward itself
computes. Nothing is recomputed from pre-activations.

``inspect`` runs as in evaluation (no dropout) and leaves the model as it found it: its
weights, its accumulated gradients, its workspace (a training forward waiting for its
backward still gets it) and the random streams of its dropout.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import numpy as np

from .gru import GRU
from .linear import Dropout
from .losses import get_loss
from .lstm import LSTM
from .model import Sequential
from .recurrent import RecurrentLayer
from .rnn import RNN

# Gate blocks in the layers' order (PyTorch's); the RNN has no gates: its "gate" is the
# pre-activation W_ih x + b_ih + W_hh h + b_hh.
GATES = {"LSTM": ("i", "f", "g", "o"), "GRU": ("r", "z", "n"), "RNN": ("pre",)}
SIGMOID_GATES = {"LSTM": ("i", "f", "o"), "GRU": ("r", "z"), "RNN": ()}
# A sigmoid gate unit counts as saturated below LOW or above HIGH: it passes (almost)
# nothing or (almost) everything, and its own gradient σ' = s(1 − s) is below 0.0475.
LOW, HIGH = 0.05, 0.95


def _cell(layer: RecurrentLayer) -> str:
    # the exact classes: LayerNormLSTM is an LSTM subclass whose cell reads otherwise
    if getattr(layer, "zoneout", 0.0):
        raise ValueError(f"inspect does not support zoneout ({type(layer).__name__}"
                         f"(zoneout={layer.zoneout})): its states mix in the previous step's")
    for cls in (LSTM, GRU, RNN):
        if type(layer) is cls:
            return cls.__name__
    if isinstance(layer, RecurrentLayer):  # a layer of a cell inspect does not read
        raise ValueError(f"inspect supports LSTM, GRU and RNN layers, got {type(layer).__name__}")
    raise TypeError(f"inspect supports LSTM, GRU and RNN layers, got {type(layer).__name__}")


@dataclass(repr=False)
class Trace:
    """One direction of one layer. Every array is time-major and indexed by time t (for a
    reverse direction too); steps past a row's length are zero.

    gates: name -> (T, B, H) after the activations (LSTM i, f, g, o; GRU r, z, n); the RNN's
        "pre" is the pre-activation.
    h: (T, B, O) the output h_t (O = proj_size or hidden_size); c: (T, B, H) the LSTM's c_t.
    dh, dc: (T, B, ·) the gradient of the loss with respect to h_t and c_t (the total: from
        the layer's output at t and from every later step); None without a target or dy.
    dx: (T, B, I) the gradient with respect to the layer's input x_t (both directions
        together: the same array for both traces of a bidirectional layer).
    """

    name: str
    cell: str
    lengths: np.ndarray
    gates: Dict[str, np.ndarray]
    h: np.ndarray
    c: Optional[np.ndarray] = None
    dh: Optional[np.ndarray] = None
    dc: Optional[np.ndarray] = None
    dx: Optional[np.ndarray] = None
    _mask: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        T = self.h.shape[0]
        self._mask = np.arange(T)[:, None] < self.lengths[None, :]  # (T, B): t < lengths[b]

    def __repr__(self) -> str:
        T, B, H = next(iter(self.gates.values())).shape
        return (f"Trace({self.name!r}, {self.cell}, T={T}, B={B}, H={H}, gates={list(self.gates)}, "
                f"gradients={self.dh is not None})")

    @property
    def mask(self) -> np.ndarray:
        """(T, B) bool: the steps inside each row's length (the only ones summaries read)."""
        return self._mask

    def per_step(self, values: np.ndarray) -> np.ndarray:
        """(T, B) -> (T,): the mean over the rows whose length reaches t; NaN where none does."""
        m = self._mask
        n = m.sum(axis=1)
        total = np.where(m, values, 0.0).sum(axis=1, dtype=np.float64)
        out = np.full(m.shape[0], np.nan)
        np.divide(total, n, out=out, where=n > 0)
        return out

    def _norm(self, a: Optional[np.ndarray]) -> Optional[np.ndarray]:
        if a is None:
            return None
        return self.per_step(np.linalg.norm(a.astype(np.float64, copy=False), axis=2))

    @property
    def grad_norm(self) -> Optional[np.ndarray]:
        """(T,) ‖dL/dh_t‖, averaged over the batch rows (padding left out)."""
        return self._norm(self.dh)

    @property
    def cell_grad_norm(self) -> Optional[np.ndarray]:
        """(T,) ‖dL/dc_t‖ averaged over the rows (LSTM only, else None)."""
        return self._norm(self.dc)

    @property
    def input_grad_norm(self) -> Optional[np.ndarray]:
        """(T,) ‖dL/dx_t‖ averaged over the rows: how much of the gradient reaches input step t."""
        return self._norm(self.dx)

    @property
    def mean_gates(self) -> Dict[str, np.ndarray]:
        """gate name -> (T,) its mean over the units and the rows."""
        return {n: self.per_step(g.mean(axis=2, dtype=np.float64)) for n, g in self.gates.items()}

    @property
    def saturation(self) -> Optional[np.ndarray]:
        """(T,) the fraction of sigmoid gate units below 0.05 or above 0.95, over the units of
        every sigmoid gate (LSTM i, f, o; GRU r, z) and the rows; None for the RNN."""
        names = SIGMOID_GATES[self.cell]
        if not names:
            return None
        sat = sum(((self.gates[n] < LOW) | (self.gates[n] > HIGH)).mean(axis=2) for n in names)
        return self.per_step(sat / len(names))

    @property
    def mean_forget(self) -> Optional[np.ndarray]:
        """(T,) the LSTM's mean forget gate per step (None for the GRU and RNN)."""
        return self.mean_gates["f"] if self.cell == "LSTM" else None

    def summary(self) -> Dict[str, Optional[np.ndarray]]:
        """Every per-step summary, (T,) each (None where it does not apply)."""
        return dict(grad_norm=self.grad_norm, cell_grad_norm=self.cell_grad_norm,
                    input_grad_norm=self.input_grad_norm, saturation=self.saturation,
                    mean_forget=self.mean_forget, **{f"mean_{n}": v for n, v in self.mean_gates.items()})


class Inspection:
    """What ``nlstm.inspect`` saw: ``traces``, one per layer and direction in forward order
    (named like the parameters: ``"l0"``, ``"l1_reverse"``; in a Sequential prefixed by the
    layer's index, ``"0.l0"``), ``dx`` (T, B, I) the gradient with respect to the model's
    input (None without a target or dy), ``loss`` its value (None without a target) and
    ``lengths`` (B,)."""

    def __init__(self, traces: List[Trace], dx: Optional[np.ndarray], loss: Optional[float]):
        self.traces = traces
        self.dx = dx
        self.loss = loss
        self.lengths = traces[0].lengths

    def __getitem__(self, name: str) -> Trace:
        for t in self.traces:
            if t.name == name:
                return t
        raise KeyError(f"no trace {name!r}; the traces are {[t.name for t in self.traces]}")

    def __iter__(self):
        return iter(self.traces)

    def __len__(self) -> int:
        return len(self.traces)

    def __repr__(self) -> str:
        T, B = self.traces[0].h.shape[:2]
        return (f"Inspection(T={T}, B={B}, traces={[t.name for t in self.traces]}, "
                f"gradients={self.dx is not None})")

    def summary(self) -> str:
        """The summaries as text, one block per trace: the gradient norms at the first and the
        last step and their ratio, saturated gate units and the mean forget gate."""
        lines = []
        if self.loss is not None:
            lines.append(f"loss {self.loss:.6g}")
        for t in self.traces:
            lines.append(f"{t.name} ({t.cell}, {t.h.shape[0]} steps, {t.h.shape[1]} rows)")
            if not t.mask.any():
                lines.append("  no steps: every row has length 0")
                continue
            for label, v in (("|dL/dh_t|", t.grad_norm), ("|dL/dc_t|", t.cell_grad_norm),
                             ("|dL/dx_t|", t.input_grad_norm)):
                if v is not None:
                    lines.append(f"  {label}: {_ends(v)}")
            sat = t.saturation
            if sat is not None:
                lines.append(f"  saturated gate units (<{LOW:g} or >{HIGH:g}): "
                             f"{100 * np.nanmean(sat):.1f}% (per step {100 * np.nanmin(sat):.1f}%"
                             f"-{100 * np.nanmax(sat):.1f}%)")
            f = t.mean_forget
            if f is not None:
                lines.append(f"  mean forget gate: {np.nanmean(f):.3f} (per step {np.nanmin(f):.3f}"
                             f"-{np.nanmax(f):.3f})")
            means = ", ".join(f"{n} {np.nanmean(v):.3f}" for n, v in t.mean_gates.items())
            lines.append(f"  mean gates: {means}")
        return "\n".join(lines)

    def plot(self, path: Optional[Union[str, os.PathLike]] = None, sequence: int = 0):
        """A matplotlib Figure with one row per trace: the gradient norms against the step (log
        scale), the mean gates against the step, and a heatmap of sequence ``sequence``'s
        gates (units × steps). Saved as PNG (atomically) when ``path`` is given. Needs
        matplotlib (the ``plots`` extra)."""
        B = self.traces[0].h.shape[1]
        if isinstance(sequence, bool) or not isinstance(sequence, (int, np.integer)) \
                or not 0 <= sequence < B:
            raise ValueError(f"sequence must be a row index in 0..{B - 1}, got {sequence!r}")
        return _plot(self, path, int(sequence))


def _ends(v: np.ndarray) -> str:
    """'first … last (ratio)' of a per-step norm over its steps that have rows."""
    idx = np.flatnonzero(np.isfinite(v))
    a, b = v[idx[0]], v[idx[-1]]
    ratio = f"{a / b:.3g}" if b > 0 else "inf" if a > 0 else "-"
    return f"{a:.3g} at step {idx[0] + 1}, {b:.3g} at step {idx[-1] + 1} (first/last {ratio})"


def inspect(model: Union[RecurrentLayer, Sequential], x, target=None, lengths=None, loss=None,
            dy=None) -> Inspection:
    """Look inside ``model`` (an LSTM, GRU or RNN layer, or a Sequential) on the batch ``x``.

    x: as the model takes it (a layer: (T, B, I), (B, T, I) with batch_first, or (T, I);
        a Sequential: (B, T, F)); lengths: optional (B,) valid steps per row.
    target: with it, the gradients are those of the loss: ``loss`` (a name or a Loss; default
        the Sequential's own loss, or "mse" for a layer) of the output against target (for a
        layer, target has the shape of y). dy: instead of a target, the gradient of the
        output itself (the shape of the model's output). With neither, only the forward.
    Returns an :class:`Inspection`: per layer and direction the gates, h_t, c_t and, with a
    target or dy, dL/dh_t, dL/dc_t and dL/dx_t, plus their per-step summaries. It runs one
    training forward and one backward with dropout off (as in evaluation) from a zero
    initial state; the model's weights, gradients and state are left as they were.
    """
    if isinstance(model, Sequential):
        recurrent = [(f"{i}.", layer) for i, layer in enumerate(model.layers)
                     if isinstance(layer, RecurrentLayer)]
    elif isinstance(model, RecurrentLayer):
        recurrent = [("", model)]
    else:
        raise TypeError(f"model must be an nlstm LSTM, GRU or RNN layer or a Sequential, got "
                        f"{type(model).__name__}")
    for _, layer in recurrent:
        _cell(layer)
    if target is not None and dy is not None:
        raise ValueError("give a target (the loss's gradient) or dy (the output's gradient), not both")
    if loss is not None and target is None:
        raise ValueError("loss needs a target")
    with _Untouched(model):
        if isinstance(model, Sequential):
            return _run_sequential(model, recurrent, x, target, lengths, loss, dy)
        return _run_layer(model, x, target, lengths, loss, dy)


class _Untouched:
    """Runs inspect's forward and backward on the model itself and then puts back every
    attribute binding of the model, its layers and its loss (the workspace, the flags of a
    pending training forward, a head's saved input, Dropout's masks), the contents of every
    gradient array, and turns dropout off meanwhile (so no random stream advances). A fresh
    workspace is used so that a training forward waiting for its backward keeps its own."""

    def __init__(self, model):
        layers = model.layers if isinstance(model, Sequential) else [model]
        extra = [model, model.loss] if isinstance(model, Sequential) else []
        self.objects = extra + layers
        self.grads = [(g, g.copy()) for layer in layers for g in layer.grads.values()]
        self.layers = layers

    def __enter__(self):
        self.saved = [(obj, dict(vars(obj))) for obj in self.objects]
        for layer in self.layers:
            if isinstance(layer, RecurrentLayer):
                layer._ws, layer._trained, layer.dropout = None, False, 0.0
            elif isinstance(layer, Dropout):
                layer.p = 0.0
        return self

    def __exit__(self, *exc):
        for obj, attrs in self.saved:
            obj.__dict__.clear()
            obj.__dict__.update(attrs)
        for g, old in self.grads:
            np.copyto(g, old)
        return False


def _run_layer(layer: RecurrentLayer, x, target, lengths, loss, dy) -> Inspection:
    y, _ = layer.forward(x, None, lengths, train=True)
    unbatched = layer._unbatched
    saved = _forward_traces(layer)
    value = None
    if target is not None:
        # The losses are batch-first: (B, T, F) predictions, targets (B, T, ...).
        to_bf = (lambda a: a[None]) if unbatched else \
            (lambda a: a) if layer.batch_first else (lambda a: np.swapaxes(a, 0, 1))
        fn = copy.copy(get_loss("mse" if loss is None else loss))
        t = np.asarray(target)
        if t.ndim < 2:
            raise ValueError(f"target must have the layout of y {y.shape}, got shape {t.shape}")
        value = fn.forward(to_bf(y), to_bf(t), lengths)
        g = fn.backward()
        dy = g[0] if unbatched else g if layer.batch_first else np.swapaxes(g, 0, 1)
    if dy is None:
        return Inspection(_traces("", layer, saved, None), None, value)
    dx, _ = layer.backward(dy)
    traces = _traces("", layer, saved, layer._time_major(np.asarray(dy), unbatched))
    return Inspection(traces, layer._time_major(dx, unbatched), value)


def _run_sequential(model: Sequential, recurrent, x, target, lengths, loss, dy) -> Inspection:
    own_checks = loss is None or type(get_loss(loss)) is type(model.loss)
    X, Y, lens = model._prepare(x, target if own_checks else None, lengths, ("x", "target", "lengths"))
    out, _ = model.forward(X, lens, train=True)
    saved = {id(layer): _forward_traces(layer) for _, layer in recurrent}
    value = None
    if target is not None:
        fn = copy.copy(get_loss(model.loss if loss is None else loss))
        value = fn.forward(out, Y if own_checks else target, lens)
        dy = fn.backward()
    if dy is None:
        traces = [t for p, layer in recurrent for t in _traces(p, layer, saved[id(layer)], None)]
        return Inspection(traces, None, value)
    dy = np.asarray(dy)
    if dy.shape != out.shape:
        raise ValueError(f"dy must have the shape of the model's output {out.shape}, got {dy.shape}")
    # Each recurrent layer's output gradient, as the Sequential hands it to the layer. The
    # wrapper is an instance attribute, removed with the other bindings on the way out.
    upstream = {}
    for _, layer in recurrent:
        def recording(g, *rest, layer=layer, backward=layer.backward):
            upstream[id(layer)] = g
            return backward(g, *rest)

        layer.backward = recording
    dx = model.backward(dy)
    traces = []
    for p, layer in recurrent:
        g = layer._time_major(np.asarray(upstream[id(layer)]), False)
        traces += _traces(p, layer, saved[id(layer)], g)
    return Inspection(traces, np.ascontiguousarray(dx.transpose(1, 0, 2)), value)


# ---- what the kernels saved -----------------------------------------------------------------
def _valid(layer) -> np.ndarray:
    T = layer._ws.key[0]
    return (np.arange(T)[:, None] < layer._ws.lengths[None, :])[..., None]


def _after(state: np.ndarray, d: int) -> np.ndarray:
    """The state after each time step, (T, B, ·), from its (T+1)-slot buffer (see
    nlstm.kernels.slots; ``RecurrentLayer._hprev`` is the state before)."""
    return state[:-1] if d == 1 else state[1:]


def _forward_traces(layer) -> list:
    """Copies, per layer k and direction d, of what the training forward saved: the gates
    (the backward overwrites them with their gradients), h_t and c_t, zero past each length."""
    ws, cell = layer._ws, _cell(layer)
    H, O, valid = layer.hidden_size, layer._out_size, _valid(layer)
    out = []
    for k in range(layer.num_layers):
        for d in range(layer.num_directions):
            g = np.where(valid, ws.gates[k][d], 0).astype(layer.dtype)
            gates = {n: g[..., j * H:(j + 1) * H] for j, n in enumerate(GATES[cell])}
            h = np.where(valid, ws.y[k][..., d * O:(d + 1) * O], 0).astype(layer.dtype)
            c = np.where(valid, _after(ws.states[1][k][d], d), 0).astype(layer.dtype) \
                if cell == "LSTM" else None
            out.append(dict(gates=gates, h=h, c=c))
    return out


def _traces(prefix: str, layer, saved: list, dy: Optional[np.ndarray]) -> List[Trace]:
    """Traces of every layer and direction; with dy (T, B, D·O), the layer's output gradient,
    the gradients from the gate gradients the backward left in the workspace."""
    L, D, cell = layer.num_layers, layer.num_directions, _cell(layer)
    lengths = layer._ws.lengths.copy()
    names = [f"{prefix}l{k}{layer._suffixes()[d]}" for k in range(L) for d in range(D)]
    if dy is None:
        return [Trace(n, cell, lengths, **s) for n, s in zip(names, saved)]
    ws, O = layer._ws, layer._out_size
    valid = _valid(layer)
    dy = np.asarray(dy, layer.dtype)
    traces = [None] * (L * D)
    for k in reversed(range(L)):
        # dL/dx of layer k: Σ over directions of the input-side gate gradients times W_ih,
        # the product the layer's backward runs (_input_grads); layer k-1's output gradient.
        dx = sum(ws.gates[k][d] @ layer._p("weight_ih", k, d) for d in range(D))
        for d in range(D):
            i = k * D + d
            dh = _dh(layer, cell, k, d, dy[..., d * O:(d + 1) * O], saved[i]["gates"])
            dc = _dc(layer, k, d, dh, saved[i]) if cell == "LSTM" else None
            traces[i] = Trace(names[i], cell, lengths, **saved[i], dh=np.where(valid, dh, 0),
                              dc=None if dc is None else np.where(valid, dc, 0), dx=dx)
        dy = dx
    return traces


def _order(T: int, d: int) -> range:
    """Time steps in the backward's order: last processed first."""
    return range(T - 1, -1, -1) if d == 0 else range(T)


def _next(t: int, d: int) -> int:
    """The step processed after time t (it reads the state t wrote)."""
    return t + 1 if d == 0 else t - 1


def _shifted(a: np.ndarray, d: int) -> np.ndarray:
    """a at the step processed after each time t, zero past the sequence's end."""
    out = np.zeros_like(a)
    if d == 0:
        out[:-1] = a[1:]
    else:
        out[1:] = a[:-1]
    return out


def _dh(layer, cell: str, k: int, d: int, dy: np.ndarray, gates: dict) -> np.ndarray:
    """dL/dh_t = dy_t + what step t's successor sends back to h_t. The gate gradients are
    zero past each row's length, and the final state's gradient is zero, so the sum needs
    no special case at a row's end."""
    ws, H = layer._ws, layer.hidden_size
    w_hh = layer._p("weight_hh", k, d)
    if cell != "GRU":
        # The kernels' carry: dz_{t+1}·W_hh, for every step at once.
        return dy + _shifted(ws.gates[k][d] @ w_hh, d)
    dgh = ws.extra[k][d]["dgates_hh"]  # hidden-side pre-activation gradients
    if layer.linear_before_reset:
        carry = dgh @ w_hh
    else:  # the n block reads r ⊙ h
        carry = dgh[..., :2 * H] @ w_hh[:2 * H] + gates["r"] * (dgh[..., 2 * H:] @ w_hh[2 * H:])
    # h' = (1 − z)⊙n + z⊙h also passes z_{t+1}⊙dh_{t+1} straight back: a recurrence.
    z, T = gates["z"], dy.shape[0]
    dh = dy.copy()
    for t in _order(T, d):
        n = _next(t, d)
        if 0 <= n < T:
            dh[t] += carry[n] + z[n] * dh[n]
    return dh


def _dc(layer, k: int, d: int, dh: np.ndarray, saved: dict) -> np.ndarray:
    """dL/dc_t: from h_t = o_t⊙h(c_t), h = tanh by default (through W_hr with a projection, and o's peephole),
    plus f_{t+1}⊙dL/dc_{t+1} from the next step (and its i and f peepholes): the path of the
    seeds' lesson, through '+' and element-wise '×' nodes only."""
    H = layer.hidden_size
    g, c = saved["gates"], saved["c"]
    dz = layer._ws.gates[k][d]  # the gate pre-activation gradients (clipped units are zero)
    dm = dh @ layer._p("weight_hr", k, d) if layer.proj_size else dh
    if layer._act_spec is None:
        tc = np.tanh(c)
        dhc = 1 - tc * tc
    else:  # ONNX's activations: h's function is the third of the direction's rows
        from .kernels.activations import dact_into

        dhc = np.empty_like(c)
        dact_into(layer._acts(d)[2], np.ascontiguousarray(c), dhc)
    local = dm * g["o"] * dhc
    back = g["f"].copy()  # multiplies dL/dc_t to give step t's share of dL/dc_{t-1}
    peep = layer.peephole
    if peep:
        p = layer._p("peephole", k, d)
        local += dz[..., 3 * H:] * p[2 * H:]
        extra = dz[..., :H] * p[:H] + dz[..., H:2 * H] * p[H:2 * H]
    dc = local.copy()
    T = dc.shape[0]
    for t in _order(T, d):
        n = _next(t, d)
        if 0 <= n < T:
            dc[t] += back[n] * dc[n] + (extra[n] if peep else 0)
    return dc


# ---- plots ----------------------------------------------------------------------------------
def _pyplot():
    """matplotlib.pyplot, or an ImportError that says how to get it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'nlstm[plots]'") from e
    return plt


def save_figure(fig, path) -> str:
    """Write fig as PNG to path atomically (nlstm.io.atomic_write: a temporary file beside it,
    then a rename); returns the path."""
    from .io import atomic_write

    path = os.fspath(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return path


def _plot(result: Inspection, path, b: int):
    plt = _pyplot()
    traces = result.traces
    fig, axes = plt.subplots(len(traces), 3, figsize=(14, 3.2 * len(traces)), dpi=100,
                             squeeze=False)
    steps = np.arange(1, traces[0].h.shape[0] + 1)
    for row, t in zip(axes, traces):
        ax = row[0]
        drawn = False
        for label, v in (("|dL/dh_t|", t.grad_norm), ("|dL/dc_t|", t.cell_grad_norm),
                         ("|dL/dx_t|", t.input_grad_norm)):
            if v is not None and np.any(v > 0):
                ax.plot(steps, np.where(v > 0, v, np.nan), label=label)
                drawn = True
        if drawn:
            ax.set_yscale("log")
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no gradients\n(give a target or dy)", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_title(f"{t.name} ({t.cell}): gradient norm, batch mean", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(True, which="both", alpha=0.3)
        ax = row[1]
        for n, v in t.mean_gates.items():
            ax.plot(steps, v, label=n)
        ax.set_title("mean gates" if t.cell != "RNN" else "mean pre-activation", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
        ax = row[2]
        n_steps = max(int(t.lengths[b]), 1)
        heat = np.concatenate([g[:n_steps, b].T for g in t.gates.values()])  # (units, steps)
        im = ax.imshow(heat, aspect="auto", interpolation="nearest", cmap="viridis",
                       extent=(0.5, n_steps + 0.5, heat.shape[0], 0))
        H = t.gates[next(iter(t.gates))].shape[2]
        ax.set_yticks([H * (j + 0.5) for j in range(len(t.gates))], list(t.gates))
        for j in range(1, len(t.gates)):
            ax.axhline(H * j, color="white", lw=1)
        ax.set_title(f"gates of sequence {b} ({int(t.lengths[b])} steps)", fontsize=9)
        ax.set_xlabel("step")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
