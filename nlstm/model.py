"""``nlstm.Sequential``: recurrent layers and a linear head, with fit / evaluate / predict.

Data are batch-first: X is (N, T, F); the model reads every step (``output="sequence"``,
predictions (N, T, O)) or the last valid step of each sequence (``output="last"``,
predictions (N, O)). Layers inside may be time-major or batch-first; the container gives
each the layout it asks for.
"""
from __future__ import annotations

import math
import shutil
import sys
import threading
import time
from typing import Callable, List, Mapping, Optional, Sequence

import numpy as np

from ._guard import GradBackup, Lockable, check_training_thread, locked
from ._validate import is_real, lengths_array, positive_int, real_array
from .linear import Dropout, Linear
from .losses import CrossEntropyLoss, Loss, get_loss
from .optim import SGD, Adam, AdamW, CosineLR, LRScheduler, Optimizer, StepLR, clip_grad_norm
from .recurrent import RecurrentLayer

# The classes a saved config may name, looked up on the nlstm module so that cells added
# later (GRU, RNN) load without changes here. Nothing else is ever constructed.
LAYER_CLASSES = ("LSTM", "LayerNormLSTM", "GRU", "RNN", "Linear", "Dropout")
OUTPUTS = ("last", "sequence")


def _is_recurrent(layer) -> bool:
    return isinstance(layer, RecurrentLayer)


def _features(layer):
    """(input features, output features) of a layer; None for shape-preserving layers."""
    if isinstance(layer, Linear):
        return layer.in_features, layer.out_features
    if _is_recurrent(layer):
        return layer.input_size, layer.output_size
    return None, None


def layer_class(name: str):
    """The nlstm layer class called ``name`` (one of LAYER_CLASSES that exists), else ValueError."""
    import nlstm

    cls = getattr(nlstm, name, None) if name in LAYER_CLASSES else None
    if not isinstance(cls, type):
        known = [n for n in LAYER_CLASSES if isinstance(getattr(nlstm, n, None), type)]
        raise ValueError(f"unknown layer class {name!r}; expected one of {known}")
    return cls


class Sequential(Lockable):
    """Layers applied in order: recurrent layers (``nlstm.LSTM`` and its kin), optional
    ``Dropout`` and ``Linear`` layers between them, and a head of ``Linear``/``Dropout``
    layers after the last recurrent layer.

    output: "last" - the head reads the last valid step of each sequence (for a
        bidirectional last layer: the forward half at the last valid step and the reverse
        half at step 0, i.e. each direction's final output), predictions (B, O);
        "sequence" - the head reads every step, predictions (B, T, O).
    loss: "mse" or "cross_entropy" (logits; integer class targets), or a Loss instance.

    ``params``/``grads`` hold the live arrays of every layer under ``"{index}.{name}"``.
    """

    _lock_type = staticmethod(threading.RLock)  # fit calls forward

    def __init__(self, layers: Sequence, output: str = "last", loss="mse"):
        if isinstance(layers, (str, bytes)) or not isinstance(layers, (list, tuple)):
            raise TypeError(f"layers must be a list of layers, got {type(layers).__name__}")
        layers = list(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, (Linear, Dropout, RecurrentLayer)):
                raise TypeError(f"layers[{i}] must be an nlstm layer (LSTM, GRU, RNN, Linear or "
                                f"Dropout), got {type(layer).__name__}")
        rec = [i for i, layer in enumerate(layers) if _is_recurrent(layer)]
        if not rec:
            raise ValueError("layers must include at least one recurrent layer (LSTM, GRU or RNN)")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        dtypes = {layer.dtype for layer in layers if hasattr(layer, "dtype")}
        if len(dtypes) != 1:
            raise TypeError(f"all layers must share one dtype, got {sorted(d.name for d in dtypes)}")
        width = None
        for i, layer in enumerate(layers):
            fin, fout = _features(layer)
            if fin is not None:
                if width is not None and fin != width:
                    raise ValueError(f"layers[{i}] ({layer!r}) expects {fin} input features but "
                                     f"the layer before it gives {width}")
                width = fout
        if len(set(map(id, layers))) != len(layers):
            raise ValueError("layers must not repeat a layer object")
        self.layers: List = layers
        self.output = output
        self.loss: Loss = get_loss(loss)
        self.dtype = dtypes.pop()
        self.input_size = next(_features(l)[0] for l in layers if _features(l)[0] is not None)
        self.output_size = width
        self._last = rec[-1]  # the head (layers after this one) reads its output
        self.params = {f"{i}.{k}": v for i, layer in enumerate(layers) for k, v in layer.params.items()}
        self.grads = {f"{i}.{k}": v for i, layer in enumerate(layers) for k, v in layer.grads.items()}
        self.metadata: dict = {}  # JSON-compatible extras saved with the model (e.g. by the CLI)
        self._cache = None
        # Calls from several threads take turns (fit calls forward: re-entrant); see README.
        self._new_lock()
        self._train_thread: Optional[int] = None  # the thread of the training forward
        self._grad_backup = GradBackup()

    # ---- parameters -----------------------------------------------------------------------
    @locked
    def zero_grad(self) -> None:
        """Set every accumulated parameter gradient to zero."""
        for layer in self.layers:
            layer.zero_grad()

    def state_dict(self) -> dict:
        """Copies of every parameter, as ``"{layer index}.{name}"`` (e.g. ``"0.weight_ih_l0"``)."""
        return {k: v.copy() for k, v in self.params.items()}

    @locked
    def load_state_dict(self, state_dict: Mapping) -> None:
        """Load every layer's parameters; checks every key, shape and value before changing any."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        missing = sorted(set(self.params) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(self.params))
        if missing or unexpected:
            raise ValueError(f"state_dict keys do not match: missing {missing}, unexpected {unexpected}")
        for k, p in self.params.items():
            a = real_array(f"state_dict[{k!r}]", state_dict[k], True, p.dtype, "parameters must be finite")
            if a.shape != p.shape:
                raise ValueError(f"state_dict[{k!r}] must have shape {p.shape}, got {a.shape}")
        for i, layer in enumerate(self.layers):
            prefix = f"{i}."
            layer.load_state_dict({k[len(prefix):]: v for k, v in state_dict.items()
                                   if k.startswith(prefix)})

    def get_config(self) -> dict:
        """Everything needed to rebuild the model (not its weights), as JSON-compatible values."""
        return {"layers": [{"class": type(l).__name__, "config": l.get_config()} for l in self.layers],
                "output": self.output, "loss": self.loss.name}

    @classmethod
    def from_config(cls, config: Mapping) -> "Sequential":
        """Build a model from ``get_config()``; only nlstm layer classes are ever constructed."""
        if not isinstance(config, Mapping) or not isinstance(config.get("layers"), list):
            raise ValueError("model config must be a mapping with a list of layers")
        layers = []
        for i, spec in enumerate(config["layers"]):
            if not isinstance(spec, Mapping) or not isinstance(spec.get("class"), str) \
                    or not isinstance(spec.get("config"), Mapping):
                raise ValueError(f"layer {i} of the config must be {{'class': name, 'config': {{...}}}}")
            layers.append(layer_class(spec["class"])(**spec["config"]))
        loss = config.get("loss", "mse")
        if not isinstance(loss, str):
            raise ValueError(f"loss in the config must be a name, got {loss!r}")
        return cls(layers, output=config.get("output", "last"), loss=loss)

    def save(self, path, metadata: Optional[Mapping] = None) -> str:
        """Write the model to one ``.npz`` file atomically (see :func:`nlstm.save`); returns the path."""
        from .io import save

        return save(self, path, metadata=metadata)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(l) for l in self.layers)
        return f"Sequential([\n  {inner}\n], output={self.output!r}, loss={self.loss.name!r})"

    # ---- forward / backward ---------------------------------------------------------------
    def _check_x(self, x, name: str = "X") -> np.ndarray:
        x = real_array(name, x, True, self.dtype)
        if x.ndim != 3:
            raise ValueError(f"{name} must be 3-D (batch, time, features), got shape {x.shape}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"{name} must have at least one sequence and one time step, got shape {x.shape}")
        if x.shape[2] != self.input_size:
            raise ValueError(f"{name}.shape[2] must be equal to the first layer's input size. "
                             f"Expected {self.input_size}, got {x.shape[2]}")
        return x

    def _last_index(self, lengths, B: int, T: int) -> np.ndarray:
        if lengths is None:
            return np.full(B, T - 1)
        return np.maximum(np.asarray(lengths) - 1, 0)

    @locked
    def forward(self, x, lengths=None, state: Optional[list] = None, train: bool = True):
        """x: (B, T, F) batch-first; lengths: optional (B,) in 0..T; state: optional list of
        one initial state per recurrent layer (as returned here).

        Returns (out, state): out (B, O) with output="last" or (B, T, O) with "sequence",
        and the final state of every recurrent layer (plain arrays: carrying it into the next
        call carries no gradient). With ``train`` keeps what ``backward`` needs.
        """
        x = self._check_x(x, "x")
        B, T = x.shape[:2]
        if lengths is not None:
            lengths = lengths_array(lengths, B, T)
        n_rec = sum(map(_is_recurrent, self.layers))
        if state is not None and (not isinstance(state, (list, tuple)) or len(state) != n_rec):
            raise ValueError(f"state must be a list of {n_rec} states, one per recurrent layer")
        self._cache = None
        states = list(state) if state is not None else [None] * n_rec
        new_states = []
        h = x
        for layer in self.layers[: self._last + 1]:
            if _is_recurrent(layer):
                s = states[len(new_states)]
                y, s = layer.forward(h if layer.batch_first else h.transpose(1, 0, 2), state=s,
                                     lengths=lengths, train=train)
                new_states.append(s)
                h = y if layer.batch_first else y.transpose(1, 0, 2)
            else:
                h = layer.forward(h, train=train)
        seq_shape = h.shape
        if self.output == "last":
            h = self._gather(h, self._last_index(lengths, B, T))
        for layer in self.layers[self._last + 1:]:
            h = layer.forward(h, train=train)
        if train:
            self._cache = (seq_shape, lengths, B, T)
            self._train_thread = threading.get_ident()
        return h, new_states

    def _gather(self, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """(B, T, D·O) -> (B, D·O): each direction's final output (forward at the last valid
        step, reverse at step 0)."""
        rows = np.arange(y.shape[0])
        out = y[rows, idx]
        last = self.layers[self._last]
        if last.num_directions == 2:
            half = y.shape[2] // 2
            out[:, half:] = y[:, 0, half:]
        return out

    def _scatter(self, g: np.ndarray, shape, idx: np.ndarray) -> np.ndarray:
        """The gradient of ``_gather``: (B, D·O) -> (B, T, D·O), zero elsewhere."""
        dy = np.zeros(shape, g.dtype)
        rows = np.arange(shape[0])
        last = self.layers[self._last]
        if last.num_directions == 2:
            half = shape[2] // 2
            dy[rows, idx, :half] = g[:, :half]
            dy[:, 0, half:] += g[:, half:]
        else:
            dy[rows, idx] = g
        return dy

    @locked
    def backward(self, dout) -> np.ndarray:
        """dout: gradient of the last training forward's out. Adds into every layer's grads
        and returns dx (B, T, F). Gradients of the initial states are not returned."""
        if self._cache is None:
            raise ValueError("backward() needs a forward(..., train=True) first, and each "
                             "training forward can be backpropagated once")
        check_training_thread(self, self._train_thread)
        seq_shape, lengths, B, T = self._cache
        g = real_array("dout", dout, True, self.dtype)
        want = (B, seq_shape[2]) if self.output == "last" else seq_shape
        want = (*want[:-1], self.output_size)
        if g.shape != want:
            raise ValueError(f"dout must have shape {want}, got {g.shape}")
        self._cache = None
        # A backward that stops early (an error, KeyboardInterrupt) leaves every layer's
        # gradients as they were, not only the layer it stopped in.
        with self._grad_backup.guard(self.grads):
            for layer in reversed(self.layers[self._last + 1:]):
                g = layer.backward(g)
            if self.output == "last":
                g = self._scatter(g, seq_shape, self._last_index(lengths, B, T))
            for layer in reversed(self.layers[: self._last + 1]):
                if _is_recurrent(layer):
                    dx = layer.backward(g if layer.batch_first else g.transpose(1, 0, 2))[0]
                    g = dx if layer.batch_first else dx.transpose(1, 0, 2)
                else:
                    g = layer.backward(g)
        return g

    def __call__(self, x, lengths=None):
        """Inference on one batch: ``out = model(x, lengths)``."""
        return self.forward(x, lengths, train=False)[0]

    # ---- data checks ----------------------------------------------------------------------
    def _check_y(self, Y, X: np.ndarray, lengths, name: str = "Y") -> np.ndarray:
        """Y in the loss's layout: (N, O) or (N, T, O) for MSE (a trailing O of 1 may be
        left out), (N,) or (N, T) class indices for cross-entropy."""
        N, T = X.shape[:2]
        lead = (N,) if self.output == "last" else (N, T)
        O = self.output_size
        if isinstance(self.loss, CrossEntropyLoss):
            y = np.asarray(Y)
            if y.dtype.kind not in "iu":
                raise TypeError(f"{name} must hold integer class indices for cross_entropy, got "
                                f"dtype {y.dtype}")
            if y.shape != lead:
                raise ValueError(f"{name} must have shape {lead}, got {y.shape}")
            v = y[self._valid(lengths, lead)]
            if v.size and (v.min() < 0 or v.max() >= O):
                raise ValueError(f"{name} must be class indices in 0..{O - 1}, got values in "
                                 f"{v.min()}..{v.max()}")
            return y
        y = real_array(name, Y, check_finite=False)
        if O == 1 and y.shape == lead:
            y = y[..., None]
        if y.shape != (*lead, O):
            raise ValueError(f"{name} must have shape {(*lead, O)}, got {y.shape}")
        y = np.array(y, dtype=self.dtype)
        valid = self._valid(lengths, lead)
        if not np.isfinite(y[valid]).all():
            raise ValueError(f"{name} contains NaN or Inf where it counts (padding may hold anything)")
        y[~valid] = 0  # padding may hold NaN; zero keeps it out of the masked loss
        return y

    def _valid(self, lengths, lead) -> np.ndarray:
        """Which positions of a (N,) or (N, T) target count."""
        if lengths is None:
            return np.ones(lead, bool)
        if len(lead) == 1:
            return lengths > 0
        return np.arange(lead[1])[None, :] < lengths[:, None]

    def _prepare(self, X, Y, lengths, names=("X", "Y", "lengths")):
        X = self._check_x(X, names[0])
        if lengths is not None:
            try:
                lengths = lengths_array(lengths, X.shape[0], X.shape[1])
            except (TypeError, ValueError) as e:
                raise type(e)(str(e).replace("lengths", names[2], 1)) from None
        Y = None if Y is None else self._check_y(Y, X, lengths, names[1])
        return np.ascontiguousarray(X, dtype=self.dtype), Y, lengths

    # ---- inference ------------------------------------------------------------------------
    @locked
    def predict(self, X, lengths=None, batch_size: int = 256) -> np.ndarray:
        """X: (N, T, F) -> predictions (N, O) for output="last", (N, T, O) for "sequence"
        (steps past a row's length are zero). Logits for cross_entropy."""
        X, _, lengths = self._prepare(X, None, lengths)
        batch_size = positive_int("batch_size", batch_size)
        outs = []
        for b0 in range(0, len(X), batch_size):
            lb = None if lengths is None else lengths[b0:b0 + batch_size]
            outs.append(self.forward(X[b0:b0 + batch_size], lb, train=False)[0])
        out = np.concatenate(outs)
        if lengths is not None and self.output == "sequence":
            out *= (np.arange(X.shape[1])[None, :] < lengths[:, None])[..., None]
        return out

    @locked
    def evaluate(self, X, Y, lengths=None, batch_size: int = 256) -> float:
        """The loss over (X, Y): its mean over every position that counts (padding never does)."""
        X, Y, lengths = self._prepare(X, Y, lengths)
        return self._evaluate(X, Y, lengths, positive_int("batch_size", batch_size))

    def _evaluate(self, X, Y, lengths, batch_size: int) -> float:
        total, count = 0.0, 0
        for b0 in range(0, len(X), batch_size):
            sl = slice(b0, b0 + batch_size)
            lb = None if lengths is None else lengths[sl]
            out = self.forward(X[sl], lb, train=False)[0]
            value = self.loss.forward(out, Y[sl], lb)
            total += value * self.loss.count
            count += self.loss.count
        self.loss._grad = None
        return total / count if count else 0.0

    # ---- training -------------------------------------------------------------------------
    def _optimizer(self, optimizer, lr, weight_decay) -> Optimizer:
        if isinstance(optimizer, Optimizer):
            if set(optimizer.params) != set(self.params) or any(
                    optimizer.params[k] is not self.params[k] for k in self.params):
                raise ValueError("optimizer must be made over this model's parameters: "
                                 "e.g. nlstm.Adam(model, lr=1e-3)")
            return optimizer
        kinds = {"adam": Adam, "adamw": AdamW, "sgd": SGD}
        if not isinstance(optimizer, str) or optimizer.lower() not in kinds:
            raise ValueError(f"optimizer must be one of {sorted(kinds)} or an nlstm Optimizer, "
                             f"got {optimizer!r}")
        return kinds[optimizer.lower()](self, lr=lr, weight_decay=weight_decay)

    @locked
    def fit(self, X, Y, lengths=None, epochs: int = 10, batch_size: int = 32,
            validation_data: Optional[tuple] = None, seed: Optional[int] = None,
            early_stopping: Optional[int] = None, verbose="auto", optimizer="adam",
            lr: float = 1e-3, weight_decay: float = 0.0, clip_norm: Optional[float] = None,
            schedule=None, tbptt: Optional[int] = None, shuffle: bool = True,
            callback: Optional[Callable[[int, dict], Optional[bool]]] = None) -> dict:
        """Train on X (N, T, F) and Y (see ``evaluate``) in minibatches; returns the history.

        lengths: optional (N,) valid steps per sequence; padding never counts.
        validation_data: (X_val, Y_val) or (X_val, Y_val, lengths_val), evaluated each epoch.
        seed: fixes the batch order and the masks of ``Dropout`` layers; with seeded layers,
            the same seed gives bitwise-identical weights (same machine and thread count).
        early_stopping: patience in epochs without a better validation loss (training loss
            without validation data); the best weights are restored at the end.
        verbose: "auto" (a progress bar when stderr is a terminal), 0/False (quiet),
            1/True (progress bar; tqdm if installed), 2 (one line per epoch on stdout).
        optimizer: "adam", "adamw", "sgd" (made with ``lr`` and ``weight_decay``) or an
            nlstm Optimizer made over this model. clip_norm: clip the global gradient norm.
        schedule: None, "cosine" (to 0 over ``epochs``), "step" (×0.1 every third of the
            epochs) or an LRScheduler on the optimizer; stepped once per epoch.
        tbptt: truncated backpropagation through time in chunks of this many steps: the
            state is carried from chunk to chunk without gradient and the weights are
            updated after each chunk. Any batch size; not with bidirectional layers.
        callback: called as callback(epoch, logs) after each epoch; returning True stops.

        Returns {"epoch": [...], "loss": [...], "val_loss": [...] (with validation data),
        "lr": [...], "time": [...] (seconds since the start)}, one entry per epoch.
        """
        X, Y, lengths = self._prepare(X, Y, lengths)
        run = self._fit_setup(len(X), epochs=epochs, batch_size=batch_size,
                              validation_data=validation_data, seed=seed,
                              early_stopping=early_stopping, verbose=verbose, optimizer=optimizer,
                              lr=lr, weight_decay=weight_decay, clip_norm=clip_norm,
                              schedule=schedule, tbptt=tbptt, shuffle=shuffle, callback=callback)

        def train_batch(idx: np.ndarray):
            lb = None if lengths is None else lengths[idx]
            return self._train_batch(X[idx], Y[idx], lb, run.opt, run.clip_norm, run.tbptt)

        return self._fit_loop(run, train_batch)

    def _fit_setup(self, n_rows: int, *, epochs, batch_size, validation_data, seed,
                   early_stopping, verbose, optimizer, lr, weight_decay, clip_norm, schedule,
                   tbptt, shuffle, callback) -> "FitRun":
        """Check ``fit``'s arguments (all but the training data) and make its optimizer,
        schedule and random streams. Changes the model only after every check has passed
        (it reseeds Dropout layers when ``seed`` is given). Shared by ``nlstm.dask.fit``."""
        epochs = positive_int("epochs", epochs)
        batch_size = positive_int("batch_size", batch_size)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise TypeError("validation_data must be (X_val, Y_val) or (X_val, Y_val, lengths_val)")
            vx, vy, *vl = validation_data
            val = self._prepare(vx, vy, vl[0] if vl else None,
                                ("validation X", "validation Y", "validation lengths"))
        if early_stopping is not None:
            early_stopping = positive_int("early_stopping", early_stopping)
        if tbptt is not None:
            tbptt = positive_int("tbptt", tbptt)
            if any(getattr(l, "bidirectional", False) for l in self.layers):
                raise ValueError("tbptt needs unidirectional layers: a bidirectional layer must "
                                 "see the whole sequence")
        if clip_norm is not None and not (is_real(clip_norm) and math.isfinite(clip_norm)
                                          and clip_norm > 0):
            raise ValueError(f"clip_norm must be a positive number, got {clip_norm!r}")
        mode = {0: 0, False: 0, 1: 1, True: 1, 2: 2}.get(verbose) if verbose != "auto" else \
            (1 if sys.stderr.isatty() else 0)
        if mode is None:
            raise ValueError(f"verbose must be 'auto', 0, 1 or 2, got {verbose!r}")
        opt = self._optimizer(optimizer, lr, weight_decay)
        if schedule is None or isinstance(schedule, LRScheduler):
            sched = schedule
        elif schedule == "cosine":
            sched = CosineLR(opt, T_max=epochs)
        elif schedule == "step":
            sched = StepLR(opt, step_size=max(1, epochs // 3), gamma=0.1)
        else:
            raise ValueError(f"schedule must be None, 'cosine', 'step' or an LRScheduler, got {schedule!r}")
        if sched is not None and sched.optimizer is not opt:
            raise ValueError("schedule must be made over the optimizer that fit uses")

        # One seed fixes every random choice of training: the batch order and Dropout masks.
        seeds = np.random.SeedSequence(seed)
        order_seed, *mask_seeds = seeds.spawn(1 + len(self.layers))
        rng = np.random.default_rng(order_seed)
        if seed is not None:
            for layer, s in zip(self.layers, mask_seeds):
                if isinstance(layer, Dropout):
                    layer.reseed(s)
        return FitRun(n_rows=n_rows, epochs=epochs, batch_size=batch_size, val=val,
                      early_stopping=early_stopping, tbptt=tbptt, clip_norm=clip_norm, mode=mode,
                      opt=opt, sched=sched, rng=rng, shuffle=shuffle, callback=callback,
                      history={"epoch": [], "loss": [], "lr": [], "time": [],
                               **({"val_loss": []} if val is not None else {})})

    def _fit_loop(self, run: "FitRun", train_batch: Callable[[np.ndarray], tuple],
                  after_epoch: Optional[Callable[[], None]] = None) -> dict:
        """fit's epochs: batch order, progress, history, validation, schedule, callback and
        early stopping. ``train_batch(idx)`` trains on the rows ``idx`` of the training data
        and returns (loss·count, count). Starts at ``run``'s position (epoch 1, step 0 for
        a new run) and keeps it there, so a caller can checkpoint and resume a run;
        ``after_epoch()`` is called when an epoch is over and the position is the next's."""
        N, batch_size, mode = run.n_rows, run.batch_size, run.mode
        steps = math.ceil(N / batch_size)
        history, val = run.history, run.val
        bar = _progress(mode, run.epochs * steps)
        if bar is not None and (run.epoch > 1 or run.step):
            bar.update((run.epoch - 1) * steps + run.step)  # a resumed run
        t_start = time.perf_counter() - run.elapsed
        stop = False
        try:
            while run.epoch <= run.epochs and not stop:
                epoch = run.epoch
                if run.order is None:
                    run.order = run.rng.permutation(N) if run.shuffle else np.arange(N)
                if bar is not None:
                    bar.set_description(f"epoch {epoch}/{run.epochs}")
                while run.step < steps:
                    idx = run.order[run.step * batch_size:(run.step + 1) * batch_size]
                    t, c = train_batch(idx)
                    run.total += t
                    run.count += c
                    run.step += 1
                    run.elapsed = time.perf_counter() - t_start
                    if bar is not None:
                        bar.update(1)
                        if run.count:
                            bar.set_postfix_str(self._postfix(run.total / run.count, history),
                                                refresh=False)
                logs = {"epoch": epoch, "loss": run.total / run.count if run.count else 0.0,
                        "lr": run.opt.lr}
                if val is not None:
                    logs["val_loss"] = self._evaluate(*val, max(batch_size, 256))
                logs["time"] = time.perf_counter() - t_start
                for k, v in logs.items():
                    history[k].append(v)
                if bar is not None:
                    bar.set_postfix_str(self._postfix(logs["loss"], history), refresh=True)
                elif mode == 2:
                    extra = f", val_loss {logs['val_loss']:.5f}" if val is not None else ""
                    print(f"epoch {epoch}/{run.epochs}: loss {logs['loss']:.5f}{extra} "
                          f"({logs['time']:.1f} s)", flush=True)
                if run.sched is not None:
                    run.sched.step()
                stop = bool(run.callback(epoch, dict(logs))) if run.callback is not None else False
                if run.early_stopping is not None:
                    monitored = logs.get("val_loss", logs["loss"])
                    if monitored < run.best:
                        run.best, run.best_state, run.since_best = monitored, self.state_dict(), 0
                    else:
                        run.since_best += 1
                        stop = stop or run.since_best >= run.early_stopping
                run.next_epoch()
                if after_epoch is not None:
                    after_epoch()
        finally:
            if bar is not None:
                bar.close()
        if run.best_state is not None:
            self.load_state_dict(run.best_state)
        return history

    @staticmethod
    def _postfix(loss: float, history: dict) -> str:
        text = f"loss={loss:.4g}"
        if history.get("val_loss"):
            text += f", val_loss={history['val_loss'][-1]:.4g}"
        return text

    def _train_batch(self, xb, yb, lb, opt: Optimizer, clip_norm, tbptt):
        """One optimizer step per batch (per chunk with tbptt). Returns (loss·count, count)."""
        total, count = 0.0, 0
        state = None
        for t0, t1 in _chunk_bounds(xb.shape[1], tbptt):
            value, n, state = self._chunk_grad(*self._chunk(xb, yb, lb, t0, t1), state)
            if n == 0:
                continue
            total += value * n
            count += n
            self._apply_update(opt, clip_norm)
        return total, count

    def _chunk(self, xb, yb, lb, t0: int, t1: int):
        """The steps t0..t1-1 of a batch as (x, y, lengths, loss lengths) for ``_chunk_grad``."""
        T = xb.shape[1]
        if t0 == 0 and t1 == T:
            return xb, yb, lb, lb
        xc = xb[:, t0:t1]
        lc = np.full(len(xb), t1 - t0) if lb is None else np.clip(lb - t0, 0, t1 - t0)
        if self.output == "sequence":
            return xc, yb[:, t0:t1], lc, lc
        # A row's target belongs to the chunk that holds its last valid step.
        end = (np.full(len(xb), T) if lb is None else lb) - 1
        return xc, yb, lc, ((end >= t0) & (end < t1)).astype(np.int64)

    def _chunk_grad(self, xc, yc, lc, loss_len, state, scale: Optional[float] = None):
        """Zero the gradients, then forward and backward over one chunk from ``state``.
        Returns (mean loss, count of positions, final state); with no position counting,
        no gradient is computed. ``scale`` multiplies the loss gradient by count·scale
        (``nlstm.dask`` passes 1 to get the gradient of the sum instead of the mean)."""
        self.zero_grad()
        out, state = self.forward(xc, lc, state=state, train=True)
        value = self.loss.forward(out, yc, loss_len)
        n = self.loss.count
        if not math.isfinite(value):
            raise FloatingPointError("the training loss is not finite: lower lr or set clip_norm")
        if n == 0:
            self._cache = None
            self.loss._grad = None
            return value, n, state
        dout = self.loss.backward()
        if scale is not None:
            dout *= dout.dtype.type(n * scale)
        self.backward(dout)
        return value, n, state

    def _apply_update(self, opt: Optimizer, clip_norm) -> None:
        """One optimizer step from the gradients in ``self.grads``, clipped first if asked."""
        if clip_norm is not None:
            clip_grad_norm(self.grads, clip_norm)
        opt.step()


def _chunk_bounds(T: int, tbptt: Optional[int]):
    """(t0, t1) of each tbptt chunk of T steps; one chunk (0, T) without tbptt."""
    k = tbptt or T
    return [(t0, min(T, t0 + k)) for t0 in range(0, T, k)]


class FitRun:
    """Where a ``fit`` stands: its checked settings, optimizer, schedule and batch-order
    stream, the position (epoch, step within it, the epoch's order, loss so far) and the
    history. ``Sequential._fit_loop`` advances it; ``nlstm.dask`` checkpoints it."""

    def __init__(self, *, n_rows, epochs, batch_size, val, early_stopping, tbptt, clip_norm,
                 mode, opt, sched, rng, shuffle, callback, history):
        self.n_rows, self.epochs, self.batch_size, self.val = n_rows, epochs, batch_size, val
        self.early_stopping, self.tbptt, self.clip_norm, self.mode = early_stopping, tbptt, clip_norm, mode
        self.opt, self.sched, self.rng, self.shuffle, self.callback = opt, sched, rng, shuffle, callback
        self.history = history
        self.epoch, self.step, self.order = 1, 0, None
        self.total, self.count = 0.0, 0
        self.best, self.best_state, self.since_best = math.inf, None, 0
        self.elapsed = 0.0  # seconds of training before this call (for "time" when resumed)

    def next_epoch(self) -> None:
        self.epoch += 1
        self.step, self.order, self.total, self.count = 0, None, 0.0, 0


def _progress(mode: int, total: int):
    """A tqdm bar on stderr for mode 1, or None (quiet, or tqdm not installed)."""
    if mode != 1:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    # shutil falls back to 80 columns where the terminal reports a width of 0 (tqdm would
    # then draw nothing).
    width = min(shutil.get_terminal_size().columns, 120)
    return tqdm(total=total, unit="batch", leave=True, file=sys.stderr, ncols=width)
