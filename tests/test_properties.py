"""Property-based tests (hypothesis): random configurations of every cell and option
against the float64 oracle and torch, and random garbage into every entry point, which
must raise TypeError/ValueError and change nothing (weights, gradients, state, the
training forward a backward would use).

Bounded for CI: few examples, derandomized (the same examples every run), no deadline
(the first examples compile kernels). The file takes well under a minute on 2 cores.
"""
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import nlstm  # noqa: E402
from cases import (ALL_KINDS, KINDS, TORCH_KINDS, as_list, run_nlstm, state3,  # noqa: E402
                   time_major, tolerance)
from test_vs_reference import rounding_spread, run_reference  # noqa: E402

BOUNDED = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = [np.float32, np.float64]


@st.composite
def configs(draw, kinds=tuple(ALL_KINDS), zero_lengths=True):
    """A layer of a random cell, options and sizes, with inputs, an optional state,
    optional lengths and upstream gradients in the user's layout (as ``cases.make_case``)."""
    kind = draw(st.sampled_from(kinds))
    dtype = draw(st.sampled_from(DTYPES))
    L, T, B, I, H = (draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 4)),
                     draw(st.integers(1, 5)), draw(st.integers(1, 6)))
    bi, batch_first, unbatched, bias = (draw(st.booleans()), draw(st.booleans()),
                                        draw(st.booleans()), draw(st.booleans()))
    cls, extra, ref_cell = ALL_KINDS[kind]
    if extra.get("proj_size") == -1:
        H = max(H, 2)
        extra = dict(extra, proj_size=draw(st.integers(1, H - 1)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m = cls(I, H, num_layers=L, bidirectional=bi, batch_first=batch_first, dtype=dtype,
            seed=int(rng.integers(1 << 30)), bias=bias, **extra)
    D, O = m.num_directions, m._out_size
    if unbatched:
        B, lengths = 1, None
        x_shape, s_shapes, y_shape = (T, I), [(L * D, n) for n in m._state_sizes()], (T, D * O)
    else:
        x_shape = (B, T, I) if batch_first else (T, B, I)
        s_shapes = [(L * D, B, n) for n in m._state_sizes()]
        y_shape = (B, T, D * O) if batch_first else (T, B, D * O)
        lengths = None
        if draw(st.booleans()):
            lengths = np.array(draw(st.lists(st.integers(0 if zero_lengths else 1, T),
                                             min_size=B, max_size=B)))
    cast = lambda a: np.asarray(a, dtype)
    state = [cast(rng.standard_normal(s)) for s in s_shapes] if draw(st.booleans()) else None
    return dict(model=m, kind=kind, ref_cell=ref_cell(), x=cast(rng.standard_normal(x_shape)),
                state=state, lengths=lengths, unbatched=unbatched, T=T, B=B, H=H, L=L, D=D,
                dy=cast(rng.standard_normal(y_shape)),
                dfinal=[cast(rng.standard_normal(s)) for s in s_shapes])


def _close(got, want, dtype, what, kind="", spread=0.0):
    np.testing.assert_allclose(got, want, err_msg=what, **tolerance(kind, dtype, want, spread))


@BOUNDED
@given(configs())
def test_every_cell_and_option_matches_the_float64_reference(case):
    """Outputs and final states of every cell and LSTM variant; every gradient for the
    cells the oracle differentiates (the variants' gradients: torch and finite differences
    in their own tests)."""
    m, dtype, kind = case["model"], case["model"].dtype.type, case["kind"]
    with_grads = case["kind"] in KINDS
    got = run_nlstm(case)
    want = run_reference(case, forward_only=not with_grads)
    spread = rounding_spread(case, want, forward_only=not with_grads)
    close = lambda g, w, name: _close(g, w, dtype, name, kind, spread[name])
    close(time_major(case, got["y"]), want["y"], "y")
    for i, (g, w) in enumerate(zip(got["final"], want["final"])):
        close(state3(case, g), w, f"final[{i}]")
    if with_grads:
        close(time_major(case, got["dx"]), want["dx"], "dx")
        for i, (g, w) in enumerate(zip(got["dinit"], want["dinit"])):
            close(state3(case, g), w, f"dinit[{i}]")
        for k, g in want["grads"].items():
            close(got["grads"][k], g, k)
    # Streaming one step at a time gives the sequence's outputs (unidirectional, full length).
    if not m.bidirectional and case["lengths"] is None:
        xt = time_major(case, case["x"])
        state = None if case["state"] is None else \
            (lambda s: s[0] if len(s) == 1 else tuple(s))([state3(case, s) for s in case["state"]])
        y_seq = time_major(case, got["y"])
        for t in range(case["T"]):
            y_t, state = m.step(xt[t], state)
            _close(y_t, y_seq[t], dtype, f"step {t}", kind, spread["y"])


@BOUNDED
@given(configs(kinds=TORCH_KINDS, zero_lengths=False))  # torch rejects length 0
def test_cells_match_torch(case):
    torch = pytest.importorskip("torch")  # noqa: F841
    from test_vs_torch import run_torch

    dtype = case["model"].dtype.type
    got, want = run_nlstm(case), run_torch(case)
    for name in ("y", "dx"):
        _close(got[name], want[name], dtype, name)
    for i, w in enumerate(want["final"]):
        _close(got["final"][i], w, dtype, f"final[{i}]")
    for i, w in enumerate(want.get("dinit", [])):
        _close(got["dinit"][i], w, dtype, f"dinit[{i}]")
    for k, g in want["grads"].items():
        _close(got["grads"][k], g, dtype, k)


# ---- garbage ------------------------------------------------------------------------------
MUTATIONS = ["nan", "inf", "overflow", "extra_axis", "drop_axis", "wider", "empty", "complex",
             "bool", "string", "object", "ragged", "scalar"]


def mutate(a: np.ndarray, how: str, dtype):
    """A bad version of the valid array ``a``, or None when ``how`` does not apply."""
    a = np.array(a, dtype=np.float64)
    if how == "nan":
        a.flat[a.size // 2] = np.nan
    elif how == "inf":
        a.flat[0] = -np.inf
    elif how == "overflow":
        if np.dtype(dtype) != np.float32:
            return None  # float64 holds every float64
        a.flat[-1] = 1e39
    elif how == "extra_axis":
        return a[None]
    elif how == "drop_axis":
        return a[0]
    elif how == "wider":
        return np.concatenate([a, a[..., :1]], axis=-1)
    elif how == "empty":
        return a[..., :0]
    elif how == "complex":
        return a.astype(complex)
    elif how == "bool":
        return a > 0
    elif how == "string":
        return a.astype(str)
    elif how == "object":
        return np.array([object()] * a.size, dtype=object).reshape(a.shape)
    elif how == "ragged":
        return [[1.0, 2.0], [3.0]]
    elif how == "scalar":
        return 1.5
    return a


def _state_of(arrays):
    return arrays[0] if len(arrays) == 1 else tuple(arrays)


def _fingerprint(layer, stream):
    parts = {**{"param " + k: v for k, v in layer.params.items()},
             **{"grad " + k: v for k, v in layer.grads.items()}}
    for i, s in enumerate(as_list(stream.state)):
        parts[f"stream state {i}"] = s
    return {k: np.array(v, copy=True) for k, v in parts.items()}


ENTRY_POINTS = ["call x", "call state", "forward x", "lengths", "backward dy", "backward dstate",
                "step x", "step state", "stream x", "stream reset", "load_state_dict"]


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(kind=st.sampled_from(list(ALL_KINDS)), dtype=st.sampled_from(DTYPES),
       entry=st.sampled_from(ENTRY_POINTS), how=st.sampled_from(MUTATIONS),
       which=st.integers(0, 5))
def test_garbage_into_every_entry_point_is_refused_and_changes_nothing(kind, dtype, entry, how,
                                                                        which):
    cls, extra, _ = ALL_KINDS[kind]
    if extra.get("proj_size") == -1:
        extra = dict(extra, proj_size=2)
    layer = cls(3, 4, num_layers=2, dtype=dtype, seed=7, **extra)
    rng = np.random.default_rng(which)
    T, B = 5, 3
    x = rng.standard_normal((T, B, 3)).astype(dtype)
    states = [rng.standard_normal(s).astype(dtype) for s in layer._state_shapes(B, False)]
    y, _ = layer.forward(x, train=True)
    dy = rng.standard_normal(y.shape).astype(dtype)
    layer.backward(dy)  # gradients worth keeping
    y, _ = layer.forward(x, train=True)  # a training forward that backward must still find
    stream = layer.stream(batch_size=B)
    stream(x[0])
    before = _fingerprint(layer, stream)
    s_i = which % len(states)

    def with_bad_state():
        bad = list(states)
        bad[s_i] = mutate(states[s_i], how, dtype)
        return None if bad[s_i] is None else _state_of(bad)

    if how == "drop_axis" and entry in ("call x", "forward x", "step x"):
        return  # one axis fewer is a valid unbatched input there
    if entry in ("call x", "forward x", "step x", "stream x", "backward dy"):
        base = {"step x": x[0], "stream x": x[0], "backward dy": dy}.get(entry, x)
        bad = mutate(base, how, dtype)
        call = {"call x": lambda: layer(bad), "forward x": lambda: layer.forward(bad, train=True),
                "step x": lambda: layer.step(bad), "stream x": lambda: stream(bad),
                "backward dy": lambda: layer.backward(bad)}[entry]
    elif entry == "lengths":
        bad = {"nan": [1.0, 2.0, 3.0], "inf": [-1, 2, 3], "overflow": [T + 1, 0, 0],
               "extra_axis": [[1, 2, 3]], "drop_axis": 2, "wider": [1, 2, 3, 4],
               "empty": [], "complex": np.array([1, 2, 3], complex), "string": ["1", "2", "3"],
               "bool": np.array([True, False, True]), "object": np.array([object()] * 3),
               "ragged": [[1], [2, 3]], "scalar": 1.5}[how]
        call = lambda: layer(x, lengths=bad)
    elif entry in ("call state", "step state", "stream reset"):
        bad = with_bad_state()
        call = {"call state": lambda: layer(x, bad),
                "step state": lambda: layer.step(x[0], bad),
                "stream reset": lambda: stream.reset(bad)}[entry]
    elif entry == "backward dstate":
        ds = [np.ones_like(s) for s in states]
        ds[s_i] = mutate(ds[s_i], how, dtype)
        bad = ds[s_i]
        call = lambda: layer.backward(dy, *ds)
    else:  # load_state_dict
        sd = layer.state_dict()
        key = sorted(sd)[which % len(sd)]
        sd[key] = bad = mutate(sd[key], how, dtype)
        call = lambda: layer.load_state_dict(sd)
    if bad is None:
        return  # the mutation does not apply here (float64 holds every float64)
    with pytest.raises((TypeError, ValueError)):
        call()
    after = _fingerprint(layer, stream)
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=f"{entry} ({how}) changed {k}")
    # The training forward is still there: its backward gives the gradients of a layer that
    # saw no garbage.
    twin = cls(3, 4, num_layers=2, dtype=dtype, seed=7, **extra)
    for t in (twin, layer):
        if t is twin:
            t.forward(x, train=True)
            t.backward(dy)
            t.forward(x, train=True)
        t.backward(dy)
    for k, g in twin.grads.items():
        np.testing.assert_array_equal(layer.grads[k], g, err_msg=f"{entry} ({how}): grad {k}")


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(how=st.sampled_from(MUTATIONS), entry=st.sampled_from(["predict", "fit X", "fit Y",
                                                              "fit lengths", "backward", "load"]))
def test_garbage_into_a_model_is_refused_and_changes_nothing(how, entry):
    model = nlstm.Sequential([nlstm.GRU(3, 4, batch_first=True, seed=0), nlstm.Linear(4, 2, seed=1)])
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 5, 3)).astype(np.float32)
    Y = rng.standard_normal((4, 2)).astype(np.float32)
    out, _ = model.forward(X, train=True)
    before = {k: v.copy() for k, v in {**model.params, **{"g" + k: g for k, g in model.grads.items()}}.items()}
    if entry == "predict":
        bad = mutate(X, how, np.float32)
        call = lambda: model.predict(bad)
    elif entry == "fit X":
        bad = mutate(X, how, np.float32)
        call = lambda: model.fit(bad, Y, epochs=1, verbose=0)
    elif entry == "fit Y":
        bad = mutate(Y, how, np.float32)
        if how in ("overflow",):
            return  # targets are checked where they count, after the cast (see test_model)
        call = lambda: model.fit(X, bad, epochs=1, verbose=0)
    elif entry == "fit lengths":
        bad = mutate(np.array([5.0, 4, 3, 2]), how, np.float32)
        call = lambda: model.fit(X, Y, lengths=bad, epochs=1, verbose=0)
    elif entry == "backward":
        bad = mutate(out, how, np.float32)
        call = lambda: model.backward(bad)
    else:
        sd = model.state_dict()
        sd["0.weight_hh_l0"] = bad = mutate(sd["0.weight_hh_l0"], how, np.float32)
        call = lambda: model.load_state_dict(sd)
    if bad is None:
        return
    with pytest.raises((TypeError, ValueError)):
        call()
    after = {**model.params, **{"g" + k: g for k, g in model.grads.items()}}
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=f"{entry} ({how}) changed {k}")
