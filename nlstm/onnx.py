"""ONNX in and out: run recurrent ONNX models on nlstm layers, and write nlstm models as
standard ONNX nodes that ONNX Runtime runs.

``load(model_or_path)`` turns every ``LSTM``, ``GRU`` and ``RNN`` node into an nlstm layer
(constant weights converted once, at load; weights fed as inputs converted on the first
run that brings them, see ``_Recurrent``), with every attribute of the specification
(``clip``, all its activations with their alpha and beta, ``layout`` 0 and 1), and runs
the rest of the graph (the usual glue: Squeeze,
Unsqueeze, Transpose, Reshape, Gemm, MatMul, Add, ...) in NumPy. The result is a drop-in
for ``onnxruntime.InferenceSession.run``, and its ``stream()`` carries recurrent state
between calls, which ONNX Runtime cannot do.

``save(model, path, opset=...)`` writes an nlstm layer or ``Sequential`` as ONNX nodes:
each layer of a stack is one node (ONNX has no stacked recurrent node), lengths become
``sequence_lens``, and a linear head becomes ``Gemm``.

The ``onnx`` package is optional (``pip install "nlstm[onnx]"``) and imported only when one
of these functions runs: ``import nlstm`` and ``import nlstm.onnx`` never need it.

Gate orders differ between the formats, and this module is the one place that maps them:

- LSTM: ONNX i, o, f, c; nlstm (PyTorch) i, f, g, o. Peepholes: ONNX ``P`` is p_i, p_o,
  p_f; nlstm's ``peephole_l{k}`` is p_i, p_f, p_o.
- GRU: ONNX z, r, h; nlstm r, z, n. ONNX's ``linear_before_reset=0`` (its default) is
  nlstm's ``GRU(linear_before_reset=False)``; PyTorch's GRU is ``linear_before_reset=1``.
- ONNX biases ``B`` are [Wb, Rb] per direction: nlstm's ``bias_ih`` and ``bias_hh``.
"""
from __future__ import annotations

import os
import threading
import traceback
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from . import activations as _activations
from ._validate import lengths_array
from .gru import GRU
from .interop import reorder_blocks as _reorder
from .lstm import LSTM
from .recurrent import RecurrentLayer
from .rnn import RNN

__all__ = ["load", "save", "Model", "Stream"]

# Recurrent ops: gate blocks G, input slots, and nlstm's block order given in ONNX indices.
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_SLOTS = {
    "LSTM": ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"),
    "GRU": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
    "RNN": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
}
_FROM_ONNX = {"LSTM": (0, 2, 3, 1), "GRU": (1, 0, 2), "RNN": (0,)}   # nlstm block j = ONNX block order[j]
_TO_ONNX = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN": (0,)}     # ONNX block j = nlstm block order[j]
_PEEP = (0, 2, 1)  # (p_i, p_o, p_f) <-> (p_i, p_f, p_o); its own inverse
# ONNX's default activations of each op, per direction.
_ACTIVATIONS_ONNX = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
_COMMON_ATTRS = {"activation_alpha", "activation_beta", "activations", "clip", "direction",
                 "hidden_size", "layout"}
_ATTRS = {"LSTM": _COMMON_ATTRS | {"input_forget"}, "GRU": _COMMON_ATTRS | {"linear_before_reset"},
          "RNN": _COMMON_ATTRS}
MIN_OPSET = 13  # Squeeze/Unsqueeze/Slice take their axes as inputs from here on


def _onnx():
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('nlstm.onnx needs the onnx package: pip install "nlstm[onnx]"') from e
    return onnx


def _flip_valid(a: np.ndarray, lengths: Optional[np.ndarray]) -> np.ndarray:
    """Reverse each row's first lengths[b] steps of a time-major (T, B, F) array, leaving the
    padding in place: a reverse-direction node is a forward layer on this view."""
    if lengths is None:
        return a[::-1]
    T = a.shape[0]
    t = np.arange(T)[:, None]
    idx = np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
    return np.take_along_axis(a, idx[:, :, None], axis=0)


class Arg(NamedTuple):
    """A graph input or output, as ``onnxruntime.NodeArg``: shape entries are ints, or the
    symbolic name (str) / None of a dynamic axis; type is like ``"tensor(float)"``."""
    name: str
    shape: list
    type: str


# ---- reading a model ---------------------------------------------------------------------
def _read(model_or_path):
    """A ModelProto from a path, bytes or a ModelProto; ValueError for anything unreadable."""
    onnx = _onnx()
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, "model"
    if isinstance(model_or_path, (bytes, bytearray, memoryview)):
        src, what = bytes(model_or_path), "bytes"
    elif isinstance(model_or_path, (str, os.PathLike)):
        src = what = os.fspath(model_or_path)
        if not os.path.isfile(src):
            raise FileNotFoundError(f"no ONNX file at {src!r}")
    else:
        raise TypeError(f"model_or_path must be a path, bytes or an onnx.ModelProto, got "
                        f"{type(model_or_path).__name__}")
    try:
        model = onnx.load_from_string(src) if isinstance(src, bytes) else onnx.load(src)
    except Exception as e:  # protobuf's DecodeError and friends: truncated or not ONNX
        raise ValueError(f"{what}: not a readable ONNX model (truncated or corrupt?): {e}") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ValueError(f"{what}: the ONNX model has no graph nodes (truncated or empty file?)")
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        raise ValueError(f"{what}: the ONNX model declares no opset for the default domain "
                         "(truncated file?)")
    return model, what


def _tensor(onnx, t, where: str) -> np.ndarray:
    try:
        return onnx.numpy_helper.to_array(t)
    except Exception as e:
        raise ValueError(f"{where}: cannot read tensor {t.name!r}: {e}") from None


def _attrs(onnx, node) -> Dict[str, Any]:
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        elif isinstance(v, onnx.TensorProto):
            v = _tensor(onnx, v, f"attribute {a.name!r}")
        out[a.name] = v
    return out


def _type_info(onnx, vi) -> Tuple[Optional[np.dtype], Optional[list]]:
    """(numpy dtype, shape with None/str for dynamic axes) of a ValueInfo, when declared."""
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        return None, None
    dt = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else None
    if not tt.HasField("shape"):
        return dt, None
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return dt, shape


def _type_name(dt: Optional[np.dtype]) -> str:
    names = {"float32": "float", "float64": "double", "int64": "int64", "int32": "int32",
             "bool": "bool", "float16": "float16"}
    return f"tensor({names.get(dt.name, dt.name) if dt is not None else 'undefined'})"


# ---- the recurrent nodes -----------------------------------------------------------------
_WEIGHT_SLOTS = ("W", "R", "B", "P")
# How many distinct sets of run-time weights a node keeps converted (see _Recurrent.layer_for).
_WEIGHT_CACHE = 4


class _Converted(NamedTuple):
    """A layer built from one set of run-time weights: the arrays it came from (for the
    identity check), copies of their contents (for the contents check), and the layer."""
    refs: tuple
    copies: tuple
    layer: RecurrentLayer


class _Recurrent:
    """One ONNX LSTM/GRU/RNN node and the nlstm layer that runs it.

    Weights (W, R, B, P) that are initializers or Constants are converted once, at load.
    Weights fed at run time (graph inputs, or outputs of other nodes) are converted on the
    first run that brings them, and the converted layer is kept in a small cache keyed by
    the arrays: a run whose weight arrays are the same objects as a cached run's (identity
    first) and still equal to them, or new arrays equal to them (contents), reuses that
    layer, so a model fed the same weights every call converts them once. A converted layer
    is never changed afterwards: runs with different weights use different layers, so
    concurrent runs never see each other's weights.
    """

    def __init__(self, onnx, node, label: str, consts: Mapping[str, np.ndarray],
                 static: Mapping[str, Optional[list]]):
        op = node.op_type
        where = f"{op} node {label!r}"
        self.op, self.label, self.where = op, label, where
        slots = _SLOTS[op]
        if len(node.input) > len(slots):
            raise ValueError(f"{where}: takes at most {len(slots)} inputs ({', '.join(slots)}), "
                             f"got {len(node.input)}")
        names = dict(zip(slots, list(node.input) + [""] * (len(slots) - len(node.input))))
        for i, s in enumerate(("X", "W", "R")):
            if not names[s]:
                raise ValueError(f"{where}: missing required input {s} (input {i}); got inputs "
                                 f"{list(node.input)}")
        attrs = _attrs(onnx, node)
        unknown = sorted(set(attrs) - _ATTRS[op])
        if unknown:
            raise ValueError(f"{where}: unsupported attribute {unknown[0]!r} (nlstm supports "
                             f"{sorted(_ATTRS[op])})")
        # Constant weights become a layer now; the others are fed at each run.
        self.fixed: Dict[str, np.ndarray] = {}
        self.fed: List[str] = []
        for s in _WEIGHT_SLOTS:
            if s in names and names[s]:
                if names[s] in consts:
                    self.fixed[s] = consts[names[s]]
                else:
                    self.fed.append(s)
        direction = attrs.get("direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional"):
            raise ValueError(f"{where}: unsupported direction {direction!r}")
        D = 2 if direction == "bidirectional" else 1
        layout = int(attrs.get("layout", 0))
        if layout not in (0, 1):
            raise ValueError(f"{where}: layout must be 0 or 1, got {layout}")
        G = _GATES[op]
        W, R = self.fixed.get("W"), self.fixed.get("R")
        for s, a in (("W", W), ("R", R)):
            if a is not None and a.ndim != 3:
                raise ValueError(f"{where}: W and R must be 3-D (num_directions, "
                                 f"{G}*hidden_size, ·), got {s} {a.shape}")
        r_shape = static.get(names["R"]) if R is None else list(R.shape)
        H = attrs.get("hidden_size")
        if H is None and r_shape is not None and len(r_shape) == 3 and isinstance(r_shape[2], int) \
                and r_shape[2]:
            H = r_shape[2]
        if H is None:
            raise ValueError(f"{where}: needs the hidden_size attribute (R is fed at run time "
                             "without a declared shape)")
        H = int(H)
        if H < 1:
            raise ValueError(f"{where}: hidden_size must be positive, got {H}")
        I = None
        if W is not None:
            I = W.shape[2]
        else:
            for shp in (static.get(names["W"]), static.get(names["X"])):
                if shp is not None and len(shp) == 3 and isinstance(shp[2], int) and shp[2]:
                    I = shp[2]
                    break
        for s in ("initial_h", "initial_c"):
            shp = static.get(names.get(s) or "")
            want = (D, None, H) if layout == 0 else (None, D, H)
            if shp is not None and (len(shp) != 3 or any(isinstance(a, int) and isinstance(b, int)
                                                         and a != b for a, b in zip(shp, want))):
                raise ValueError(f"{where}: {s} is declared {tuple(shp)} but layout={layout}, "
                                 f"direction={direction!r} and hidden_size={H} need "
                                 f"{'(num_directions, batch, hidden)' if layout == 0 else '(batch, num_directions, hidden)'}")
        xs = static.get(names["X"])
        if xs is not None and I is not None and \
                (len(xs) != 3 or (isinstance(xs[2], int) and xs[2] and xs[2] != I)):
            raise ValueError(f"{where}: X is declared with shape {tuple(xs)} but W needs 3-D "
                             f"input with {I} features")
        # Options the nlstm cell must match (the layer checks them; errors name the node).
        kw: Dict[str, Any] = {}
        clip = attrs.get("clip")
        if clip is not None:
            if not clip > 0:
                raise ValueError(f"{where}: clip must be positive, got {clip}")
            kw["clip"] = float(clip)
        if op == "LSTM":
            kw["input_forget"] = bool(attrs.get("input_forget", 0))
        if op == "GRU":
            kw["linear_before_reset"] = bool(attrs.get("linear_before_reset", 0))
        if "activations" in attrs or "activation_alpha" in attrs or "activation_beta" in attrs:
            kw["activations"] = list(attrs.get("activations", _ACTIVATIONS_ONNX[op]))
            kw["activation_alpha"] = attrs.get("activation_alpha")
            kw["activation_beta"] = attrs.get("activation_beta")
        self.kw = kw
        self.G, self.D, self.H, self.I, self.layout = G, D, H, I, layout
        self.direction = direction
        self.reverse = direction == "reverse"
        self.inputs = [names[s] for s in slots]
        self.slots = slots
        self.outputs = list(node.output)
        if not self.outputs or len(self.outputs) > (3 if op == "LSTM" else 2):
            raise ValueError(f"{where}: has {len(self.outputs)} outputs; {op} has "
                             f"{'Y, Y_h, Y_c' if op == 'LSTM' else 'Y, Y_h'}")
        self.n_states = 2 if op == "LSTM" else 1
        self._cache: List[_Converted] = []
        self._lock = threading.Lock()
        # The layer of the constant weights, or of the last run's fed ones (None before).
        self.layer: Optional[RecurrentLayer] = None
        if self.fed:
            # Check the options now, so that a node nlstm cannot run fails at load.
            self._make_layer(I or 1, np.float32)
        else:
            self.layer = self._build(self.fixed)

    def _make_layer(self, I: int, dtype, peephole: bool = False, where: Optional[str] = None
                    ) -> RecurrentLayer:
        cls = {"LSTM": LSTM, "GRU": GRU, "RNN": RNN}[self.op]
        kw = dict(self.kw, peephole=peephole) if self.op == "LSTM" else self.kw
        try:
            return cls(I, self.H, bias=True, bidirectional=self.D == 2, dtype=dtype, **kw)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{self.where if where is None else where}: {e}") from None

    def _build(self, w: Mapping[str, np.ndarray], where: Optional[str] = None) -> RecurrentLayer:
        """A layer with the weights w (slot -> array), each checked against the node's
        attributes; ValueError/TypeError naming the input otherwise, prefixed by where (the
        node's name by default; at run time Model names the node itself)."""
        G, D, H = self.G, self.D, self.H
        where = self.where if where is None else where
        W = w["W"]
        if W.dtype not in (np.float32, np.float64):
            raise TypeError(f"{where}: W must be float32 or float64 (nlstm's dtypes), got {W.dtype}")
        if W.ndim != 3:
            raise ValueError(f"{where}: W must be 3-D (num_directions, {G}*hidden_size, "
                             f"input_size), got shape {W.shape}")
        I = W.shape[2]
        if self.I is not None and I != self.I:
            raise ValueError(f"{where}: W has shape {W.shape} but the node's input has {self.I} "
                             f"features: need {(D, G * H, self.I)}")
        expect = {"W": (D, G * H, I), "R": (D, G * H, H), "B": (D, 2 * G * H), "P": (D, 3 * H)}
        for s, a in w.items():
            if a.shape != expect[s]:
                raise ValueError(f"{where}: {s} has shape {a.shape} but direction="
                                 f"{self.direction!r} and hidden_size={H} need {expect[s]}")
            if a.dtype != W.dtype:
                raise TypeError(f"{where}: {s} has dtype {a.dtype} but W has {W.dtype} (ONNX "
                                "needs one type for X, W, R, B, P)")
        # All-zero peepholes are the plain cell: skip their cost.
        peephole = "P" in w and bool(np.any(w["P"]))
        layer = self._make_layer(I, W.dtype, peephole, where)
        params = {}
        order = _FROM_ONNX[self.op]
        for d, sfx in enumerate(layer._suffixes()):
            params[f"weight_ih_l0{sfx}"] = _reorder(W[d], order)
            params[f"weight_hh_l0{sfx}"] = _reorder(w["R"][d], order)
            if "B" in w:
                params[f"bias_ih_l0{sfx}"] = _reorder(w["B"][d, :G * H], order)
                params[f"bias_hh_l0{sfx}"] = _reorder(w["B"][d, G * H:], order)
            else:  # ONNX's B defaults to zeros
                params[f"bias_ih_l0{sfx}"] = np.zeros(G * H, W.dtype)
                params[f"bias_hh_l0{sfx}"] = np.zeros(G * H, W.dtype)
            if peephole:
                params[f"peephole_l0{sfx}"] = _reorder(w["P"][d], _PEEP)
        try:
            layer.load_state_dict(params)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        return layer

    def layer_for(self, a: Mapping[str, Optional[np.ndarray]]) -> RecurrentLayer:
        """The layer for this run's inputs a (slot -> value): the load-time one, or the
        cached conversion of the fed weights (converted now if no cached one matches)."""
        if not self.fed:
            return self.layer
        arrays = []
        for s in self.fed:
            v = a.get(s)
            if v is None:
                raise ValueError(f"input {s} is fed at run time but has no value")
            arr = np.asarray(v)
            if arr.dtype.kind != "f":
                raise TypeError(f"input {s} must be float32 or float64, got dtype {arr.dtype}")
            arrays.append(arr)
        arrays = tuple(arrays)
        with self._lock:
            cache = list(self._cache)
        hit = None
        for e in cache:  # identity first: the same arrays as a cached run, unchanged since
            if all(x is r for x, r in zip(arrays, e.refs)) and \
                    all(np.array_equal(x, c) for x, c in zip(arrays, e.copies)):
                hit = e
                break
        if hit is None:
            for e in cache:  # then contents: equal arrays given anew
                if all(x.shape == c.shape and x.dtype == c.dtype and np.array_equal(x, c)
                       for x, c in zip(arrays, e.copies)):
                    hit = _Converted(arrays, e.copies, e.layer)
                    break
        if hit is None:
            w = dict(self.fixed)
            w.update(zip(self.fed, arrays))
            hit = _Converted(arrays, tuple(x.copy() for x in arrays), self._build(w, "weights"))
        with self._lock:
            self._cache = [hit] + [e for e in self._cache if e.layer is not hit.layer]
            del self._cache[_WEIGHT_CACHE:]
            self.layer = hit.layer
        return hit.layer

    def run(self, args: List[Optional[np.ndarray]], states: Optional[dict],
            layer=None) -> list:
        """args: values of the node's inputs (None where absent); states: the stream's
        carried states, updated in place (None outside a stream); layer: the layer to run
        (``self.layer`` or a sibling of it with its own workspace, see ``Model.run``)."""
        a = dict(zip(self.slots, args))
        x = np.asarray(a["X"])
        if self.fed or layer is None:
            # Fed weights: the layer converted from them (shared by the calls that feed the
            # same arrays; its lock makes them take turns).
            layer = self.layer_for(a)
        I = layer.input_size
        if x.ndim != 3 or x.shape[2] != I:
            raise ValueError(f"X must be 3-D ({'T, B' if self.layout == 0 else 'B, T'}, {I}), "
                             f"got shape {x.shape}")
        x = x if self.layout == 0 else x.transpose(1, 0, 2)  # (T, B, I)
        T, B = x.shape[:2]
        lens = None
        if a["sequence_lens"] is not None:
            lens = lengths_array(a["sequence_lens"], B, T)
        init = None
        if states is not None and self.label in states:
            init = states[self.label]
            if init[0].shape[1] != B:
                raise ValueError(f"the stream carries state for batch size {init[0].shape[1]}, "
                                 f"got {B}; call reset() to start new sequences")
        else:
            given = [a.get("initial_h"), a.get("initial_c")][: self.n_states]
            if any(g is not None for g in given):
                shape = (self.D, B, self.H)
                init = []
                for s, g in zip(("initial_h", "initial_c"), given):
                    if g is None:
                        init.append(np.zeros(shape, layer.dtype))
                        continue
                    g = np.asarray(g)
                    if g.dtype.kind != "f":
                        raise TypeError(f"{s} must be a float array, got dtype {g.dtype}")
                    g = g if self.layout == 0 else g.transpose(1, 0, 2)
                    if g.shape != shape:
                        raise ValueError(f"{s} must have shape "
                                         f"{shape if self.layout == 0 else (B, self.D, self.H)}, "
                                         f"got {np.asarray(a[s]).shape}")
                    init.append(g)
        if self.reverse:
            x = _flip_valid(x, lens)
        st = None if init is None else (init[0] if self.n_states == 1 else tuple(init))
        y, final = layer(x, st, lens)
        final = list(final) if isinstance(final, tuple) else [final]
        if states is not None:
            states[self.label] = final
        if self.reverse:
            y = _flip_valid(y, lens)
        y = y.reshape(T, B, self.D, self.H)
        Y = y.transpose(0, 2, 1, 3) if self.layout == 0 else y.transpose(1, 0, 2, 3)
        outs = [np.ascontiguousarray(Y)]
        for f in final:
            outs.append(f if self.layout == 0 else np.ascontiguousarray(f.transpose(1, 0, 2)))
        return outs[: len(self.outputs)]


# ---- the glue ops (NumPy) ----------------------------------------------------------------
def _axes(args, attrs, key="axes"):
    if len(args) > 1 and args[1] is not None:
        return [int(v) for v in np.asarray(args[1]).reshape(-1)]
    v = attrs.get(key)
    return None if v is None else [int(a) for a in v]


def _squeeze(attrs, *args):
    axes = _axes(args, attrs)
    return [np.squeeze(args[0], axis=None if axes is None else tuple(axes))]


def _unsqueeze(attrs, *args):
    axes = _axes(args, attrs)
    if axes is None:
        raise ValueError("Unsqueeze needs axes")
    return [np.expand_dims(args[0], tuple(axes))]


def _transpose(attrs, x):
    perm = attrs.get("perm")
    return [np.transpose(x, None if perm is None else [int(p) for p in perm])]


def _reshape(attrs, x, shape):
    shape = [int(s) for s in np.asarray(shape).reshape(-1)]
    if not attrs.get("allowzero", 0):  # 0 copies the input's dimension
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [np.reshape(x, shape)]


def _gemm(attrs, a, b, c=None):
    a = a.T if attrs.get("transA", 0) else a
    b = b.T if attrs.get("transB", 0) else b
    y = (a @ b) * a.dtype.type(attrs.get("alpha", 1.0))
    if c is not None:
        y = y + c * a.dtype.type(attrs.get("beta", 1.0))
    return [y]


def _slice(attrs, x, starts=None, ends=None, axes=None, steps=None):
    if starts is None:  # opset < 10: attributes
        starts, ends, axes = attrs.get("starts"), attrs.get("ends"), attrs.get("axes")
    starts = np.asarray(starts).reshape(-1)
    ends = np.asarray(ends).reshape(-1)
    axes = range(len(starts)) if axes is None else np.asarray(axes).reshape(-1)
    steps = [1] * len(starts) if steps is None else np.asarray(steps).reshape(-1)
    idx = [slice(None)] * x.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        n, st = x.shape[int(ax)], int(st)
        # ONNX's rule: negatives count from the end, then clamp (huge sentinels mean "to the end").
        norm = lambda v, lo, hi: min(max(int(v) + n if v < 0 else int(v), lo), hi)
        if st > 0:
            idx[int(ax)] = slice(norm(s, 0, n), norm(e, 0, n), st)
        else:
            e = norm(e, -1, n - 1)
            idx[int(ax)] = slice(norm(s, 0, n - 1), None if e < 0 else e, st)
    return [x[tuple(idx)]]


def _cast(attrs, x):
    onnx = _onnx()
    return [np.asarray(x).astype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))]


def _shape(attrs, x):
    dims = np.asarray(x).shape
    return [np.array(dims[attrs.get("start", 0):attrs.get("end", len(dims))], np.int64)]


def _expand(attrs, x, shape):
    # ONNX's Expand broadcasts both ways: a 1 in ``shape`` keeps the input's dimension.
    shape = tuple(int(s) for s in np.asarray(shape).reshape(-1))
    return [np.broadcast_to(x, np.broadcast_shapes(np.shape(x), shape)).copy()]


def _constant_of_shape(attrs, shape):
    value = attrs.get("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    return [np.full(tuple(int(s) for s in np.asarray(shape).reshape(-1)), value[0], value.dtype)]


def _softmax(attrs, x):
    x = np.asarray(x)
    if attrs.get("_before_13"):
        # opset < 13: the input flattened to 2-D at axis (default 1), softmax over the
        # second dimension, shape restored
        ax = int(attrs.get("axis", 1))
        ax = ax + x.ndim if ax < 0 else ax
        return [_softmax({"axis": -1}, x.reshape(int(np.prod(x.shape[:ax])), -1))[0].reshape(x.shape)]
    ax = int(attrs.get("axis", -1))
    e = np.exp(x - x.max(axis=ax, keepdims=True))
    return [e / e.sum(axis=ax, keepdims=True)]


# op -> (function(attrs, *inputs) -> outputs, min inputs, max inputs)
_GLUE = {
    "Squeeze": (_squeeze, 1, 2),
    "Unsqueeze": (_unsqueeze, 1, 2),
    "Transpose": (_transpose, 1, 1),
    "Reshape": (_reshape, 2, 2),
    "Gemm": (_gemm, 2, 3),
    "MatMul": (lambda at, a, b: [np.matmul(a, b)], 2, 2),
    "Add": (lambda at, a, b: [np.add(a, b)], 2, 2),
    "Sub": (lambda at, a, b: [np.subtract(a, b)], 2, 2),
    "Mul": (lambda at, a, b: [np.multiply(a, b)], 2, 2),
    "Identity": (lambda at, a: [a], 1, 1),
    "Concat": (lambda at, *xs: [np.concatenate(xs, axis=int(at["axis"]))], 1, 1 << 30),
    "Slice": (_slice, 1, 5),
    "Gather": (lambda at, a, i: [np.take(a, np.asarray(i, np.int64), axis=int(at.get("axis", 0)))], 2, 2),
    "Cast": (_cast, 1, 1),
    "Shape": (_shape, 1, 1),
    "Expand": (_expand, 2, 2),
    "ConstantOfShape": (_constant_of_shape, 1, 1),
    "Relu": (lambda at, a: [np.maximum(a, a.dtype.type(0))], 1, 1),
    "Tanh": (lambda at, a: [np.tanh(a)], 1, 1),
    "Sigmoid": (lambda at, a: [1 / (1 + np.exp(-a))], 1, 1),
    "Softmax": (_softmax, 1, 1),
}


class _Glue:
    def __init__(self, op, label, inputs, outputs, attrs):
        self.op, self.label, self.inputs, self.outputs, self.attrs = op, label, inputs, outputs, attrs
        self.where = f"{op} node {label!r}"
        self.fn = _GLUE[op][0]

    def run(self, args, states):
        # Trailing absent optional inputs are dropped; inner ones stay None.
        while args and args[-1] is None:
            args = args[:-1]
        return self.fn(self.attrs, *args)


def _constant(attrs: Mapping, where: str) -> np.ndarray:
    for key, conv in (("value", np.asarray), ("value_float", lambda v: np.array(v, np.float32)),
                      ("value_floats", lambda v: np.array(v, np.float32)),
                      ("value_int", lambda v: np.array(v, np.int64)),
                      ("value_ints", lambda v: np.array(v, np.int64))):
        if key in attrs:
            return conv(attrs[key])
    raise ValueError(f"{where}: unsupported Constant (nlstm reads value, value_float(s), value_int(s))")


# ---- the model -----------------------------------------------------------------------------
class Model:
    """An ONNX model whose recurrent nodes run on nlstm layers; build it with :func:`load`.

    ``run(output_names, feeds)`` has the meaning of ``onnxruntime.InferenceSession.run``.
    ``layers`` maps each recurrent node's name to the nlstm layer that runs it (one ONNX
    node is one layer, ``num_layers=1``, time-major; a ``reverse`` node runs a forward
    layer over each row's valid steps reversed; a node whose weights are fed at run time
    shows the layer of the last run's weights). ``stream()`` carries state between calls.
    """

    def __init__(self, proto, source: str = "model"):
        onnx = _onnx()
        g = proto.graph
        self.source = source
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        consts: Dict[str, np.ndarray] = {}
        for t in g.initializer:
            consts[t.name] = _tensor(onnx, t, source)
        self._defaults = {}
        self._inputs: List[Arg] = []
        self._in_info: Dict[str, Tuple[Optional[np.dtype], Optional[list]]] = {}
        static: Dict[str, Optional[list]] = {}
        for vi in g.input:
            dt, shape = _type_info(onnx, vi)
            static[vi.name] = shape
            if vi.name in consts:  # an initializer that a feed may override
                self._defaults[vi.name] = consts.pop(vi.name)
            self._in_info[vi.name] = (dt, shape)
            self._inputs.append(Arg(vi.name, shape, _type_name(dt)))
        for name, a in {**consts, **self._defaults}.items():
            static.setdefault(name, list(a.shape))
        known = set(consts) | set(self._in_info)
        self._steps: list = []
        self._rec: Dict[str, _Recurrent] = {}
        producer: Dict[str, int] = {}
        baked = set()
        for n, node in enumerate(g.node):
            op = node.op_type
            label = node.name or f"{op}_{n}"
            where = f"{op} node {label!r}"
            if node.domain not in ("", "ai.onnx"):
                raise ValueError(f"{where}: unsupported operator domain {node.domain!r}")
            for name in node.input:
                if name and name not in known:
                    raise ValueError(f"{where}: input {name!r} is not a graph input, an initializer "
                                     "or an output of an earlier node")
            if op == "Constant":
                consts[node.output[0]] = _constant(_attrs(onnx, node), where)
                static[node.output[0]] = list(consts[node.output[0]].shape)
                known.add(node.output[0])
                continue
            if op in _GATES:
                view = {**self._defaults, **consts}
                step = _Recurrent(onnx, node, label, view, static)
                if label in self._rec:
                    raise ValueError(f"{where}: two recurrent nodes share the name {label!r}")
                self._rec[label] = step
                baked.update(node.input[1:4] if op != "LSTM" else [*node.input[1:4], *node.input[7:8]])
            elif op in _GLUE:
                _, lo, hi = _GLUE[op]
                given = len(node.input)
                while given and not node.input[given - 1]:
                    given -= 1
                if given < lo or len(node.input) > hi or any(not s for s in node.input[:lo]):
                    raise ValueError(f"{where}: needs {lo}{'' if hi == lo else f'..{hi}'} inputs, got "
                                     f"{list(node.input)}")
                attrs = _attrs(onnx, node)
                if op in ("Concat",) and "axis" not in attrs:
                    raise ValueError(f"{where}: missing attribute 'axis'")
                if op == "Cast" and "to" not in attrs:
                    raise ValueError(f"{where}: missing attribute 'to'")
                if op == "Softmax" and self.opset is not None and self.opset < 13:
                    attrs["_before_13"] = True  # its older axis rule (see _softmax)
                step = _Glue(op, label, list(node.input), list(node.output), attrs)
            else:
                raise ValueError(f"{where}: unsupported operator {op!r} (nlstm runs LSTM, GRU, RNN "
                                 f"and {', '.join(sorted(_GLUE))})")
            for o in step.outputs:
                if o:
                    producer[o] = len(self._steps)
                    known.add(o)
            self._steps.append(step)
        self._baked = {b for b in baked if b in self._defaults}
        self._consts = consts
        self._producer = producer
        self._outputs = []
        for vi in g.output:
            if vi.name not in known:
                raise ValueError(f"{source}: graph output {vi.name!r} is not produced by any node")
            dt, shape = _type_info(onnx, vi)
            self._outputs.append(Arg(vi.name, shape, _type_name(dt)))
        self._needed_cache: Dict[tuple, list] = {}

    @property
    def layers(self) -> Dict[str, Optional[RecurrentLayer]]:
        """Each recurrent node's name -> the nlstm layer that runs it; for a node whose
        weights are fed at run time, the layer of the last run's weights (None before)."""
        return {label: step.layer for label, step in self._rec.items()}

    # ---- session-like API -----------------------------------------------------------------
    def get_inputs(self) -> List[Arg]:
        """The graph inputs a feed may name (those with an initializer have a default)."""
        return [a for a in self._inputs if a.name not in self._baked]

    def get_outputs(self) -> List[Arg]:
        return list(self._outputs)

    def run(self, output_names: Optional[Sequence[str]], feeds: Mapping[str, Any],
            run_options=None) -> List[np.ndarray]:
        """Compute ``output_names`` (None or empty: every graph output) from ``feeds``
        (input name -> array), as ``onnxruntime.InferenceSession.run``. Returns a list of
        fresh arrays in the order asked.

        Several threads may call ``run`` on one model at once, as on an ONNX Runtime
        session: each concurrent call runs on its own workspaces, the weights shared."""
        return self._execute(output_names, feeds, None)

    def _lane(self) -> Dict[str, Any]:
        """Layers for one call, {node name: layer}, taken from the free ones: the model's
        own ``layers`` first, then siblings of them (same weights, their own workspaces)
        made when calls overlap and kept for later calls. Hand back with ``_free``."""
        free = self.__dict__.setdefault("_free_lanes", [self.layers])
        try:
            return free.pop()  # atomic: two threads never get one lane
        except IndexError:
            # A node with fed weights has no fixed layer to copy (None before its first run);
            # its calls use the layer of their weights (see _Recurrent.run).
            return {label: None if step.fed else step.layer._sibling()
                    for label, step in self._rec.items()}

    def _free(self, lane: Dict[str, Any]) -> None:
        self.__dict__["_free_lanes"].append(lane)

    def stream(self) -> "Stream":
        """A :class:`Stream` over this model: each ``run`` continues where the last one
        stopped. Needs every recurrent node to be unidirectional and forward."""
        return Stream(self)

    def __repr__(self) -> str:
        return (f"nlstm.onnx.Model({self.source!r}, inputs={[a.name for a in self.get_inputs()]}, "
                f"outputs={[a.name for a in self._outputs]}, layers={list(self.layers)})")

    # ---- execution ------------------------------------------------------------------------
    def _check_feeds(self, feeds) -> Dict[str, np.ndarray]:
        if not isinstance(feeds, Mapping):
            raise TypeError(f"feeds must be a mapping of input name to array, got {type(feeds).__name__}")
        env = dict(self._defaults)
        names = [a.name for a in self.get_inputs()]
        for name, v in feeds.items():
            if name not in self._in_info or name in self._baked:
                raise ValueError(f"invalid input name {name!r}; the model's inputs are {names}")
            dt, shape = self._in_info[name]
            try:
                a = np.asarray(v)
            except Exception as e:
                raise TypeError(f"input {name!r} must be array-like: {e}") from None
            if a.dtype.kind not in "biuf":
                raise TypeError(f"input {name!r} must be numeric, got dtype {a.dtype}")
            if dt is not None and a.dtype != dt:
                if (dt.kind == "f") != (a.dtype.kind == "f"):
                    raise TypeError(f"input {name!r} must have dtype {dt}, got {a.dtype}")
                a = a.astype(dt)
            if shape is not None:
                bad = len(shape) != a.ndim or any(isinstance(s, int) and s and s != n
                                                  for s, n in zip(shape, a.shape))
                if bad:
                    raise ValueError(f"input {name!r} must have shape {tuple(shape)} (None or a name "
                                     f"is any size), got {a.shape}")
            env[name] = a
        missing = [n for n in names if n not in env]
        if missing:
            raise ValueError(f"missing inputs {missing}; the model's inputs are {names}")
        return env

    def _needed(self, outputs: tuple, stream: bool) -> list:
        """Indices of the steps that the outputs depend on, in graph order (all in a stream,
        so that every recurrent state advances on every call)."""
        if stream:
            return list(range(len(self._steps)))
        key = outputs
        if key not in self._needed_cache:
            need, todo = set(), [self._producer[o] for o in outputs if o in self._producer]
            while todo:
                i = todo.pop()
                if i not in need:
                    need.add(i)
                    todo.extend(self._producer[n] for n in self._steps[i].inputs if n in self._producer)
            self._needed_cache[key] = sorted(need)
        return self._needed_cache[key]

    def _execute(self, output_names, feeds, states: Optional[dict]) -> List[np.ndarray]:
        if output_names is None or len(output_names) == 0:
            output_names = [a.name for a in self._outputs]
        if isinstance(output_names, str):
            raise TypeError("output_names must be a list of names (or None), not a string")
        output_names = tuple(output_names)
        env = self._check_feeds(feeds)
        env.update(self._consts)
        for o in output_names:
            if o not in env and o not in self._producer:
                raise ValueError(f"invalid output name {o!r}; the model's outputs are "
                                 f"{[a.name for a in self._outputs]}")
        lane = self._lane()
        try:
            for i in self._needed(output_names, states is not None):
                step = self._steps[i]
                args = [env[n] if n else None for n in step.inputs]
                try:
                    if isinstance(step, _Recurrent):
                        outs = step.run(args, states, lane[step.label])
                    else:
                        outs = step.run(args, states)
                except (ValueError, TypeError, IndexError) as e:
                    raise ValueError(f"{step.where}: {e}") from e
                for n, v in zip(step.outputs, outs):
                    if n:
                        env[n] = v
        finally:
            self._free(lane)
        return [np.array(env[o], copy=True) for o in output_names]


class Stream:
    """A model run chunk by chunk along time: ``run(output_names, feeds)`` as
    :meth:`Model.run`, where each call's inputs continue the sequences of the last call.

    Every recurrent node starts from its ``initial_h``/``initial_c`` inputs (or zeros) on
    the first call and after :meth:`reset`; later calls start from the state the node
    ended in, and ignore those inputs. ``states`` maps node names to the carried
    (num_directions=1, B, H) arrays. The batch size must stay the same until ``reset()``.
    """

    def __init__(self, model: Model):
        for step in model._steps:
            if isinstance(step, _Recurrent) and (step.D == 2 or step.reverse):
                raise ValueError(f"stream() needs forward recurrent nodes; {step.where} is "
                                 f"{'bidirectional' if step.D == 2 else 'reverse'} and must see "
                                 "whole sequences")
        self.model = model
        self.states: Dict[str, list] = {}
        self._lock = threading.Lock()

    def run(self, output_names: Optional[Sequence[str]], feeds: Mapping[str, Any]) -> List[np.ndarray]:
        with self._lock:  # one stream is one sequence: calls from several threads take turns
            states = {k: list(v) for k, v in self.states.items()}
            out = self.model._execute(output_names, feeds, states)
            self.states = states  # only a call that succeeded advances the stream
            return out

    def reset(self) -> None:
        """Forget the carried state: the next call starts new sequences."""
        self.states = {}


def load(model_or_path: Union[str, os.PathLike, bytes, Any]) -> Model:
    """Read an ONNX model (a path, its bytes or an ``onnx.ModelProto``) and build the nlstm
    layers for its recurrent nodes.

    Raises ValueError naming the node for anything nlstm cannot run exactly: an unreadable
    or truncated file, a missing input, weights whose shapes do not match the node's
    attributes, an unsupported operator, attribute or activation.
    """
    onnx = _onnx()
    proto, what = _read(model_or_path)
    # nlstm's own checks name the node and the tensor. onnx.checker is stricter than ONNX
    # Runtime (it rejects outputs declared without a shape, which ORT runs), so it only
    # explains failures that nlstm's checks did not catch.
    try:
        return Model(proto, what)
    except ValueError:
        raise
    except Exception as e:
        if isinstance(e, TypeError) and \
                traceback.extract_tb(e.__traceback__)[-1].filename == __file__:
            # nlstm's own check (an input dtype nlstm cannot run, e.g. float16) names the
            # node; the checker would blame the graph instead
            raise ValueError(f"{what}: {e}") from None
        try:
            onnx.checker.check_model(proto)
            problem = f"{what}: malformed ONNX model: {type(e).__name__}: {e}"
        except Exception as c:
            problem = f"{what}: invalid ONNX model: {str(c).strip().splitlines()[0]}"
        raise ValueError(problem) from None


# ---- export ----------------------------------------------------------------------------------
class _Builder:
    """Collects nodes and initializers with unique value names."""

    def __init__(self, onnx, dtype: np.dtype):
        self.onnx, self.dtype = onnx, dtype
        self.nodes, self.inits, self._n = [], [], 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, base: str, a: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(a), name))
        return name

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, outputs=None,
             node_name: Optional[str] = None, **attrs) -> list:
        outputs = outputs or [self.name(op.lower()) for _ in range(n_out)]
        inputs = list(inputs)
        while inputs and not inputs[-1]:
            inputs.pop()
        self.nodes.append(self.onnx.helper.make_node(op, inputs, outputs,
                                                     name=node_name or self.name(op), **attrs))
        return outputs


def _export_recurrent(b: _Builder, layer, x: str, lens: str, init: Optional[List[str]],
                      prefix: str = ""):
    """Nodes for every layer of ``layer`` on time-major x (T, B, I), named
    ``{prefix}{op}_l{k}`` (e.g. ``lstm_l0``; the names of ``Model.layers`` on reload). Returns the output
    (T, B, D·H) and, per ONNX node, its final-state outputs [Y_h(, Y_c)], each (D, B, H)."""
    op = layer._name
    if op not in _GATES:
        raise TypeError(f"cannot export {type(layer).__name__}")
    if getattr(layer, "proj_size", 0):
        raise ValueError("LSTM(proj_size=...) has no ONNX equivalent (ONNX's LSTM has no projection)")
    if layer.zoneout:
        raise ValueError(f"{op}(zoneout=...) has no ONNX equivalent (its inference mixes in the "
                         "previous state)")
    H, D = layer.hidden_size, layer.num_directions
    n_states = 2 if op == "LSTM" else 1
    finals = []
    for k in range(layer.num_layers):
        Ws, Rs, Bs, Ps = [], [], [], []
        for sfx in layer._suffixes():
            p = lambda n: layer.params[f"{n}_l{k}{sfx}"]
            Ws.append(_reorder(p("weight_ih"), _TO_ONNX[op]))
            Rs.append(_reorder(p("weight_hh"), _TO_ONNX[op]))
            if layer.bias:
                Bs.append(np.concatenate([_reorder(p("bias_ih"), _TO_ONNX[op]),
                                          _reorder(p("bias_hh"), _TO_ONNX[op])]))
            if getattr(layer, "peephole", False):
                Ps.append(_reorder(p("peephole"), _PEEP))
        attrs: Dict[str, Any] = dict(hidden_size=H, direction="bidirectional" if D == 2 else "forward")
        if layer.clip is not None:
            attrs["clip"] = float(layer.clip)
        if op == "LSTM":
            if layer.input_forget:
                attrs["input_forget"] = 1
        elif op == "GRU":
            attrs["linear_before_reset"] = int(layer.linear_before_reset)
        if layer._act_spec is not None:
            # Every function with its alpha/beta written out (ONNX Runtime's defaults for an
            # absent one differ from ONNX's for some functions).
            names, alphas, betas = _activations.flat(layer._act_spec)
            attrs["activations"] = names
            if alphas:
                attrs["activation_alpha"] = alphas
            if betas:
                attrs["activation_beta"] = betas
        elif op == "RNN" and layer._relu:
            attrs["activations"] = ["Relu"] * D
        tag = f"{prefix}{op.lower()}_l{k}"
        inputs = [x, b.const(f"{tag}_W", np.stack(Ws)), b.const(f"{tag}_R", np.stack(Rs)),
                  b.const(f"{tag}_B", np.stack(Bs)) if Bs else "", lens]
        for s in range(n_states):
            if init is None:
                inputs.append("")
            elif layer.num_layers == 1:
                inputs.append(init[s])
            else:  # rows k·D .. k·D+D-1 of the (L·D, B, H) state belong to this node
                inputs += b.node("Slice", [init[s], b.const("start", np.array([k * D], np.int64)),
                                           b.const("end", np.array([(k + 1) * D], np.int64)),
                                           b.const("axis", np.array([0], np.int64))])
        if Ps:
            inputs += [""] * (7 - len(inputs)) + [b.const(f"{tag}_P", np.stack(Ps))]
        outs = b.node(op, inputs, outputs=[f"{tag}_{o}" for o in ("Y", "Y_h", "Y_c")[:1 + n_states]],
                      node_name=tag, **attrs)
        finals.append(outs[1:])
        # Y is (T, D, B, H); the next layer reads (T, B, D·H).
        if D == 1:
            x = b.node("Squeeze", [outs[0], b.const("axes", np.array([1], np.int64))])[0]
        else:
            t = b.node("Transpose", [outs[0]], perm=[0, 2, 1, 3])[0]
            x = b.node("Reshape", [t, b.const("shape", np.array([0, 0, -1], np.int64))])[0]
    return x, finals


def save(model, path: Union[str, os.PathLike], opset: int = 17, *, lengths: bool = True,
         state: bool = False) -> str:
    """Write an nlstm ``LSTM``/``GRU``/``RNN`` or ``Sequential`` as an ONNX model that ONNX
    Runtime runs with the same outputs; returns the path.

    Graph inputs: ``input`` in the model's layout ((T, B, I), or (B, T, I) with
    ``batch_first``; a ``Sequential`` is always (B, T, F)); with ``lengths``, ``lengths``
    (B,) int32, fed to every node as ``sequence_lens`` (ONNX's type for it); with
    ``state`` (single layers only), ``h0`` (and ``c0``) shaped (L·D, B, H).
    Graph outputs: ``output`` (y as the layer returns it, or the Sequential's prediction),
    and for a single layer ``h_n`` (and ``c_n``). Nodes use ``layout=0`` (ONNX Runtime
    rejects 1); stacked layers are one node each; a Sequential's head is ``Gemm`` (on the
    last step, ``output="last"``) or ``MatMul`` + ``Add`` (per step, ``output="sequence"``).
    Dropout is left out (inference). ``proj_size`` has no ONNX form and raises ValueError.

    The file is written to a temporary name in the same directory and renamed over
    ``path``, so an interrupted save never leaves a partial file.
    """
    onnx = _onnx()
    from ._version import __version__
    from .io import atomic_write
    from .linear import Dropout, Linear
    from .model import Sequential

    helper = onnx.helper
    if isinstance(opset, bool) or not isinstance(opset, int) or \
            not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be an int in {MIN_OPSET}..{onnx.defs.onnx_opset_version()}, "
                         f"got {opset!r}")
    is_seq = isinstance(model, Sequential)
    if not (is_seq or isinstance(model, RecurrentLayer)):
        raise TypeError(f"model must be an nlstm LSTM, GRU, RNN or Sequential, got {type(model).__name__}")
    if state and is_seq:
        raise ValueError("state=True is for a single recurrent layer; a Sequential starts from zeros")
    dt = np.dtype(model.dtype)
    elem = helper.np_dtype_to_tensor_dtype(dt)
    b = _Builder(onnx, dt)
    vi = helper.make_tensor_value_info
    lens = "lengths" if lengths else ""
    graph_in, graph_out = [], []
    if lengths:
        graph_in.append(vi("lengths", onnx.TensorProto.INT32, ["batch"]))
    if not is_seq:
        layer = model
        L, D, O = layer.num_layers, layer.num_directions, layer._out_size
        xin = ["batch", "time", layer.input_size] if layer.batch_first else ["time", "batch", layer.input_size]
        graph_in.insert(0, vi("input", elem, xin))
        x = b.node("Transpose", ["input"], perm=[1, 0, 2])[0] if layer.batch_first else "input"
        init = None
        labels = ["h0", "c0"][: len(layer._state_labels)]
        if state:
            init = labels
            for s, n in zip(labels, layer._state_sizes()):
                graph_in.append(vi(s, elem, [L * D, "batch", n]))
        y, finals = _export_recurrent(b, layer, x, lens, init)
        if layer.batch_first:
            b.node("Transpose", [y], outputs=["output"], perm=[1, 0, 2])
        else:
            b.node("Identity", [y], outputs=["output"])
        graph_out.append(vi("output", elem, [*xin[:2], D * O]))
        for s, (label, n) in enumerate(zip(("h_n", "c_n"), layer._state_sizes())):
            per_node = [f[s] for f in finals]
            if len(per_node) == 1:
                b.node("Identity", per_node, outputs=[label])
            else:
                b.node("Concat", per_node, outputs=[label], axis=0)
            graph_out.append(vi(label, elem, [L * D, "batch", n]))
    else:
        layers = model.layers
        last = max(i for i, l in enumerate(layers) if isinstance(l, RecurrentLayer))
        graph_in.insert(0, vi("input", elem, ["batch", "time", model.input_size]))
        x = b.node("Transpose", ["input"], perm=[1, 0, 2])[0]  # time-major inside
        finals, top = None, None
        for i, l in enumerate(layers):
            if isinstance(l, RecurrentLayer):
                x, finals = _export_recurrent(b, l, x, lens, None, prefix=f"{i}.")
                top = l
                if i == last:
                    if model.output == "last":
                        # Each direction's final output is the last node's Y_h (D, B, H):
                        # forward at the row's last valid step, reverse at step 0.
                        h = finals[-1][0]
                        if top.num_directions == 1:
                            x = b.node("Squeeze", [h, b.const("axes", np.array([0], np.int64))])[0]
                        else:
                            t = b.node("Transpose", [h], perm=[1, 0, 2])[0]
                            x = b.node("Reshape", [t, b.const("shape", np.array([0, -1], np.int64))])[0]
                    else:
                        x = b.node("Transpose", [x], perm=[1, 0, 2])[0]  # (B, T, F)
            elif isinstance(l, Linear):
                W = l.params["weight"]
                bias = l.params.get("bias")
                if i > last and model.output == "last":
                    x = b.node("Gemm", [x, b.const("weight", W),
                                        b.const("bias", bias) if bias is not None else ""],
                               transB=1)[0]
                else:  # per time step on a 3-D sequence
                    x = b.node("MatMul", [x, b.const("weight_t", W.T)])[0]
                    if bias is not None:
                        x = b.node("Add", [x, b.const("bias", bias)])[0]
            elif isinstance(l, Dropout):
                continue  # identity at inference
            else:
                raise TypeError(f"cannot export layer {i} ({type(l).__name__}) to ONNX")
        b.node("Identity", [x], outputs=["output"])
        shape = ["batch", model.output_size] if model.output == "last" else ["batch", "time", model.output_size]
        graph_out.append(vi("output", elem, shape))
    graph = helper.make_graph(b.nodes, "nlstm", graph_in, graph_out, b.inits)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="nlstm",
                              producer_version=__version__)
    proto.ir_version = helper.find_min_ir_version_for(opsets)  # the oldest IR that has the opset
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    return atomic_write(path, lambda f: f.write(data))
