"""Randomized configurations of every cell, shared by the reference and torch tests."""
import numpy as np

import nlstm
import reference as R

TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}


def tolerance(kind, dtype):
    """TOL[dtype]; for the LayerNorm cell in float32 an absolute 1e-4: gradients through a
    normalisation are scaled by 1/σ, so they (and float32's rounding in them) run larger
    than the plain cells' (seen: 1-7e-5 in weight gradients of magnitude 2-10)."""
    if kind.startswith("lnlstm") and dtype == np.float32:
        return dict(rtol=1e-4, atol=1e-4)
    return TOL[dtype]

# kind -> (constructor, extra kwargs, reference cell)
KINDS = {
    "lstm": (nlstm.LSTM, {}, R.LSTMCell),
    "gru": (nlstm.GRU, {}, lambda: R.GRUCell(True)),
    "gru_lbr0": (nlstm.GRU, dict(linear_before_reset=False), lambda: R.GRUCell(False)),
    "rnn_tanh": (nlstm.RNN, dict(nonlinearity="tanh"), lambda: R.RNNCell("tanh")),
    "rnn_relu": (nlstm.RNN, dict(nonlinearity="relu"), lambda: R.RNNCell("relu")),
    "lnlstm": (nlstm.LayerNormLSTM, {}, R.LayerNormLSTMCell),
}
# LSTM variants: the oracle has their forward; gradients are checked by finite differences
# (and by torch for proj_size).
VARIANTS = {
    "lstm_proj": (nlstm.LSTM, dict(proj_size=-1), lambda: R.LSTMCell(proj=True)),
    "lstm_peephole": (nlstm.LSTM, dict(peephole=True), lambda: R.LSTMCell(peephole=True)),
    "lstm_clip": (nlstm.LSTM, dict(clip=0.7), lambda: R.LSTMCell(clip=0.7)),
    "lstm_input_forget": (nlstm.LSTM, dict(input_forget=True), lambda: R.LSTMCell(input_forget=True)),
    "lstm_all_onnx": (nlstm.LSTM, dict(peephole=True, clip=0.9, input_forget=True),
                      lambda: R.LSTMCell(peephole=True, clip=0.9, input_forget=True)),
}
ALL_KINDS = {**KINDS, **VARIANTS}
TORCH_KINDS = ("lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_proj")


def make_case(seed, dtype, kind="lstm", allow_zero_length=True):
    """A random configuration with inputs and upstream gradients, in the user's layout."""
    rng = np.random.default_rng(seed)
    L = int(rng.integers(1, 4))
    bi = bool(rng.integers(0, 2))
    batch_first = bool(rng.integers(0, 2))
    unbatched = rng.random() < 0.2
    T, B, I, H = (int(rng.integers(1, 7)), int(rng.integers(1, 5)), int(rng.integers(1, 6)),
                  int(rng.integers(1, 7)))
    D = 2 if bi else 1
    cls, extra, ref_cell = ALL_KINDS[kind]
    if extra.get("proj_size") == -1:
        H = max(H, 2)
        extra = dict(extra, proj_size=int(rng.integers(1, H)))
    m = cls(I, H, num_layers=L, bidirectional=bi, batch_first=batch_first, dtype=dtype,
            seed=seed, bias=rng.random() < 0.85, **extra)
    O = m._out_size
    for name, p in m.params.items():  # gains and β_c away from their 1 and 0 at init
        if name.startswith("ln_"):
            p[...] = rng.uniform(0.5, 1.5, p.shape) if "weight" in name else rng.uniform(-0.5, 0.5, p.shape)
    if unbatched:
        B = 1
        x = rng.standard_normal((T, I))
        s_shapes = [(L * D, n) for n in m._state_sizes()]
        y_shape = (T, D * O)
        lengths = None
    else:
        x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
        s_shapes = [(L * D, B, n) for n in m._state_sizes()]
        y_shape = (B, T, D * O) if batch_first else (T, B, D * O)
        lengths = None
        if rng.random() < 0.6:
            lengths = rng.integers(0 if allow_zero_length else 1, T + 1, size=B)
    state = None
    if rng.random() < 0.6:
        state = [rng.standard_normal(s) for s in s_shapes]
    cast = lambda a: np.asarray(a, dtype)
    return dict(model=m, kind=kind, ref_cell=ref_cell(), x=cast(x),
                state=None if state is None else [cast(s) for s in state],
                lengths=lengths, unbatched=unbatched, T=T, B=B, H=H, L=L, D=D,
                dy=cast(rng.standard_normal(y_shape)),
                dfinal=[cast(rng.standard_normal(s)) for s in s_shapes])


def user_state(case, arrays):
    """The state in the form the layer takes: a single array or a tuple."""
    return arrays[0] if len(arrays) == 1 else tuple(arrays)


def as_list(state):
    return list(state) if isinstance(state, tuple) else [state]


def time_major(case, a):
    """A user-layout sequence array as (T, B, F)."""
    if case["unbatched"]:
        return a[:, None, :]
    return a.transpose(1, 0, 2) if case["model"].batch_first else a


def state3(case, s):
    """A user-layout state as (L·D, B, ·)."""
    return s.reshape(s.shape[0], case["B"], -1)


def run_nlstm(case):
    m = case["model"]
    m.zero_grad()
    state = None if case["state"] is None else user_state(case, case["state"])
    y, final = m.forward(case["x"], state, case["lengths"])
    dx, dinit = m.backward(case["dy"], *case["dfinal"])
    return dict(y=y, final=as_list(final), dx=dx, dinit=as_list(dinit), grads=m.grads)
