"""Randomized LSTM configurations shared by the reference and torch tests."""
import numpy as np

import nlstm

TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}


def make_case(seed, dtype, allow_zero_length=True):
    """A random configuration with inputs and upstream gradients, in the user's layout."""
    rng = np.random.default_rng(seed)
    L = int(rng.integers(1, 4))
    bi = bool(rng.integers(0, 2))
    batch_first = bool(rng.integers(0, 2))
    unbatched = rng.random() < 0.2
    T, B, I, H = (int(rng.integers(1, 7)), int(rng.integers(1, 5)), int(rng.integers(1, 6)),
                  int(rng.integers(1, 7)))
    D = 2 if bi else 1
    m = nlstm.LSTM(I, H, num_layers=L, bidirectional=bi, batch_first=batch_first, dtype=dtype,
                   seed=seed, bias=rng.random() < 0.85)
    if unbatched:
        B = 1
        x = rng.standard_normal((T, I))
        s_shape = (L * D, H)
        y_shape = (T, D * H)
        lengths = None
    else:
        x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
        s_shape = (L * D, B, H)
        y_shape = (B, T, D * H) if batch_first else (T, B, D * H)
        lengths = None
        if rng.random() < 0.6:
            lengths = rng.integers(0 if allow_zero_length else 1, T + 1, size=B)
    state = None
    if rng.random() < 0.6:
        state = (rng.standard_normal(s_shape), rng.standard_normal(s_shape))
    up = (rng.standard_normal(y_shape), rng.standard_normal(s_shape), rng.standard_normal(s_shape))
    cast = lambda a: None if a is None else np.asarray(a, dtype)
    return dict(model=m, x=cast(x), state=None if state is None else tuple(map(cast, state)),
                lengths=lengths, unbatched=unbatched, T=T, B=B, H=H, L=L, D=D,
                dy=cast(up[0]), dh_n=cast(up[1]), dc_n=cast(up[2]))


def time_major(case, a):
    """A user-layout sequence array as (T, B, F)."""
    if case["unbatched"]:
        return a[:, None, :]
    return a.transpose(1, 0, 2) if case["model"].batch_first else a


def state3(case, s):
    """A user-layout state as (L·D, B, H)."""
    return s.reshape(s.shape[0], case["B"], case["H"])


def run_nlstm(case):
    m = case["model"]
    m.zero_grad()
    y, (h, c) = m.forward(case["x"], case["state"], case["lengths"])
    dx, (dh0, dc0) = m.backward(case["dy"], case["dh_n"], case["dc_n"])
    return dict(y=y, h_n=h, c_n=c, dx=dx, dh0=dh0, dc0=dc0, grads=m.grads)
