"""The machinery every recurrent layer shares: validation, layouts, lengths, directions,
stacked layers, dropout, workspaces, threads and streaming.

A cell (``LSTM``, ``GRU``, ``RNN``) subclasses :class:`RecurrentLayer` and supplies its
parameter shapes, how the input projection folds its biases, and the three calls into its
kernels: a whole-sequence forward and backward for one direction of one layer, and one
streaming step of one layer.
"""
from __future__ import annotations

import copy
import math
import threading
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from . import _threads
from .kernels import masks, tiles, tuning
from .kernels import parallel as P
from .kernels.sync import STRIDE
from ._guard import GradBackup, Lockable, check_training_thread
from .stream import Stream, _entry_point
from ._validate import (checked_state_dict, expect_shape, is_real, layer_dtype, lengths_array,
                        positive_int, real_array, seed_value)


# The tuning constants (per-row projections, the tiles, the unit split, alignment) are in
# nlstm.kernels.tuning, read there at each call.


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose first element is aligned to
    ``tuning.ALIGN_BYTES`` (a cache line)."""
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in (shape if isinstance(shape, tuple) else (shape,)))
    nbytes = math.prod(shape) * dtype.itemsize
    align = tuning.ALIGN_BYTES
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _new_buffer(shape, dtype) -> np.ndarray:
    """Workspace memory, aligned. Uninitialised on purpose; the tests fill it with NaN so
    that any read of a row no kernel wrote shows up as NaN every time."""
    return aligned_empty(shape, dtype)


def _output_buffer(shape, dtype) -> np.ndarray:
    """A fresh array handed to the caller (y, the final state): the kernels write each
    element once, row by row, so it is not aligned (finding an address to align costs 2 µs,
    the whole allocation 5 µs of a 120 µs S forward). Uninitialised, NaN in the tests."""
    return np.empty(shape, dtype)


def _pack(split, parts: int, cost: int, args: tuple) -> None:
    """Pack weights by ``split``, one of ``kernels.parallel``'s packings, in ``parts``
    independent ranges: over nlstm's threads from a ``cost`` of ``tuning.PARALLEL_PACK`` on
    (the elements, 3 each for a transpose's). A training step packs its weights anew three
    or four times (at L 0.9 ms of 55, the weights out of cache)."""
    if cost < tuning.PARALLEL_PACK:  # (run_rows would decide so too, a microsecond later)
        split.serial(0, parts, *args)
    else:
        _threads.run_rows(parts, float(cost), split, args, [()], (),
                          min_work=tuning.PARALLEL_PACK)


class Workspace:
    """Every buffer one (T, B) shape needs, allocated once and reused.

    x: (T, B, I) the input, time-major, in the layer's dtype (written by training forwards
       and for inputs that need converting; inference reads a conforming input in place)
    y[k]: (T, B, D·O) output of layer k (O: output features per direction); the last
          layer's is replaced by a fresh array each forward, which the caller gets as y
    gates[k][d]: (T, B, G·H) input projection, then saved gates, then gate gradients
    states[s][k][d]: (T+1, B, size of state s) state slots (see nlstm.kernels.slots)
    init[s], final[s], dinit[s], dfinal[s]: (L·D, B, size of state s); final[s] is replaced
    by fresh arrays each forward, handed to the caller as the final state
    dy_a, dy_b: (T, B, D·O) gradient buffers between layers (dy_b also takes a converted
    dy); dx: (T, B, I)
    masks[k]: (T, B, D·O) dropout masks for k < L-1
    extra[k][d]: dict of cell-specific saved buffers
    stacked: the block kernels' scratch, one (threads, ...) array per kind (see the cell's
    ``_scratch``), for the parallel drivers; scratch[thread]: that thread's views of them
    """

    def __init__(self, layer: "RecurrentLayer", T: int, B: int):
        self.key = (T, B)
        L, D, G, H, O = (layer.num_layers, layer.num_directions, layer._G, layer.hidden_size,
                         layer._out_size)
        dt = layer.dtype
        e = lambda *s: _new_buffer(s, dt)
        sizes = layer._state_sizes()
        self.x = e(T, B, layer.input_size)
        self.y = [e(T, B, D * O) for _ in range(L)]
        self.gates = [[e(T, B, G * H) for _ in range(D)] for _ in range(L)]
        self.states = [[[e(T + 1, B, n) for _ in range(D)] for _ in range(L)] for n in sizes]
        self.init = [e(L * D, B, n) for n in sizes]
        self.final = [e(L * D, B, n) for n in sizes]
        self.dinit = [e(L * D, B, n) for n in sizes]
        self.dfinal = [e(L * D, B, n) for n in sizes]
        self.dy_a = e(T, B, D * O)
        self.dy_b = e(T, B, D * O)
        self.dx = e(T, B, layer.input_size)
        self.masks = [e(T, B, D * O) for _ in range(L - 1)] if layer.dropout else []
        self.extra = [[layer._extra_buffers(T, B, e) for _ in range(D)] for _ in range(L)]
        self.stacked, self.scratch = (), []
        self.train = False  # whether the forward running (or the last one) is a training one
        self.ensure_scratch(layer, _threads.get_num_threads())
        self.lengths = np.empty(B, np.int64)
        self.valid = T * B  # steps summed over the rows: lengths.sum(), set by each forward
        self._flat: dict = {}  # see flat

    def flat(self, name: str, size: int, dtype) -> np.ndarray:
        """A flat scratch buffer ``name`` of at least ``size`` elements, allocated by the
        first call that needs it (training only: inference never asks) and kept with the
        workspace: the backward's products on the panel tiles take aᵀ and the packed gate
        gradients here."""
        buf = self._flat.get(name)
        if buf is None or buf.size < size:
            buf = self._flat[name] = aligned_empty(size, dtype)
        return buf

    def ensure_scratch(self, layer: "RecurrentLayer", n: int) -> None:
        """One scratch set per thread; threads may have been added since allocation."""
        if len(self.scratch) >= n:
            return
        one = layer._scratch(self.key[1], lambda *s: _new_buffer(s, layer.dtype))
        self.stacked = tuple(aligned_empty((n, *a.shape), a.dtype) for a in one)
        self.scratch = [tuple(a[t] for a in self.stacked) for t in range(n)]


class RecurrentLayer(Lockable):
    """Base of the recurrent layers. Shapes follow PyTorch: x is (T, B, I), (B, T, I) with
    ``batch_first``, or unbatched (T, I); states are (L·D, B, ·), or (L·D, ·) unbatched."""

    _G = 1                         # gate blocks of H rows in weight_ih / weight_hh
    _state_labels = ("h0",)        # names of the state arrays, for messages
    _name = "RecurrentLayer"
    _gate_math = "RecurrentLayer"  # the ONNX operator whose activation slots the cell has

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
        if not is_real(dropout) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.seed = seed_value(seed)
        self.zoneout = 0.0  # see _set_zoneout (LSTM, LayerNormLSTM, GRU)

    def _set_zoneout(self, zoneout: float) -> None:
        """Zoneout (Krueger et al., 2017): in training forwards each unit of every state
        keeps its previous value with probability ``zoneout``; inference takes the
        expectation, state = p·previous + (1 − p)·new."""
        if not is_real(zoneout) or not 0 <= zoneout < 1:
            raise ValueError(f"zoneout must be a number in [0, 1), got {zoneout!r}")
        self.zoneout = float(zoneout)

    def _init_params(self) -> None:
        """Uniform init over ±1/√H from ``seed``, as PyTorch; then the cell's adjustments.

        Weight matrices are stored transposed, (K, G) C-contiguous, which is the layout the
        kernels stream (``self._wt``); ``params`` holds PyTorch-layout views of the same
        memory, so in-place updates through either are seen by both and no copy goes stale.
        Gradients use the same layout as their parameters.
        """
        rng = np.random.default_rng(self.seed)
        bound = 1.0 / math.sqrt(self.hidden_size)
        self.params: dict = {}
        self._wt: dict = {}
        self.grads: dict = {}
        for name, shape in self._param_shapes().items():
            value = rng.uniform(-bound, bound, shape).astype(self.dtype)
            if len(shape) == 2:
                self._wt[name] = aligned_empty(shape[::-1], self.dtype)
                self._wt[name][...] = value.T
                self.params[name] = self._wt[name].T
                self.grads[name] = np.zeros(shape[::-1], self.dtype).T
            else:
                self.params[name] = value
                self.grads[name] = np.zeros(shape, self.dtype)
        self._adjust_init()
        self._zero_bias = np.zeros(self._G * self.hidden_size, self.dtype)
        self._dropout_rng = rng  # continues the init stream: one seed fixes both
        self._step_sizes = self._state_sizes()
        # a step allocates its new state arrays in one block when they have one size (LSTM)
        self._step_block = len(self._step_sizes) > 1 and len(set(self._step_sizes)) == 1
        self._no_matrix = np.zeros((0, 0), self.dtype)
        self._no_pack = np.zeros(0, self.dtype)
        self._no_rows = np.zeros(0, np.int64)
        self._no_acts = np.zeros((0, 3), self.dtype)
        self._acts_cache: dict = {}  # see _acts
        self._new_workspace_state()

    def _new_workspace_state(self) -> None:
        """Everything a call writes besides the parameters and gradients, empty."""
        self._ws: Optional[Workspace] = None
        self._trained = False  # the workspace holds a training forward that backward may use
        self._unbatched = False
        self._step_work = aligned_empty(self._work_size(), self.dtype)
        self._plan: Optional[tuple] = None  # see _step_plan
        self._step_entry = None  # see _step_run: None until the first fast step
        self._step_zeros: list = []  # see _step_fast
        self._flags = np.zeros(0, np.int64)  # see _barrier_flags
        self._part_bufs: dict = {}  # see _part_rows
        self._pack_bufs: dict = {}  # see _packed_gates
        # One call at a time uses the workspace and the step scratch above: forward,
        # backward, step and the layer's streams each hold this lock (see the README).
        self._new_lock()
        self._train_thread: Optional[int] = None  # the thread of the training forward
        self._grad_backup = GradBackup()

    def __getstate__(self):
        state = super().__getstate__()
        state["_step_entry"] = None  # compiled code's address: this process's alone
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        # Pickle (and copy.deepcopy) copies each array on its own: params' views of the
        # stored weights arrive as arrays apart from them, so a load_state_dict or an
        # optimizer step on the copy would never reach its kernels. The kernels read views
        # of params again: params' arrays are the ones an optimizer copied along with the
        # layer holds (they may start off a cache line: a little slower, never stale).
        for name in self._wt:
            p = self.params[name]
            if not p.T.flags.c_contiguous:  # pickle keeps the order: not expected
                p = self.params[name] = aligned_empty(p.shape[::-1], self.dtype).T
                p[...] = self._wt[name].T
            self._wt[name] = p.T
        self._plan = None  # it held the arrays replaced here

    def _sibling(self) -> "RecurrentLayer":
        """A layer that shares this one's parameters and gradients (the same arrays, so
        in-place updates reach both) but has its own workspace and lock: a concurrent call
        runs on a sibling instead of waiting (``nlstm.onnx.Model.run``)."""
        twin = copy.copy(self)
        twin._new_workspace_state()
        return twin

    def _set_options(self, clip, activations, activation_alpha, activation_beta) -> None:
        """Check and keep ``clip`` and the activations (see nlstm.activations): sets
        ``clip`` (None or a float), ``activations`` (None, or the names per direction as
        given), ``activation_alpha``/``activation_beta`` and ``_act_spec`` (one spec per
        direction, None for the cell's defaults)."""
        from . import activations as A
        if clip is not None and (not is_real(clip) or not clip > 0):
            raise ValueError(f"clip must be None or a positive number, got {clip!r}")
        # inf clips nothing: the same as None (and a config JSON can hold)
        self.clip = None if clip is None or np.isinf(clip) else float(clip)
        spec = A.parse(self._gate_math, activations, activation_alpha, activation_beta,
                       self.num_directions)
        self._act_spec = None if A.is_default(self._gate_math, spec) else spec
        self.activations = None if activations is None else [str(a) for a in activations]
        self.activation_alpha = None if activation_alpha is None else [float(a) for a in activation_alpha]
        self.activation_beta = None if activation_beta is None else [float(b) for b in activation_beta]

    def _acts(self, d: int, spec=None) -> np.ndarray:
        """Direction d's activation rows (code, alpha, beta) for the kernels, (0, 3) when the
        cell runs its default loops; ``spec`` overrides the layer's (a cell that clips with
        its default functions passes them)."""
        from . import activations as A
        spec = self._act_spec if spec is None else spec
        if spec is None:
            return self._no_acts
        key = (d, spec[d])
        arr = self._acts_cache.get(key)
        if arr is None:
            arr = self._acts_cache[key] = A.array(spec[d], self.dtype)
        return arr

    def _options_config(self) -> dict:
        return dict(clip=self.clip, activations=self.activations,
                    activation_alpha=self.activation_alpha, activation_beta=self.activation_beta)

    # ---- what a cell provides -----------------------------------------------------------
    @property
    def _out_size(self) -> int:
        """Output features per direction."""
        return self.hidden_size

    @property
    def output_size(self) -> int:
        """Features of the output y: directions × (proj_size or hidden_size)."""
        return self.num_directions * self._out_size

    def _state_sizes(self) -> Tuple[int, ...]:
        return (self._out_size,)

    def _extra_param_shapes(self, k: int, sfx: str) -> dict:
        return {}

    def _adjust_init(self) -> None:
        pass

    def _extra_buffers(self, T: int, B: int, e) -> dict:
        """Cell-specific saved buffers; ``e(*shape)`` allocates one in the layer's dtype."""
        return {}

    def _zoneout_buffers(self, T: int, B: int, e) -> dict:
        """``zoneout``: one (T, B, n) mask per state (empty (0, 0, 0) arrays without
        zoneout), filled by ``_zoneout_masks``."""
        if not self.zoneout:
            return dict(zoneout=[e(0, 0, 0) for _ in self._state_sizes()])
        return dict(zoneout=[e(T, B, n) for n in self._state_sizes()])

    def _zoneout_masks(self, ws: "Workspace", k: int, d: int, train: bool) -> None:
        """Fill layer k, direction d's zoneout masks: 1 (keep the previous value) with
        probability p, else 0, from the layer's seeded stream (as dropout's masks) in
        training; p everywhere in inference, which makes the step the expectation."""
        p, ex = self.zoneout, ws.extra[k][d]
        if not train and ex.get("zoneout_filled") == p:
            return  # p everywhere still, from the last inference (a pass over T·B·H each)
        for mask in ex["zoneout"]:
            if train:
                self._bernoulli(mask, p, 1.0)
            else:
                mask.fill(p)
        ex["zoneout_filled"] = None if train else p

    def _bernoulli(self, mask: np.ndarray, prob: float, value: float) -> None:
        """Fill mask (C-contiguous) with ``value`` at probability ``prob``, else 0: one key
        from the layer's seeded stream, then ``kernels.masks.bernoulli`` (the draws)."""
        key = np.uint64(self._dropout_rng.integers(0, 2 ** 64, dtype=np.uint64))
        threshold = np.uint64(min(round(prob * 2.0 ** 32), 2 ** 32))
        masks.bernoulli(mask.reshape(-1), key, threshold, value)

    def _work_size(self) -> int:
        """Scratch elements of one streaming step."""
        return self._out_size

    def _scratch(self, B: int, e) -> tuple:
        """Per-thread scratch of the block kernels: active rows and times (B,) int64, then
        float blocks (see nlstm.kernels.blocks)."""
        return ()

    def _config_extra(self) -> dict:
        return {}

    def _forward_dir(self, ws: Workspace, k: int, d: int, inp: np.ndarray) -> None:
        raise NotImplementedError

    def _backward_dir(self, ws: Workspace, k: int, d: int, inp: np.ndarray, dy: np.ndarray,
                      dx: np.ndarray) -> None:
        raise NotImplementedError

    def _step_kernel(self):
        """The cell's streaming kernel ``f(k, check, x, *old, *new, *weights)``: one step of
        layer k reading x (B, I) (layer 0) or new[0][k-1], and old[s][k], writing new[s][k]
        (states (L, B, ·)). With ``check`` it returns False, writing nothing, if its inputs
        are not finite; else True."""
        raise NotImplementedError

    def _make_step_args(self, k: int) -> tuple:
        """Layer k's weight and option arguments of the cell's step kernel."""
        raise NotImplementedError

    def _step_table_kernel(self):
        """The step kernel taking every argument after (k, check, x) as one table
        (``kernels.table``), or None where the cell's options have none."""
        return None

    def _step_plan(self) -> tuple:
        """(the step kernel, [``_make_step_args(k)`` for every layer k]), cached: parameters
        are only ever updated in place, so the arrays stay the same objects for the layer's
        life."""
        if self._plan is None:
            self._plan = (self._step_kernel(),
                          [self._make_step_args(k) for k in range(self.num_layers)])
        return self._plan

    # ---- parameters ---------------------------------------------------------------------
    def _suffixes(self):
        return ("", "_reverse")[: self.num_directions]

    def _param_shapes(self) -> dict:
        G, H, D, O = self._G, self.hidden_size, self.num_directions, self._out_size
        shapes = {}
        for k in range(self.num_layers):
            I = self.input_size if k == 0 else D * O
            for sfx in self._suffixes():
                shapes[f"weight_ih_l{k}{sfx}"] = (G * H, I)
                shapes[f"weight_hh_l{k}{sfx}"] = (G * H, O)
                if self.bias:
                    shapes[f"bias_ih_l{k}{sfx}"] = (G * H,)
                    shapes[f"bias_hh_l{k}{sfx}"] = (G * H,)
                shapes.update(self._extra_param_shapes(k, sfx))
        return shapes

    def _p(self, name: str, k: int, d: int) -> np.ndarray:
        """Parameter ``name`` ("weight_ih", "bias_hh", ...) of layer k, direction d."""
        key = f"{name}_l{k}{self._suffixes()[d]}"
        if name.startswith("bias") and not self.bias:
            return self._zero_bias
        return self.params[key]

    def _w(self, name: str, k: int, d: int) -> np.ndarray:
        """Weight matrix ``name`` of layer k, direction d, transposed: (K, G) C-contiguous."""
        return self._wt[f"{name}_l{k}{self._suffixes()[d]}"]

    def _g(self, name: str, k: int, d: int) -> Optional[np.ndarray]:
        """The gradient array of ``name`` for layer k, direction d (None without bias)."""
        return self.grads.get(f"{name}_l{k}{self._suffixes()[d]}")

    def get_config(self) -> dict:
        """The constructor arguments, as JSON-compatible values."""
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                    bidirectional=self.bidirectional, dtype=self.dtype.name, seed=self.seed,
                    check_finite=self.check_finite, dropout=self.dropout, **self._config_extra())

    def state_dict(self) -> dict:
        """Copies of the parameters (C-contiguous), under PyTorch's key names."""
        return {k: np.array(v, order="C") for k, v in self.params.items()}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Load parameters from PyTorch-named arrays (anything ``np.asarray`` takes).

        Checks every key and shape before changing anything.
        """
        new = checked_state_dict(state_dict, self._param_shapes(), self.dtype)
        with self._lock:  # not half-way through another thread's call
            for name, a in new.items():
                np.copyto(self.params[name], a, casting="unsafe")

    def zero_grad(self) -> None:
        """Set every accumulated parameter gradient to zero."""
        with self._lock:
            for g in self.grads.values():
                g.fill(0)

    # ---- state in and out ---------------------------------------------------------------
    def _pack_state(self, arrays: Sequence[np.ndarray]):
        """The user's form of a state: a single array, or a tuple for several."""
        return arrays[0] if len(arrays) == 1 else tuple(arrays)

    def _state_shapes(self, B: int, unbatched: bool):
        LD = self.num_layers * self.num_directions
        return [(LD, n) if unbatched else (LD, B, n) for n in self._state_sizes()]

    def _check_state(self, state, B: int, unbatched: bool, what: str = "state"):
        """The given state as a list of checked arrays, or None."""
        if state is None:
            return None
        labels = self._state_labels
        if len(labels) == 1:
            arrays = [state]
        else:
            if not isinstance(state, (tuple, list)) or len(state) != len(labels):
                raise TypeError(f"{what} must be a pair ({', '.join(labels)})")
            arrays = list(state)
        out = []
        for label, a, shape in zip(labels, arrays, self._state_shapes(B, unbatched)):
            a = real_array(f"{what} {label}", a, self.check_finite, self.dtype)
            expect_shape(f"{what} {label}", a, shape)
            out.append(a)
        return out

    # ---- input checks and layouts -------------------------------------------------------
    def _check_input(self, x) -> Tuple[np.ndarray, bool]:
        """x as given (checked), and whether it is unbatched."""
        x = real_array("input", x, self.check_finite, self.dtype)
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

    def _time_major(self, a: np.ndarray, unbatched: bool) -> np.ndarray:
        """A view of a user-layout sequence array as (T, B, F)."""
        if unbatched:
            return a[:, None, :]
        return a.transpose(1, 0, 2) if self.batch_first else a

    def _user_layout(self, a: np.ndarray, unbatched: bool, copy: bool = True) -> np.ndarray:
        """A (T, B, F) array in the user's layout, C-contiguous: a fresh copy, or with
        ``copy=False`` a view of ``a`` itself where the layout allows (time-major, unbatched)."""
        if self.batch_first and not unbatched:
            return np.ascontiguousarray(a.transpose(1, 0, 2))
        a = a[:, 0, :] if unbatched else a
        return a.copy() if copy else a

    def _y_shape(self, T: int, B: int, unbatched: bool) -> tuple:
        F = self.output_size
        if unbatched:
            return (T, F)
        return (B, T, F) if self.batch_first else (T, B, F)

    def _workspace(self, T: int, B: int) -> Workspace:
        if self._ws is None or self._ws.key != (T, B):
            self._ws = Workspace(self, T, B)
        return self._ws

    # ---- forward --------------------------------------------------------------------------
    def __call__(self, x, state=None, lengths=None):
        """Inference: ``y, state = layer(x, state, lengths)``."""
        return self.forward(x, state, lengths, train=False)

    def forward(self, x, state=None, lengths=None, train: bool = True):
        """Run the whole sequence; with ``train`` keep what ``backward`` needs.

        x: (T, B, I), (B, T, I) with batch_first, or (T, I)
        state: optional initial state, shaped as the returned one
        lengths: optional (B,) ints in 0..T; outputs past a row's length are zero and its
                 final state is the state at its own last step (reverse directions start
                 at each row's own end)
        Returns y: (T, B, D·O) (or batch-first / unbatched) and the final state.
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
        with self._lock:  # the workspace is the layer's: one call at a time (see README)
            # Everything is checked: from here on the workspace may change.
            self._trained = False
            ws = self._workspace(T, B)
            if train or xt.dtype != self.dtype or not xt.flags.c_contiguous:
                np.copyto(ws.x, xt, casting="unsafe")  # backward reads it after the call returns
                xt = ws.x
            # else inference reads the caller's x during the call only (the projection, no kernel)
            if lengths is None:
                ws.lengths.fill(T)
            else:
                ws.lengths[:] = lens
            for s, buf in enumerate(ws.init):
                if state is None:
                    buf.fill(0)
                else:
                    np.copyto(buf, state[s].reshape(buf.shape), casting="unsafe")
            if not self.batch_first or unbatched:
                # The last layer writes a fresh array that is handed over as y, not copied (no
                # later call reads it: backward reads the states, and y[k] only for k < L-1).
                ws.y[-1] = _output_buffer(ws.y[-1].shape, self.dtype)
            # Likewise the final states (no call reads them after the one that wrote them).
            ws.final = [_output_buffer(f.shape, self.dtype) for f in ws.final]
            ws.valid = T * B if lengths is None else int(lens.sum())
            with _threads.single_threaded_blas:
                self._run_forward(ws, train, xt)
            self._unbatched = unbatched
            self._trained = bool(train)
            self._train_thread = threading.get_ident()
            y = self._user_layout(ws.y[-1], unbatched, copy=False)  # a fresh array already
            return y, self._pack_state([f.reshape(s) for f, s in
                                        zip(ws.final, self._state_shapes(B, unbatched))])

    def _run_forward(self, ws: Workspace, train: bool, x: np.ndarray) -> None:
        """Every layer forward; x: the input (T, B, I) in the layer's dtype, C-contiguous."""
        ws.train = train
        inp = x
        for k in range(self.num_layers):
            for d in range(self.num_directions):
                if self.zoneout:
                    self._zoneout_masks(ws, k, d, train)
                self._forward_dir(ws, k, d, inp)
            y = ws.y[k]
            if train and self.dropout and k < self.num_layers - 1:
                # Inverted dropout on the input of the next layer. y[k] is not needed again
                # except as that input, so it is masked in place.
                mask = ws.masks[k]
                keep = 1.0 - self.dropout
                self._bernoulli(mask, keep, 1.0 / keep)
                y *= mask
            inp = y

    def _project(self, ws: Workspace, k: int, d: int, inp: np.ndarray,
                 bias: Optional[np.ndarray] = None) -> np.ndarray:
        """gates[k][d] = inp·W_ihᵀ (+ bias, if given) for every valid step at once (steps
        past a row's length are left unwritten: no kernel reads them); returns the gates
        buffer."""
        T, B = ws.key
        gates = ws.gates[k][d]
        x2, g2, w = inp.reshape(T * B, -1), gates.reshape(T * B, -1), self._w("weight_ih", k, d)
        per_step = x2.shape[1] * g2.shape[1]
        lengths = ws.lengths
        valid = ws.valid
        b = self._no_pack if bias is None else bias
        # On the panel tiles, rows split over nlstm's threads (threaded BLAS next to the
        # prange regions left its threads spinning on the cores); a small product is one
        # NumPy call on the calling thread (nothing to compile for a first small call).
        if (T * B - valid) * per_step > tuning.PER_ROW_MIN_SAVING * B:
            # Ragged: each batch row over its own length, so the padding costs nothing; the
            # batch rows balanced by their lengths.
            args = (inp, self._packed_panels(k, d, w, "project"), gates, b, lengths,
                    self._no_rows)
            _threads.run_rows(B, float(valid * per_step), P.project_ragged_panels, args, [()],
                              (), row_cost=lengths, min_work=tuning.SMALL_GEMM)
        elif T * B * per_step >= tuning.SMALL_GEMM:
            wp = self._packed_panels(k, d, w, "project")
            _threads.run_rows(T * B, float(T * B * per_step), P.project_panels,
                              (x2, wp, g2, b, self._no_rows, tiles.FROM_ZERO), [()], (),
                              min_work=tuning.SMALL_GEMM)
        else:
            np.matmul(x2, w, out=g2)
            if b.shape[0]:
                g2 += b
        return gates

    def _rows(self, ws: Workspace, split, args: tuple, scratch: bool = True,
              more: tuple = ()) -> None:
        """Run the batched kernel ``split`` (``kernels.parallel.Split``) over the batch on
        nlstm's threads, with each thread's scratch after ``args`` (if ``scratch``), then its
        part of each array of ``more`` ((threads, ...) each, threads = ``get_num_threads()``
        now)."""
        T, B = ws.key
        n = _threads.get_num_threads()
        ws.ensure_scratch(self, n)
        work = float(T) * B * self._G * self.hidden_size * self._out_size
        stacked, parts = (ws.stacked, ws.scratch) if scratch else ((), [()])
        if more:
            stacked = stacked + more
            parts = [sc + tuple(a[i] for a in more) for i, sc in enumerate(parts[:n])]
        # ragged rows cost their lengths (rows all of length T: an even split)
        cost = ws.lengths if ws.valid < T * B else None
        _threads.run_rows(B, work, split, args, parts, stacked, row_cost=cost)

    def _split_units(self) -> bool:
        """Whether the cell has kernels that split one row's hidden units over threads."""
        return False

    def _unit_parts(self, ws: Workspace) -> int:
        """How many threads share the hidden units of a one-row batch (0: don't split; the
        row runs on one thread, see ``_rows``)."""
        per_step = self._G * self.hidden_size * self._out_size
        if ws.key[1] != 1 or per_step < tuning.UNITS_MIN_STEP or not self._split_units() \
                or per_step * float(ws.lengths[0]) < tuning.UNITS_MIN_WORK:
            return 0
        # at most one part per UNIT_ALIGN units (units.unit_range's alignment); system calls last
        n = min(_threads.get_num_threads(), -(-self.hidden_size // tuning.UNIT_ALIGN))
        if n < 2:
            return 0
        n = min(n, _threads.cpus_available())
        return n if n >= 2 and _threads.unit_split_allowed() else 0

    def _barrier_flags(self, n: int) -> np.ndarray:
        """The unit-split kernels' barrier counters for n parts, zeroed for a new call: a
        cache line each, aligned (the values ``sync.barrier_sending`` sends share it)."""
        if self._flags.shape[0] < n * STRIDE or self._flags.ctypes.data % tuning.ALIGN_BYTES:
            self._flags = aligned_empty(n * STRIDE, np.int64)  # (an unpickled copy is not)
        flags = self._flags[:n * STRIDE]
        flags[:] = 0
        return flags

    def _part_rows(self, use: str, n: int, rows: int, width: int) -> np.ndarray:
        """(n, rows, width) scratch in the layer's dtype for ``use``: rows of each of n parts
        of a kernel, its own (kept between calls). Keyed by ``use`` as well as the shape, so
        that two uses never share a buffer because their shapes happen to match."""
        key = (use, n, rows, width)
        buf = self._part_bufs.get(key)
        if buf is None:
            buf = self._part_bufs[key] = aligned_empty((n, rows, width), self.dtype)
        return buf

    def _unit_scratch(self, n: int, K: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
        """Scratch of the unit-split kernels for n parts: (n, K, width) for each part's
        weight columns and (n, width + 16) for its gates (padded apart by a cache line)."""
        return (self._part_rows("unit weights", n, K, width),
                self._part_rows("unit gates", n, 1, width + 16)[:, 0])

    def _packed_gates(self, k: int, d: int) -> np.ndarray:
        """W_hhᵀ of layer k, direction d, packed now for the micro-kernels
        (``kernels.tiles.pack_gates``: the parameters may have changed since the last call),
        or an empty array where the tiles do not apply (H not a multiple of the vector
        width)."""
        w_t = self._w("weight_hh", k, d)
        if not tiles.packable(w_t, self._G):
            return self._no_pack
        buf = self._pack_bufs.get((k, d))
        if buf is None:
            buf = self._pack_bufs[(k, d)] = aligned_empty(w_t.size, self.dtype)
        _pack(P.pack_gates, tiles.gate_units(w_t, self._G), w_t.size, (buf, w_t, self._G))
        return buf

    def _packed_carry(self, k: int, d: int) -> np.ndarray:
        """W_hh of layer k, direction d, packed now for the backward carry's micro-kernels
        (``kernels.tiles.pack_panels`` of W_hh), or an empty array where they do not apply."""
        return self._packed_panels(k, d, self._w("weight_hh", k, d).T, "carry")

    def _panels_fit(self) -> bool:
        """Whether each gate block is a whole number of panels (H a multiple of their
        width): the per-step products that start at a gate block past the first (the GRU
        without lbr's W_hn·(r⊙h), the unit splits' parts) need it; the others take a
        partial last panel."""
        return self.hidden_size % tiles.panel_width(self.dtype) == 0

    def _packed_panels(self, k: int, d: int, w: np.ndarray, use: str,
                       vectors: int = 4) -> np.ndarray:
        """w (D, N) packed now for ``kernels.tiles.panel_rows`` into the layer's buffer for
        ``use`` of layer k, direction d, or an empty array where the tiles do not apply.
        ``vectors=2``: panels of 2 vector widths, for ``tiles.project_narrow`` (w must be
        the transpose of a C-contiguous array)."""
        if not tiles.packable_panels(w):
            return self._no_pack
        buf = self._pack_bufs.get((k, d, use))
        if buf is None:
            buf = self._pack_bufs[(k, d, use)] = aligned_empty(tiles.panels_size(w, vectors),
                                                               self.dtype)
        if vectors != 4 or not w.flags.c_contiguous and w.T.flags.c_contiguous:  # transposed
            _pack(P.pack_panels_of_transpose, tiles.panel_count(w, vectors), 3 * w.size,
                  (buf, w.T, vectors))
        else:
            _pack(P.pack_panels, tiles.panel_count(w), w.size, (buf, w))
        return buf

    # ---- backward -------------------------------------------------------------------------
    def _backward(self, dy, dstate: list):
        """Gradients of the last training forward.

        dy: gradient of y, same shape as y; dstate: gradient of each final state array, or
        None. Returns dx (shape of x) and the gradient of the initial state (shaped as the
        state), and adds every parameter gradient into ``self.grads``.
        """
        with self._lock:  # as forward
            return self._backward_locked(dy, dstate)

    def _backward_locked(self, dy, dstate: list):
        if not self._trained:
            raise ValueError("backward() needs a forward(..., train=True) first, and each "
                             "training forward can be backpropagated once")
        check_training_thread(self, self._train_thread)
        ws = self._ws
        T, B = ws.key
        unbatched = self._unbatched
        dy = real_array("dy", dy, self.check_finite, self.dtype)
        expect_shape("dy", dy, self._y_shape(T, B, unbatched))
        shapes = self._state_shapes(B, unbatched)
        checked = []
        for label, g, shape in zip(self._state_labels, dstate, shapes):
            name = "d" + label[:-1] + "_n"
            if g is not None:
                g = real_array(name, g, self.check_finite, self.dtype)
                expect_shape(name, g, shape)
            checked.append(g)
        # Everything is checked.
        self._trained = False
        dy = self._time_major(dy, unbatched)
        if dy.dtype != self.dtype or not dy.flags.carray:
            # The kernels read dy as given when it is a C-contiguous, aligned, writeable
            # array of the layer's dtype (one compiled type); anything else is converted.
            np.copyto(ws.dy_b, dy, casting="unsafe")
            dy = ws.dy_b
        for buf, g in zip(ws.dfinal, checked):
            if g is None:
                buf.fill(0)
            else:
                np.copyto(buf, g.reshape(buf.shape), casting="unsafe")
        ws.ensure_scratch(self, _threads.get_num_threads())
        # The gradient of each lower layer's output goes to dy_a, dy_b, dy_a, ... in turn, so
        # no layer writes the buffer it reads (the top one reads the caller's dy or dy_b).
        ping_pong = (ws.dy_a, ws.dy_b)
        # dx goes to a fresh array handed to the caller, as y does (a copy of it took 0.27 ms
        # of 55 at L), unless batch_first makes it a transposed copy anyway; like y, not
        # aligned (finding an aligned address cost more than it saved at S).
        handed = not self.batch_first or unbatched
        if handed:
            ws.dx = _output_buffer(ws.dx.shape, self.dtype)
        # A backward that stops early (an error, KeyboardInterrupt) puts the gradients back.
        with _threads.single_threaded_blas:
            with self._grad_backup.guard(self.grads):
                for n, k in enumerate(reversed(range(self.num_layers))):
                    inp = ws.x if k == 0 else ws.y[k - 1]
                    dx = ws.dx if k == 0 else ping_pong[n % 2]
                    for d in range(self.num_directions):
                        self._backward_dir(ws, k, d, inp, dy, dx)
                    if k > 0 and self.dropout:
                        dx *= ws.masks[k - 1]
                    dy = dx
        return (self._user_layout(ws.dx, unbatched, copy=not handed),
                self._pack_state([g.reshape(s).copy() for g, s in zip(ws.dinit, shapes)]))

    def _input_grads(self, ws: Workspace, k: int, d: int, inp: np.ndarray, dgates: np.ndarray,
                     dx: np.ndarray, db: Optional[np.ndarray] = None,
                     hprev: Optional[np.ndarray] = None) -> None:
        """Whole-sequence products for the input side, after the sequential pass.

        dgates: (T, B, G·H) gradients of the input-side gate pre-activations; inp: the
        layer's input (T, B, I). Adds into W_ih's and b_ih's gradients; writes dx (d == 0)
        or adds to it. b_ih's gradient is Σ dgates over (T, B), or ``db`` if given (where
        b_ih does not enter the pre-activations directly).
        hprev: the recurrent input of each step (T, B, H), given where the hidden side's
        gate gradients are dgates too (and b_hh's gradient b_ih's): W_hh's and b_hh's
        gradients are then added here, W_hh's in the same pass over dgates as W_ih's.
        """
        T, B = ws.key
        dg, x2, dx2 = dgates.reshape(T * B, -1), inp.reshape(T * B, -1), dx.reshape(T * B, -1)
        macs = T * B * x2.shape[1] * dg.shape[1]
        gb = self._g("bias_ih", k, d)
        pairs, wmacs = [(x2, self._g("weight_ih", k, d))], macs
        if hprev is not None:
            h2 = hprev.reshape(T * B, -1)
            pairs.append((h2, self._g("weight_hh", k, d)))
            wmacs += T * B * h2.shape[1] * dg.shape[1]
        sums = self._weight_grads(ws, dg, pairs, wmacs, sum_rows=gb is not None and db is None)
        db = sums if db is None else db
        if gb is not None:
            gb += db
            gbh = None if hprev is None else self._g("bias_hh", k, d)
            if gbh is not None:
                gbh += db
        # dx = dg·W_ih; the second direction adds to it. On the panel tiles (W_ih packed as
        # panels of its (G·H, I) view), rows split over nlstm's threads; a small one by NumPy
        # on the calling thread.
        w_t = self._w("weight_ih", k, d)
        if macs >= tuning.SMALL_GEMM:
            narrow = tiles.narrow(dx2.shape[1], self.dtype)  # few inputs: panels of 2 vectors
            args = (dg, self._packed_panels(k, d, w_t.T, "dx", 2 if narrow else 4), dx2,
                    self._no_pack, self._no_rows, tiles.FROM_ZERO if d == 0 else tiles.FROM_OUT)
            _threads.run_rows(T * B, float(macs), P.project_narrow if narrow else P.project_panels,
                              args, [()], (), min_work=tuning.SMALL_GEMM)
        elif d == 0:
            np.matmul(dg, w_t.T, out=dx2)
        else:
            part = ws.flat("dx part", dx2.size, self.dtype)[:dx2.size].reshape(dx2.shape)
            dx2 += np.matmul(dg, w_t.T, out=part)

    def _weight_grads(self, ws: Workspace, dg: np.ndarray, pairs: list, macs: float,
                      cols: slice = slice(None), sum_rows: bool = False) -> Optional[np.ndarray]:
        """gw[cols] += dg[:, cols]ᵀ·a for each (a, gw) of ``pairs`` (one or two); dg: (N, G'),
        a: (N, K), gw: (G', K), a parameter's gradient (stored transposed: gwᵀ has
        contiguous rows); macs: the multiply-adds of all of them. On the panel tiles
        (``kernels.tiles.weight_grad_panels``, both products from one packing of dg), the
        panels of columns split over nlstm's threads, each part adding into its own columns
        of gwᵀ: no reduction, no copies. A small one by NumPy on the calling thread.
        With ``sum_rows``, returns Σ dg[:, cols] over the rows (a bias gradient, (c1 - c0,);
        on the tiles summed while dg is packed), else None."""
        c0, c1, _ = cols.indices(dg.shape[1])
        if c1 <= c0:
            return np.zeros(0, self.dtype) if sum_rows else None
        S = tiles.panel_width(self.dtype)
        if macs >= tuning.SMALL_GEMM:
            (a, gw), none = pairs[0], self._no_matrix
            b, gv_t = (pairs[1][0], pairs[1][1].T) if len(pairs) > 1 else (none, none)
            size = (c1 - c0 + S) * tiles.grad_block(dg, a, b)
            sums = self._no_pack
            if sum_rows:
                sums = ws.flat("bias sum", dg.shape[1], self.dtype)[:dg.shape[1]]
                sums[c0:c1] = 0
            args = (c0, c1, dg, a, gw.T, b, gv_t, sums, ws.flat("dg_panels", size, self.dtype),
                    self._no_rows)
            _threads.run_rows(-(-(c1 - c0) // S), macs, P.weight_grad_panels, args, [()], (),
                              min_work=tuning.SMALL_GEMM)
            return sums[c0:c1] if sum_rows else None
        for a, gw in pairs:
            n = a.shape[1] * (c1 - c0)
            part = ws.flat("dw part", n, self.dtype)[:n].reshape(a.shape[1], c1 - c0)
            gw.T[:, c0:c1] += np.matmul(a.T, dg[:, c0:c1], out=part)
        # one matrix-vector product (a pass of its own over dg's columns)
        return np.ones(dg.shape[0], dg.dtype) @ dg[:, c0:c1] if sum_rows else None

    def _hidden_grads(self, ws: Workspace, k: int, d: int, dgates: np.ndarray, hprev: np.ndarray,
                      rows: slice = slice(None), db: Optional[np.ndarray] = None) -> None:
        """The hidden side: W_hh[rows] and b_hh[rows] gradients from the gate gradients
        dgates (T, B, G·H) and the recurrent input of each step hprev (T, B, ·). db: Σ of
        dgates[..., rows] over (T, B) if already computed."""
        T, B = ws.key
        dg = dgates.reshape(T * B, -1)
        c0, c1, _ = rows.indices(dg.shape[1])
        gb = self._g("bias_hh", k, d)
        sums = self._weight_grads(ws, dg, [(hprev.reshape(T * B, -1),
                                            self._g("weight_hh", k, d))],
                                  T * B * hprev.shape[2] * (c1 - c0), rows,
                                  sum_rows=gb is not None and db is None)
        if gb is not None:
            gb[rows] += sums if db is None else db

    @staticmethod
    def _hprev(state: np.ndarray, d: int) -> np.ndarray:
        """The state before each time step, (T, B, ·), from its (T+1)-slot buffer."""
        return state[1:] if d == 1 else state[:-1]

    # ---- streaming ------------------------------------------------------------------------
    def step(self, x_t, state=None):
        """Advance every layer by one time step: ``y_t, state = layer.step(x_t, state)``.

        x_t: (B, I) or (I,); state: optional, shaped as ``forward``'s final state (L, B, ·)
        or (L, ·). Equal to running the sequence in one call, one step at a time.
        """
        out = self._step_fast(x_t, state)
        if out is not None:
            return out
        if self.bidirectional:
            raise ValueError(f"step() needs a unidirectional {self._name}: a bidirectional "
                             "layer must see the whole sequence")
        # Not the fast path's case, or a non-finite value: the full checks name the problem.
        x, old, unbatched = self._step_checked_inputs(x_t, state)
        return self._step_run(x, old, unbatched, False)

    def stream(self, batch_size: Optional[int] = None, state=None) -> Stream:
        """A :class:`~nlstm.stream.Stream` that keeps the state between calls:
        ``s = layer.stream(); y_t = s(x_t)``, x_t (I,) (or (B, I) with ``batch_size=B``).
        Equal to ``step`` with the state carried, without its allocations and checks of the
        state each call."""
        return Stream(self, batch_size, state)

    def _step_fast(self, x, state):
        """The common streaming case, checked cheaply and run: C-contiguous arrays already in
        the layer's dtype and shapes, batched (B, I) or unbatched (I,). None (having changed
        nothing the caller holds) sends the call to the general checks, which name whatever
        is wrong; finiteness is checked by the step kernels themselves."""
        dt = self.dtype
        # ``is``: NumPy's native dtypes are singletons; any other goes the general way.
        # ``carray``: C-contiguous, aligned and writeable, the one array type the kernel is
        # compiled for (so ``_step_run`` may call its compiled entry point directly).
        if type(x) is not np.ndarray or x.dtype is not dt or not x.flags.carray \
                or self.bidirectional:
            return None
        unbatched = x.ndim == 1
        if unbatched:
            x = x[None]  # (a view by indexing costs a quarter of reshape's)
        elif x.ndim != 2:
            return None
        B, I = x.shape
        if I != self.input_size or B == 0:
            return None
        L, sizes = self.num_layers, self._step_sizes
        if state is None:
            # zeros the kernels only read, kept for the next call with the same B
            old = self._step_zeros
            if not old or old[0].shape[1] != B:
                old = self._step_zeros = [np.zeros((L, B, n), dt) for n in sizes]
        else:
            old = [state] if len(sizes) == 1 else state
            if type(old) not in (tuple, list) or len(old) != len(sizes):
                return None
            old = list(old)
            for i, n in enumerate(sizes):
                a = old[i]
                if type(a) is not np.ndarray or a.dtype is not dt or not a.flags.carray \
                        or a.shape != ((L, n) if unbatched else (L, B, n)):
                    return None
                if unbatched:
                    old[i] = a[:, None]
        return self._step_run(x, old, unbatched, self.check_finite, True)

    def _step_run(self, x, old, unbatched, check, carray=False):
        """Run every layer's step kernel: x (B, I) and the states old [(L, B, n)] are checked
        but for finiteness, which the kernels check with ``check``: None if not finite
        (nothing the caller holds was written). ``carray``: x and old are all C-contiguous,
        aligned and writeable, so the kernel's compiled entry point may take them without
        the dispatcher's typing of every argument (as a Stream does; see stream.py)."""
        L, B, dt = self.num_layers, x.shape[0], self.dtype
        sizes = self._step_sizes
        if self._step_block:  # one allocation instead of one per state (0.4 µs each)
            block = np.empty((len(sizes), L, B, sizes[0]), dt)
            new = [block[i] for i in range(len(sizes))]
        else:
            new = [np.empty((L, B, n), dt) for n in sizes]
        kernel, layers = self._step_plan()
        call = (self._step_entry if carray else None) or kernel
        with self._lock:  # the kernels share the layer's step scratch
            for k, args in enumerate(layers):
                if not call(k, check, x, *old, *new, *args):
                    return None
            if carray and self._step_entry is None:  # once: the entry point, or the kernel
                every = [(k, check, x, *old, *new, *args) for k, args in enumerate(layers)]
                self._step_entry = _entry_point(kernel, every) or kernel
        y = new[0][L - 1].copy()
        if unbatched:
            return y[0], self._pack_state([n[:, 0] for n in new])
        return y, self._pack_state(new)

    def _step_checked_inputs(self, x_t, state):
        x = real_array("x_t", x_t, self.check_finite, self.dtype)
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
        L, dt, sizes = self.num_layers, self.dtype, self._state_sizes()
        x = np.ascontiguousarray(x.reshape(B, self.input_size), dtype=dt)
        if st is None:
            old = [np.zeros((L, B, n), dt) for n in sizes]
        else:
            old = [np.ascontiguousarray(a, dtype=dt).reshape(L, B, n) for a, n in zip(st, sizes)]
        return x, old, unbatched

    def __repr__(self) -> str:
        defaults = dict(num_layers=1, bias=True, batch_first=False, bidirectional=False, dropout=0.0)
        cfg = self.get_config()
        extra = "".join(f", {n}={cfg[n]}" for n in cfg
                        if n not in ("input_size", "hidden_size", "dtype", "seed", "check_finite")
                        and cfg[n] != defaults.get(n, self._config_defaults().get(n)))
        return f"{self._name}({self.input_size}, {self.hidden_size}{extra}, dtype={self.dtype.name})"

    def _config_defaults(self) -> dict:
        return {}
