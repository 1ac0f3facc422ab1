"""PyTorch and Keras in and out: ``from_torch``, ``to_torch`` and ``from_keras``.

torch is imported only inside ``from_torch``/``to_torch``; Keras is never imported
(``from_keras`` takes the weight arrays, so no TensorFlow is needed).

Keras stores a recurrent layer as ``kernel`` (I, G·H), ``recurrent_kernel`` (H, G·H) and
``bias``, computing x·kernel + h·recurrent_kernel + bias with the gate blocks in columns:
LSTM i, f, c, o (nlstm's i, f, g, o: the same order); GRU z, r, h (nlstm's r, z, n);
SimpleRNN one block. nlstm keeps PyTorch's (G·H, I) layout, so the arrays are transposed.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ._validate import layer_dtype, real_array
from .gru import GRU
from .lstm import LSTM
from .recurrent import RecurrentLayer
from .rnn import RNN

__all__ = ["from_torch", "to_torch", "from_keras"]

_RECURRENT = {"LSTM": LSTM, "GRU": GRU, "RNN": RNN}


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("from_torch/to_torch need PyTorch: pip install torch") from e
    return torch


# ---- PyTorch -> nlstm ------------------------------------------------------------------------
def _numpy_state(module) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def _torch_dtype(module, dtype) -> np.dtype:
    if dtype is not None:
        return layer_dtype(dtype)
    ps = list(module.parameters())
    if not ps:
        return np.dtype(np.float32)
    name = str(ps[0].dtype).replace("torch.", "")
    if name not in ("float32", "float64"):
        raise TypeError(f"{type(module).__name__} has {name} parameters; nlstm runs float32 or "
                        f"float64: pass dtype=np.float32 to convert")
    return np.dtype(name)


def from_torch(module: Any, dtype: Any = None, output: str = "sequence", **kwargs: Any) -> Any:
    """The nlstm equivalent of a PyTorch module, with the same weights and outputs.

    module: ``nn.LSTM`` (including ``proj_size``), ``nn.GRU``, ``nn.RNN`` -> ``nlstm.LSTM``/
        ``GRU``/``RNN`` with the same sizes, layout (``batch_first``), directions and
        ``dropout``; ``nn.Linear`` -> ``nlstm.Linear``; ``nn.Dropout`` -> ``nlstm.Dropout``;
        ``nn.Sequential`` of these -> ``nlstm.Sequential``.
    dtype: float32 or float64; default: the module's (other float types need it).
    output, kwargs: for ``nn.Sequential``, passed to ``nlstm.Sequential`` (``output`` is
        "sequence" by default: the head reads every step; "last" reads each row's last
        valid step). A module made by :func:`to_torch` keeps its own ``output``.
    """
    torch = _torch()
    nn = torch.nn
    if isinstance(module, nn.Sequential):
        from .model import Sequential

        layers = [from_torch(m, dtype) for m in module]
        output = getattr(module, "nlstm_output", output)
        return Sequential(layers, output=output, **kwargs)
    if kwargs:
        raise TypeError(f"unexpected arguments {sorted(kwargs)} (only nn.Sequential takes them)")
    dt = _torch_dtype(module, dtype)
    if isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
        name = next(n for n, c in (("LSTM", nn.LSTM), ("GRU", nn.GRU), ("RNN", nn.RNN))
                    if isinstance(module, c))
        kw = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
                  bidirectional=module.bidirectional, dtype=dt, dropout=float(module.dropout))
        if name == "LSTM":
            kw["proj_size"] = module.proj_size
        elif name == "RNN":
            kw["nonlinearity"] = module.nonlinearity
        layer = _RECURRENT[name](module.input_size, module.hidden_size, **kw)
        layer.load_state_dict(_numpy_state(module))
        return layer
    if isinstance(module, nn.Linear):
        from .linear import Linear

        layer = Linear(module.in_features, module.out_features, bias=module.bias is not None, dtype=dt)
        layer.load_state_dict(_numpy_state(module))
        return layer
    if isinstance(module, nn.Dropout):
        from .linear import Dropout

        return Dropout(module.p)
    raise TypeError(f"from_torch converts nn.LSTM, nn.GRU, nn.RNN, nn.Linear, nn.Dropout and an "
                    f"nn.Sequential of them, got {type(module).__name__}")


# ---- nlstm -> PyTorch ------------------------------------------------------------------------
_SEQ_CLASS = None


def _torch_sequential_class():
    """An ``nn.Sequential`` whose forward runs like ``nlstm.Sequential`` (made once, lazily,
    so that torch stays an optional import)."""
    global _SEQ_CLASS
    if _SEQ_CLASS is not None:
        return _SEQ_CLASS
    torch = _torch()
    nn = torch.nn
    rnn_utils = nn.utils.rnn

    class NlstmSequential(nn.Sequential):
        """``nlstm.Sequential`` in PyTorch: x (B, T, F) batch-first and optional lengths
        (B,) >= 1 (PyTorch's packed sequences reject 0); returns (B, O) for
        ``nlstm_output="last"`` or (B, T, O) for ``"sequence"``."""

        def __init__(self, modules, nlstm_output: str):
            super().__init__(*modules)
            self.nlstm_output = nlstm_output

        def forward(self, x, lengths=None):
            B, T = x.shape[:2]
            recurrent = [i for i, m in enumerate(self) if isinstance(m, nn.RNNBase)]
            last = recurrent[-1]
            h = x
            for i, m in enumerate(self):
                if isinstance(m, nn.RNNBase):
                    inp = h if m.batch_first else h.transpose(0, 1)
                    if lengths is not None:
                        inp = rnn_utils.pack_padded_sequence(inp, torch.as_tensor(lengths).cpu(),
                                                             batch_first=m.batch_first,
                                                             enforce_sorted=False)
                    y, _ = m(inp)
                    if lengths is not None:
                        y, _ = rnn_utils.pad_packed_sequence(y, batch_first=m.batch_first, total_length=T)
                    h = y if m.batch_first else y.transpose(0, 1)
                else:
                    h = m(h)
                if i == last and self.nlstm_output == "last":
                    idx = (torch.full((B,), T - 1) if lengths is None
                           else (torch.as_tensor(lengths) - 1).clamp(min=0)).long()
                    out = h[torch.arange(B), idx]
                    if m.bidirectional:  # the reverse direction ends at step 0
                        half = h.shape[2] // 2
                        out = torch.cat([out[:, :half], h[:, 0, half:]], dim=1)
                    h = out
            return h

    _SEQ_CLASS = NlstmSequential
    return _SEQ_CLASS


def to_torch(layer: Any) -> Any:
    """The PyTorch module equivalent of an nlstm layer, in ``eval()`` mode, same dtype.

    ``LSTM``/``GRU``/``RNN`` -> ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (``proj_size`` kept);
    ``Linear`` -> ``nn.Linear``; ``Dropout`` -> ``nn.Dropout``; ``Sequential`` -> an
    ``nn.Sequential`` subclass whose ``forward(x, lengths=None)`` computes what the nlstm
    model's ``forward`` does. ONNX-only variants (``peephole``, ``clip``,
    ``input_forget``, ``activations``, ``GRU(linear_before_reset=False)``) have no PyTorch
    module and raise
    ValueError; export them with ``nlstm.onnx.save`` instead.
    """
    from .linear import Dropout, Linear
    from .model import Sequential

    torch = _torch()
    nn = torch.nn

    def tensors(sd):
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}

    if isinstance(layer, RecurrentLayer):
        name = layer._name
        if name not in _RECURRENT or layer.zoneout:
            what = f"{name}(zoneout=...)" if name in _RECURRENT else name
            raise ValueError(f"{what} has no PyTorch equivalent")
        if name == "LSTM":
            bad = [n for n, on in (("peephole", layer.peephole), ("clip", layer.clip is not None),
                                   ("input_forget", layer.input_forget)) if on]
            if bad:
                raise ValueError(f"LSTM({bad[0]}=...) has no PyTorch equivalent; nlstm.onnx.save "
                                 "writes it as an ONNX LSTM node")
        if layer.clip is not None or layer._act_spec is not None:
            raise ValueError(f"{name}(clip=..., activations=...) has no PyTorch equivalent; "
                             f"nlstm.onnx.save writes it as an ONNX {name} node")
        if name == "GRU" and not layer.linear_before_reset:
            raise ValueError("GRU(linear_before_reset=False) has no PyTorch equivalent (PyTorch "
                             "applies the reset gate after the linear map); nlstm.onnx.save writes it")
        kw = dict(num_layers=layer.num_layers, bias=layer.bias, batch_first=layer.batch_first,
                  bidirectional=layer.bidirectional, dropout=layer.dropout)
        if name == "LSTM" and layer.proj_size:
            kw["proj_size"] = layer.proj_size
        if name == "RNN":  # activations=("Relu",) runs as nonlinearity="relu" (_relu)
            kw["nonlinearity"] = "relu" if layer._relu else "tanh"
        tdt = torch.float64 if layer.dtype == np.float64 else torch.float32
        m = getattr(nn, name)(layer.input_size, layer.hidden_size, **kw).to(tdt)
    elif isinstance(layer, Linear):
        tdt = torch.float64 if layer.dtype == np.float64 else torch.float32
        m = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias).to(tdt)
    elif isinstance(layer, Dropout):
        return nn.Dropout(layer.p).eval()
    elif isinstance(layer, Sequential):
        cls = _torch_sequential_class()
        return cls([to_torch(l) for l in layer.layers], layer.output).eval()
    else:
        raise TypeError(f"to_torch converts nlstm LSTM, GRU, RNN, Linear, Dropout and Sequential, "
                        f"got {type(layer).__name__}")
    m.load_state_dict(tensors(layer.state_dict()))
    return m.eval()


# ---- Keras -> nlstm --------------------------------------------------------------------------
_KERAS_KINDS = {"lstm": (LSTM, 4), "gru": (GRU, 3), "simple_rnn": (RNN, 1)}
_KERAS_GRU_ORDER = (1, 0, 2)  # nlstm r, z, n from Keras's z, r, h


def _keras_activation(name: str, keras_version: int, what: str) -> tuple:
    """A Keras activation name as ONNX's (name, alpha, beta). hard_sigmoid is the one that
    changed: Keras 3 documents clip(x/6 + 0.5, 0, 1) (relu6(x + 3)/6), Keras 2 (tf.keras up
    to 2.15) clip(0.2·x + 0.5, 0, 1)."""
    table = {"tanh": ("Tanh", 0.0, 0.0), "sigmoid": ("Sigmoid", 0.0, 0.0),
             "relu": ("Relu", 0.0, 0.0), "linear": ("Affine", 1.0, 0.0),
             "elu": ("Elu", 1.0, 0.0), "softsign": ("Softsign", 0.0, 0.0),
             "softplus": ("Softplus", 0.0, 0.0),
             "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0 if keras_version >= 3 else 0.2, 0.5)}
    if name not in table:
        raise ValueError(f"unsupported {what} {name!r}; nlstm computes Keras's {sorted(table)}")
    return table[name]


def _keras_arrays(weights, what: str) -> list:
    """[kernel, recurrent_kernel(, bias)] from a get_weights() list or a name -> array map."""
    if isinstance(weights, Mapping):
        found = {}
        for key, v in weights.items():
            leaf = str(key).rsplit("/", 1)[-1].split(":")[0]
            if leaf in ("kernel", "recurrent_kernel", "bias"):
                if leaf in found:
                    raise ValueError(f"{what}: more than one {leaf!r} in the mapping "
                                     f"({sorted(map(str, weights))}); pass one layer's weights")
                found[leaf] = v
        if "kernel" not in found or "recurrent_kernel" not in found:
            raise ValueError(f"{what}: a mapping needs 'kernel' and 'recurrent_kernel' (and 'bias'), "
                             f"got keys {sorted(map(str, weights))}")
        return [found["kernel"], found["recurrent_kernel"]] + ([found["bias"]] if "bias" in found else [])
    if not isinstance(weights, (list, tuple)) or len(weights) not in (2, 3):
        raise ValueError(f"{what}: expected [kernel, recurrent_kernel, bias] (Keras's get_weights() "
                         f"order; bias absent with use_bias=False), got "
                         f"{len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__} items")
    return list(weights)


def _keras_params(arrays: list, kind: str, reset_after: Optional[bool], what: str):
    """nlstm's (weight_ih, weight_hh, bias_ih, bias_hh) for one direction of one layer, the
    input size and the reset_after the bias implies."""
    G = _KERAS_KINDS[kind][1]
    k = real_array(f"{what} kernel", arrays[0], check_finite=True).astype(np.float64)
    r = real_array(f"{what} recurrent_kernel", arrays[1], check_finite=True).astype(np.float64)
    if r.ndim != 2 or r.shape[1] != G * r.shape[0]:
        raise ValueError(f"{what}: recurrent_kernel must be (units, {G}·units) for {kind}, got {r.shape}")
    H = r.shape[0]
    if k.ndim != 2 or k.shape[1] != G * H:
        raise ValueError(f"{what}: kernel must be (input_dim, {G * H}) for {kind} with {H} units, "
                         f"got {k.shape}")
    b_ih = b_hh = None
    if len(arrays) == 3:
        b = real_array(f"{what} bias", arrays[2], check_finite=True).astype(np.float64)
        if kind == "gru" and b.shape == (2, G * H):
            if reset_after is False:
                raise ValueError(f"{what}: bias is (2, {G * H}), Keras's reset_after=True form, "
                                 "but reset_after=False was given (or read from a layer below)")
            reset_after, b_ih, b_hh = True, b[0], b[1]
        elif b.shape == (G * H,):
            if kind == "gru":
                if reset_after:
                    raise ValueError(f"{what}: bias is ({G * H},), Keras's reset_after=False form, "
                                     "but reset_after=True was given (or read from a layer below)")
                reset_after = False
            b_ih, b_hh = b, np.zeros_like(b)
        else:
            want = f"({G * H},) or (2, {G * H})" if kind == "gru" else f"({G * H},)"
            raise ValueError(f"{what}: bias must be {want} for {kind} with {H} units, got {b.shape}")
    w_ih, w_hh = k.T, r.T
    if kind == "gru":
        w_ih, w_hh = reorder_blocks(w_ih, _KERAS_GRU_ORDER), reorder_blocks(w_hh, _KERAS_GRU_ORDER)
        if b_ih is not None:
            b_ih, b_hh = reorder_blocks(b_ih, _KERAS_GRU_ORDER), reorder_blocks(b_hh, _KERAS_GRU_ORDER)
    return (w_ih, w_hh, b_ih, b_hh), k.shape[0], H, reset_after


def reorder_blocks(a: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """Permute the len(order) equal row blocks of ``a`` (first axis): block j of the result
    is block order[j] of ``a``. Moves gates between frameworks' orders."""
    G = len(order)
    return a.reshape(G, a.shape[0] // G, *a.shape[1:])[list(order)].reshape(a.shape)


def from_keras(weights: Union[Sequence, Mapping], kind: str = "lstm", *, bidirectional: bool = False,
               reset_after: Optional[bool] = None, activation: str = "tanh",
               recurrent_activation: str = "sigmoid", batch_first: bool = True, dtype=np.float32,
               check_finite: bool = True, keras_version: int = 3) -> RecurrentLayer:
    """An nlstm layer computing what a Keras ``LSTM``/``GRU``/``SimpleRNN`` computes.

    weights: one Keras layer's arrays, in ``layer.get_weights()`` order
        ``[kernel (I, G·H), recurrent_kernel (H, G·H), bias]`` (no bias with
        ``use_bias=False``), or a mapping whose keys end in ``kernel``,
        ``recurrent_kernel``, ``bias`` (e.g. HDF5 dataset names such as
        ``".../lstm_cell/kernel:0"``). For ``bidirectional``: the ``Bidirectional``
        wrapper's list, forward arrays then backward arrays. For a stack of layers (each
        with ``return_sequences=True`` but the last): a list with one such entry per layer.
    kind: "lstm" | "gru" | "simple_rnn".
    reset_after: GRU only; read from the bias when it has one ((2, 3H) is True, (3H,) is
        False), else True (Keras 2.x/3's default). True is nlstm's (and PyTorch's)
        ``linear_before_reset=True`` with separate input and recurrent biases; False is
        ``linear_before_reset=False``, with the one bias on the input side.
    activation, recurrent_activation: Keras's names: "tanh", "sigmoid", "relu",
        "hard_sigmoid", "linear", "elu", "softsign", "softplus". Others than the defaults
        ("tanh", "sigmoid") become the layer's ``activations`` (its slower, general path).
    keras_version: 3 (default) or 2, for "hard_sigmoid", which Keras 3 defines as
        clip(x/6 + 0.5, 0, 1) and Keras 2 as clip(0.2·x + 0.5, 0, 1).
    batch_first: True (default) takes Keras's (B, T, I) input.

    Keras's ``go_backwards`` on a single layer is not handled; ``Bidirectional`` is.
    A Keras mask carries the state through padded steps; nlstm's ``lengths`` give the same
    final state (for right padding) and zero outputs at padded steps.
    """
    if kind not in _KERAS_KINDS:
        raise ValueError(f"kind must be one of {sorted(_KERAS_KINDS)}, got {kind!r}")
    if keras_version not in (2, 3):
        raise ValueError(f"keras_version must be 2 or 3, got {keras_version!r}")
    g = _keras_activation(activation, keras_version, "activation")
    f = _keras_activation(recurrent_activation, keras_version, "recurrent_activation")
    acts = {"lstm": (f, g, g), "gru": (f, g), "simple_rnn": (g,)}[kind]
    cls = _KERAS_KINDS[kind][0]
    D = 2 if bidirectional else 1
    if isinstance(weights, (list, tuple)) and weights and isinstance(weights[0], (list, tuple, Mapping)):
        per_layer = list(weights)
    else:
        per_layer = [weights]
    if not per_layer or (isinstance(per_layer[0], (list, tuple)) and not per_layer[0]):
        raise ValueError("weights is empty; expected Keras's [kernel, recurrent_kernel, bias]")
    params, sizes, biases, ra = {}, [], [], reset_after
    for k, lw in enumerate(per_layer):
        if D == 2:
            if isinstance(lw, Mapping) or not isinstance(lw, (list, tuple)) or len(lw) % 2:
                raise ValueError(f"layer {k}: a Bidirectional layer's weights are a list, forward "
                                 "arrays then backward arrays")
            halves = [list(lw[: len(lw) // 2]), list(lw[len(lw) // 2:])]
        else:
            halves = [lw]
        for d, half in enumerate(halves):
            what = f"layer {k}{' backward' if d else ''}"
            arrays = _keras_arrays(half, what)
            (w_ih, w_hh, b_ih, b_hh), I, H, ra_d = _keras_params(arrays, kind, ra, what)
            ra = ra_d if ra_d is not None else ra
            sizes.append((I, H))
            biases.append(b_ih is not None)
            sfx = "_reverse" if d else ""
            params[f"weight_ih_l{k}{sfx}"] = w_ih
            params[f"weight_hh_l{k}{sfx}"] = w_hh
            if b_ih is not None:
                params[f"bias_ih_l{k}{sfx}"] = b_ih
                params[f"bias_hh_l{k}{sfx}"] = b_hh
    H = sizes[0][1]
    for j, (I, h) in enumerate(sizes):
        k = j // D
        if h != H:
            raise ValueError(f"layer {k}: {h} units, but layer 0 has {H} (nlstm stacks equal layers)")
        if k > 0 and I != D * H:
            raise ValueError(f"layer {k}: kernel takes {I} inputs, but the layer below gives {D * H}")
    if len(set(biases)) > 1:
        raise ValueError("every layer must have a bias, or none (use_bias)")
    kw: dict = dict(num_layers=len(per_layer), bias=biases[0], batch_first=batch_first,
                    bidirectional=bidirectional, dtype=dtype, check_finite=check_finite)
    if kind == "gru":
        kw["linear_before_reset"] = True if ra is None else bool(ra)
    names = tuple(a[0] for a in acts)
    if names != {"lstm": ("Sigmoid", "Tanh", "Tanh"), "gru": ("Sigmoid", "Tanh"),
                 "simple_rnn": ("Tanh",)}[kind]:
        from .activations import DEFAULTS
        kw["activations"] = names
        kw["activation_alpha"] = [a[1] for a in acts if DEFAULTS.get(a[0], (None, None))[0] is not None]
        kw["activation_beta"] = [a[2] for a in acts if DEFAULTS.get(a[0], (None, None))[1] is not None]
    layer = cls(sizes[0][0], H, **kw)
    layer.load_state_dict(params)
    return layer
