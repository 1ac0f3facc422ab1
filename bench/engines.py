"""The engines that ``bench.compare`` times: nlstm and its peers, behind one small interface.

An engine turns a ``Problem`` and a mode ("infer", "train" or "step") into a ``Runner``:
calling the runner does the timed work once on prepared inputs; ``runner.result()`` runs
the problem once more and returns NumPy outputs for the agreement check:

  infer: y (T, B, D·H), h_n, c_n (L·D, B, H)           (c_n only for LSTM)
  train: y, dx (T, B, I), grads {PyTorch name: array}  (loss = sum of y)
  step:  y (K, B, H) for the K steps of problem.x fed from a zero state, h_n, c_n (L, B, H)

Every engine runs the three cells (``problem.cell``: "lstm", "gru", "rnn"); the GRU is
PyTorch's form (ONNX linear_before_reset=1), the RNN tanh. Peers are imported lazily so a
missing one is skipped with a reason.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional

import numpy as np

from .grid import Problem

_threads = 1


def configure_threads(n: int) -> None:
    """Give every engine n threads. Call before any engine (or jax) is imported.

    XLA reads its flags once, at import, and has no thread-count flag any more: at n = 1
    its Eigen pool is switched off; at n >= the machine's cores its default pool (one
    thread per core) already matches. Between the two, JAX is not capped (reported).
    """
    global _threads
    _threads = int(n)
    # Each engine on the OpenMP it runs on alone. Numba's omp layer (nlstm's default where
    # tbb is absent) loads the system's libgomp.so.1; torch's wheel carries its own file of
    # the same soname, and a torch imported after Numba's layer started binds to the system
    # one: both pools in one OpenMP runtime, and torch's ragged LSTM (thousands of small
    # regions) took 2.6-2.7 s instead of 10.9 ms (Zen 5, torch 2.13). Imported first, torch
    # keeps its own runtime and neither slows (bench/RESULTS.md, stop 28). The harness used
    # to run nlstm on workqueue instead, which made nlstm 1.3-1.7x slower than on omp (M, L
    # and XL inference, Zen 5) and noisy. NUMBA_THREADING_LAYER still chooses nlstm's layer.
    import_torch_first()
    flags = os.environ.get("XLA_FLAGS", "")
    if n == 1 and "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    import nlstm
    nlstm.set_num_threads(n)  # Numba's threads: nlstm's kernels
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=n, user_api="blas")  # the numpy peer and the sgemm floor


def import_torch_first() -> bool:
    """Import torch, if installed, before Numba's threading layer starts (see
    ``configure_threads``); whether it is installed."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def num_threads() -> int:
    return _threads


class Runner:
    """``runner()`` is the timed call; ``runner.result()`` gives outputs for the check."""

    def __init__(self, call: Callable[[], object], result: Callable[[], Dict]):
        self._call = call
        self.result = result

    def __call__(self):
        return self._call()


class Engine:
    name = "?"
    modes = frozenset({"infer", "train", "step"})
    cells = frozenset({"lstm", "gru", "rnn"})

    def unavailable(self) -> Optional[str]:
        """Why this engine cannot run here, or None."""
        return None

    def supports(self, problem: Problem, mode: str) -> Optional[str]:
        """Why this engine skips this problem and mode, or None."""
        if mode not in self.modes:
            return f"{self.name} has no {mode} mode"
        if problem.cell not in self.cells:
            return f"{self.name} has no {problem.cell.upper()} here"
        return None

    def prepare(self, problem: Problem, mode: str) -> Runner:
        raise NotImplementedError


def _state_names(cell):
    return ("h_n", "c_n") if cell == "lstm" else ("h_n",)


def _ones_dy(problem: Problem, dtype=np.float32):
    c = problem.case
    return np.ones((problem.x.shape[0], c.B, c.D * c.H), dtype)


# ---- nlstm -------------------------------------------------------------------------------
class NlstmEngine(Engine):
    name = "nlstm"

    def prepare(self, problem, mode):
        import nlstm
        c = problem.case
        m = getattr(nlstm, c.cell.upper())(c.I, c.H, num_layers=c.layers,
                                            bidirectional=c.bidirectional)
        m.load_state_dict(problem.params)
        x, lengths = problem.x, problem.lengths
        lstm = c.cell == "lstm"

        def states(st):
            return dict(zip(_state_names(c.cell), st if lstm else (st,)))

        if mode == "infer":
            def result():
                y, st = m(x, lengths=lengths)
                return dict(y=y, **states(st))
            return Runner(lambda: m(x, lengths=lengths), result)
        if mode == "train":
            dy = _ones_dy(problem)

            def call():
                m.zero_grad()
                m.forward(x, lengths=lengths, train=True)
                return m.backward(dy)

            def result():
                m.zero_grad()
                y, _ = m.forward(x, lengths=lengths, train=True)
                dx, _ = m.backward(dy)
                return dict(y=y, dx=dx, grads={k: v.copy() for k, v in m.grads.items()})
            return Runner(call, result)
        # step: a stream keeps the state from call to call (``m.step(x, state)``, the
        # functional form, is timed in bench.extra)
        x0 = np.ascontiguousarray(x[0])
        stream = m.stream(batch_size=x0.shape[0])

        def result():
            s = m.stream(batch_size=x0.shape[0])
            ys = [s(x_t) for x_t in x]
            return dict(y=np.stack(ys), **states(s.state))
        return Runner(lambda: stream(x0), result)


# ---- plain NumPy -------------------------------------------------------------------------
class NumpyEngine(Engine):
    name = "numpy"

    def prepare(self, problem, mode):
        from .numpy_lstm import NUMPY_CELLS
        c = problem.case
        m = NUMPY_CELLS[c.cell](problem.params, c.layers, c.bidirectional, np.float32)
        names = _state_names(c.cell)
        x, lengths = problem.x, problem.lengths
        if mode == "infer":
            def result():
                y, st = m.forward(x, lengths)
                return dict(y=y, **dict(zip(names, st)))
            return Runner(lambda: m.forward(x, lengths), result)
        if mode == "train":
            dy = _ones_dy(problem)

            def call():
                m.forward(x, lengths, train=True)
                return m.backward(dy)

            def result():
                y, _ = m.forward(x, lengths, train=True)
                dx, _, grads = m.backward(dy)
                return dict(y=y, dx=dx, grads=grads)
            return Runner(call, result)
        x0 = x[0]
        box = [None]

        def call():
            y, box[0] = m.step(x0, box[0])
            return y

        def result():
            st, ys = None, []
            for t in range(x.shape[0]):
                y, st = m.step(x[t], st)
                ys.append(y)
            return dict(y=np.stack(ys), **dict(zip(names, st)))
        return Runner(call, result)


# ---- PyTorch -----------------------------------------------------------------------------
class TorchEngine(Engine):
    name = "torch"

    def unavailable(self):
        try:
            import torch
        except ImportError as e:
            return f"torch not importable ({e})"
        torch.set_num_threads(_threads)
        try:
            torch.set_num_interop_threads(1)  # only allowed before torch's first parallel work
        except RuntimeError:
            pass
        return None

    def prepare(self, problem, mode):
        import torch
        c = problem.case
        mod_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[c.cell]
        x_np, lengths = problem.x, problem.lengths
        params = {k: torch.from_numpy(v.copy()) for k, v in problem.params.items()}
        lstm = c.cell == "lstm"

        def states(st):
            st = st if lstm else (st,)
            return dict(zip(_state_names(c.cell), (s.detach().numpy().copy() for s in st)))

        if mode == "step":
            # LSTMCell per layer: torch's fastest way to take one step (nn.LSTM on a
            # length-1 sequence is about 3x slower per call).
            cell_cls = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[c.cell]
            cells = []
            for k in range(c.layers):
                cell = cell_cls(c.I if k == 0 else c.H, c.H)
                cell.load_state_dict({n: params[f"{n}_l{k}"] for n in ("weight_ih", "weight_hh",
                                                                        "bias_ih", "bias_hh")})
                cells.append(cell)
            x0 = torch.from_numpy(np.ascontiguousarray(x_np[0]))
            zero = torch.zeros(c.B, c.H)
            init = [(zero, zero) if lstm else zero for _ in cells]
            box = [init]

            def advance(inp, st):
                new = []
                for cell, s in zip(cells, st):
                    s = cell(inp, s)
                    inp = s[0] if lstm else s
                    new.append(s)
                return inp, new

            def call():
                with torch.inference_mode():
                    y, box[0] = advance(x0, box[0])
                return y

            def result():
                st, ys = init, []
                with torch.inference_mode():
                    for t in range(x_np.shape[0]):
                        y, st = advance(torch.from_numpy(np.ascontiguousarray(x_np[t])), st)
                        ys.append(y.numpy().copy())
                out = dict(y=np.stack(ys), h_n=np.stack([(s[0] if lstm else s).numpy() for s in st]))
                if lstm:
                    out["c_n"] = np.stack([s[1].numpy() for s in st])
                return out
            return Runner(call, result)

        mod = mod_cls(c.I, c.H, num_layers=c.layers, bidirectional=c.bidirectional)
        mod.load_state_dict(params)
        T = x_np.shape[0]
        lens_t = None if lengths is None else torch.as_tensor(lengths)
        pack = torch.nn.utils.rnn.pack_padded_sequence
        unpack = torch.nn.utils.rnn.pad_packed_sequence

        def run(x):
            if lens_t is None:
                return mod(x)
            out, st = mod(pack(x, lens_t, enforce_sorted=False))
            return unpack(out, total_length=T)[0], st

        if mode == "infer":
            x = torch.from_numpy(x_np)

            def call():
                with torch.inference_mode():
                    return run(x)

            def result():
                y, st = call()
                return dict(y=y.numpy().copy(), **states(st))
            return Runner(call, result)

        # train: x requires grad, so torch also computes dx as nlstm does
        x = torch.from_numpy(x_np.copy()).requires_grad_(True)

        def call():
            mod.zero_grad(set_to_none=True)
            x.grad = None
            y, _ = run(x)
            y.sum().backward()
            return y

        def result():
            y = call()
            return dict(y=y.detach().numpy().copy(), dx=x.grad.numpy().copy(),
                        grads={k: p.grad.numpy().copy() for k, p in mod.named_parameters()})
        return Runner(call, result)


# ---- ONNX Runtime ------------------------------------------------------------------------
_ONNX_PERM = {"lstm": (0, 3, 1, 2),  # PyTorch i, f, g, o -> ONNX i, o, f, c
              "gru": (1, 0, 2),      # PyTorch r, z, n -> ONNX z, r, h
              "rnn": (0,)}


def _onnx_gates(w, cell):
    """Reorder the gate blocks of a (G·H, …) or (G·H,) PyTorch array into ONNX's order."""
    perm = _ONNX_PERM[cell]
    blocks = np.split(w, len(perm), axis=0)
    return np.concatenate([blocks[p] for p in perm], axis=0)


def build_onnx_model(problem: Problem, with_state: bool = False):
    """A graph of one ONNX LSTM, GRU or RNN node per layer, weights as initializers.

    Inputs: X (T, B, I) [, sequence_lens (B,) int32] [, h0, c0 (L·D, B, H)].
    Outputs: y (T, B, D·H), h_n, c_n (L·D, B, H), in PyTorch's layout (no c for GRU, RNN).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = problem.case
    op = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[c.cell]
    T = 1 if c.step else problem.x.shape[0]  # a step model takes one time step per run
    B, D, H = c.B, c.D, c.H
    F = TensorProto.FLOAT
    inits, nodes = [], []
    inputs = [helper.make_tensor_value_info("X", F, [T, B, c.I])]
    ragged = problem.lengths is not None
    if ragged:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [B]))
    state_names = _state_names(c.cell)
    if with_state:
        for s in ("h0", "c0")[:len(state_names)]:
            inputs.append(helper.make_tensor_value_info(s, F, [c.layers * D, B, H]))
    inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "shape_TBF"))
    inp = "X"
    layer_states = {n: [] for n in state_names}
    for k in range(c.layers):
        W, R, Bias = [], [], []
        for d in range(D):
            s = f"l{k}" + ("_reverse" if d else "")
            W.append(_onnx_gates(problem.params[f"weight_ih_{s}"], c.cell))
            R.append(_onnx_gates(problem.params[f"weight_hh_{s}"], c.cell))
            Bias.append(np.concatenate([_onnx_gates(problem.params[f"bias_ih_{s}"], c.cell),
                                        _onnx_gates(problem.params[f"bias_hh_{s}"], c.cell)]))
        for name, arr in ((f"W{k}", W), (f"R{k}", R), (f"B{k}", Bias)):
            inits.append(numpy_helper.from_array(np.stack(arr).astype(np.float32), name))
        node_in = [inp, f"W{k}", f"R{k}", f"B{k}", "sequence_lens" if ragged else ""]
        if with_state:
            # this layer's slice of the stacked initial states
            inits.append(numpy_helper.from_array(np.array([k * D], np.int64), f"s{k}"))
            inits.append(numpy_helper.from_array(np.array([(k + 1) * D], np.int64), f"e{k}"))
            for s in ("h0", "c0")[:len(state_names)]:
                nodes.append(helper.make_node("Slice", [s, f"s{k}", f"e{k}"], [f"{s}_{k}"]))
                node_in.append(f"{s}_{k}")
        outs = [f"Y{k}", f"Yh{k}", f"Yc{k}"][:1 + len(state_names)]
        attrs = dict(hidden_size=H, direction="bidirectional" if D == 2 else "forward")
        if c.cell == "gru":
            attrs["linear_before_reset"] = 1  # PyTorch's GRU applies r after the product
        nodes.append(helper.make_node(op, node_in, outs, **attrs))
        for n, o in zip(state_names, outs[1:]):
            layer_states[n].append(o)
        # Y is (T, D, B, H); the next layer and the user want (T, B, D·H)
        nodes.append(helper.make_node("Transpose", [f"Y{k}"], [f"Yt{k}"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"Yt{k}", "shape_TBF"], [f"y{k}"]))
        inp = f"y{k}"
    nodes.append(helper.make_node("Identity", [inp], ["y"]))
    outputs = [helper.make_tensor_value_info("y", F, [T, B, D * H])]
    for n, outs in layer_states.items():
        if len(outs) == 1:
            nodes.append(helper.make_node("Identity", outs, [n]))
        else:
            nodes.append(helper.make_node("Concat", outs, [n], axis=0))
        outputs.append(helper.make_tensor_value_info(n, F, [c.layers * D, B, H]))
    graph = helper.make_graph(nodes, f"nlstm_bench_{c.cell}", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what ORT builds of the last few years all accept
    onnx.checker.check_model(model)
    return model


class OrtEngine(Engine):
    name = "ort"
    modes = frozenset({"infer", "step"})  # no training in ONNX Runtime's standard build

    def unavailable(self):
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as e:
            return f"onnx/onnxruntime not importable ({e})"
        return None

    def build(self, problem, with_state):
        """The ONNX model (a hook: the check's tests build deliberately wrong ones)."""
        return build_onnx_model(problem, with_state)

    def prepare(self, problem, mode):
        import onnxruntime as ort
        c = problem.case
        model = self.build(problem, with_state=(mode == "step"))
        so = ort.SessionOptions()
        so.intra_op_num_threads = _threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        names = ["y", *_state_names(c.cell)]
        feed = {"X": problem.x}
        if problem.lengths is not None:
            feed["sequence_lens"] = problem.lengths.astype(np.int32)
        if mode == "infer":
            def result():
                return dict(zip(names, sess.run(names, feed)))
            return Runner(lambda: sess.run(names, feed), result)

        zero = np.zeros((c.layers, c.B, c.H), np.float32)
        state_in = ("h0", "c0")[:len(names) - 1]
        x0 = np.ascontiguousarray(problem.x[:1])
        box = [[zero] * len(state_in)]

        def call():
            out = sess.run(names, {"X": x0, **dict(zip(state_in, box[0]))})
            box[0] = out[1:]
            return out[0]

        def result():
            st, ys = [zero] * len(state_in), []
            for t in range(problem.x.shape[0]):
                out = sess.run(names, {"X": np.ascontiguousarray(problem.x[t:t + 1]),
                                       **dict(zip(state_in, st))})
                ys.append(out[0][0])
                st = out[1:]
            return dict(y=np.stack(ys), **dict(zip(names[1:], st)))
        return Runner(call, result)


# ---- JAX ---------------------------------------------------------------------------------
class JaxEngine(Engine):
    name = "jax"

    def unavailable(self):
        try:
            import jax  # noqa: F401
        except ImportError as e:
            return f"jax not importable ({e})"
        return None

    def prepare(self, problem, mode):
        import jax
        import jax.numpy as jnp
        from jax import lax

        c = problem.case
        H, D, L = c.H, c.D, c.layers
        cell = c.cell
        names = _state_names(cell)
        params = {k: jnp.asarray(v) for k, v in problem.params.items()}
        T = problem.x.shape[0]
        x = jnp.asarray(problem.x)
        ragged = problem.lengths is not None
        lens = jnp.asarray(problem.lengths if ragged else np.full(c.B, T), jnp.int32)

        def in_proj(p, sfx, xin):
            # the GRU keeps b_hn inside r ⊙ (W_hn h + b_hn): only b_ih moves to the input side
            b = p[f"bias_ih_{sfx}"] if cell == "gru" else p[f"bias_ih_{sfx}"] + p[f"bias_hh_{sfx}"]
            return xin @ p[f"weight_ih_{sfx}"].T + b

        def cell_step(p, sfx, xw_t, st):
            """One step from the projected input; st is (h,) or (h, c)."""
            hw = st[0] @ p[f"weight_hh_{sfx}"].T
            if cell == "lstm":
                i, f, g, o = jnp.split(xw_t + hw, 4, axis=-1)
                cn = jax.nn.sigmoid(f) * st[1] + jax.nn.sigmoid(i) * jnp.tanh(g)
                return jax.nn.sigmoid(o) * jnp.tanh(cn), cn
            if cell == "gru":
                hw = hw + p[f"bias_hh_{sfx}"]
                xr, xz, xn = jnp.split(xw_t, 3, axis=-1)
                hr, hz, hn = jnp.split(hw, 3, axis=-1)
                r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
                n = jnp.tanh(xn + r * hn)
                return (n + z * (st[0] - n),)
            return (jnp.tanh(xw_t + hw),)

        def direction(p, sfx, xin, mask):
            # the input projection of every step in one product, then a scan over time
            xw = in_proj(p, sfx, xin)
            zero = jnp.zeros((xin.shape[1], H), xin.dtype)

            def body(st, inputs):
                xw_t, m_t = inputs
                new = cell_step(p, sfx, xw_t, st)
                st = tuple(jnp.where(m_t, a, b) for a, b in zip(new, st))
                return st, jnp.where(m_t, new[0], 0.0)

            st, y = lax.scan(body, (zero,) * len(names), (xw, mask))
            return y, st

        def forward(p, xs, lengths):
            t = jnp.arange(xs.shape[0])[:, None]
            mask = (t < lengths[None, :])[:, :, None]
            # per-row time reversal of each valid prefix (its own inverse)
            rev = jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
            cols = jnp.arange(xs.shape[1])[None, :]
            inp, finals = xs, []
            for k in range(L):
                ys = []
                for d in range(D):
                    sfx = f"l{k}" + ("_reverse" if d else "")
                    xin = inp if d == 0 else inp[rev, cols]
                    y, st = direction(p, sfx, xin, mask)
                    ys.append(y if d == 0 else y[rev, cols])
                    finals.append(st)
                inp = jnp.concatenate(ys, axis=-1) if D == 2 else ys[0]
            return inp, tuple(jnp.stack([f[j] for f in finals]) for j in range(len(names)))

        if mode == "infer":
            f = jax.jit(forward)

            def call():
                return jax.block_until_ready(f(params, x, lens))

            def result():
                y, st = call()
                return dict(y=np.asarray(y), **{n: np.asarray(a) for n, a in zip(names, st)})
            return Runner(call, result)

        if mode == "train":
            def loss(p, xs):
                y, _ = forward(p, xs, lens)
                return jnp.sum(y), y
            g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))

            def call():
                return jax.block_until_ready(g(params, x))

            def result():
                (_, y), (gp, gx) = call()
                return dict(y=np.asarray(y), dx=np.asarray(gx),
                            grads={k: np.asarray(v) for k, v in gp.items()})
            return Runner(call, result)

        # step: one jitted step of every layer, state carried as device arrays
        def step(p, x_t, st):
            inp, new = x_t, []
            for k in range(L):
                s = f"l{k}"
                nk = cell_step(p, s, in_proj(p, s, inp), tuple(a[k] for a in st))
                new.append(nk)
                inp = nk[0]
            return inp, tuple(jnp.stack([n[j] for n in new]) for j in range(len(names)))
        fstep = jax.jit(step)
        zero = (jnp.zeros((L, c.B, H), jnp.float32),) * len(names)
        x0 = x[0]
        box = [zero]

        def call():
            y, box[0] = fstep(params, x0, box[0])
            return jax.block_until_ready(y)

        def result():
            st, ys = zero, []
            for t in range(T):
                y, st = fstep(params, x[t], st)
                ys.append(np.asarray(y))
            return dict(y=np.stack(ys), **{n: np.asarray(a) for n, a in zip(names, st)})
        return Runner(call, result)


ENGINES = {e.name: e for e in (NlstmEngine(), TorchEngine(), OrtEngine(), JaxEngine(), NumpyEngine())}
PEERS = [n for n in ENGINES if n != "nlstm"]
