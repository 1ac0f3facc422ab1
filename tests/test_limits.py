"""Edges that used to go silently wrong: values that overflow the layer's dtype, optimizer
steps that overflow, an interrupted backward, and thread counts past the machine."""
import numpy as np
import pytest

import nlstm

CELLS = [nlstm.LSTM, nlstm.GRU, nlstm.RNN]
HUGE = 1e39  # finite in float64, Inf in float32
RANGE = "outside float32's range"


def _snapshot(obj):
    return {k: v.copy() for k, v in {**{"p." + k: v for k, v in obj.params.items()},
                                     **{"g." + k: v for k, v in obj.grads.items()}}.items()}


def _unchanged(obj, before):
    now = _snapshot(obj)
    for k, v in before.items():
        np.testing.assert_array_equal(now[k], v, err_msg=k)


def _state(layer, B, value):
    shapes = layer._state_shapes(B, False)
    arrays = [np.full(s, value) for s in shapes]
    return arrays[0] if len(arrays) == 1 else tuple(arrays)


@pytest.mark.parametrize("cls", CELLS)
def test_overflowing_values_are_refused_at_every_entry_point(cls, rng):
    layer = cls(3, 4, num_layers=2, seed=0)
    x = rng.standard_normal((5, 2, 3))  # float64 into a float32 layer
    big = np.full((5, 2, 3), HUGE)
    y, s = layer.forward(x, train=True)
    layer.backward(np.ones_like(y))
    y, s = layer.forward(x, train=True)
    before = _snapshot(layer)

    def refused(call, name):
        with pytest.raises(ValueError, match=f"^{name} has values {RANGE}") as e:
            call()
        assert "NaN" not in str(e.value)
        _unchanged(layer, before)

    refused(lambda: layer(big), "input")
    refused(lambda: layer.forward(big, train=False), "input")
    label = layer._state_labels[0]
    refused(lambda: layer(x, _state(layer, 2, HUGE)), f"state {label}")
    refused(lambda: layer.backward(np.full(y.shape, HUGE)), "dy")
    dstate = [None] * len(layer._state_labels)
    dstate[0] = np.full(layer._state_shapes(2, False)[0], HUGE)
    refused(lambda: layer.backward(np.ones(y.shape), *dstate), "dh_n")
    refused(lambda: layer.step(np.full((2, 3), HUGE)), "x_t")
    refused(lambda: layer.step(np.ones((2, 3)), _state(layer, 2, HUGE)), f"state {label}")
    sd = {k: v.astype(np.float64) for k, v in layer.state_dict().items()}
    sd["weight_hh_l1"][0, 0] = HUGE
    refused(lambda: layer.load_state_dict(sd), r"state_dict\['weight_hh_l1'\]")
    # The training forward survived every refused call: its backward still runs.
    layer.backward(np.ones_like(y))
    # NaN keeps its own message.
    with pytest.raises(ValueError, match="input contains NaN or Inf"):
        layer(np.full((5, 2, 3), np.nan))


@pytest.mark.parametrize("cls", CELLS)
def test_stream_names_overflow_and_keeps_its_state(cls):
    layer = cls(3, 4, seed=0)
    stream = layer.stream()
    stream(np.ones(3))
    state = stream.state
    with pytest.raises(ValueError, match=f"^x_t has values {RANGE}") as e:
        stream(np.full(3, HUGE))
    assert "NaN" not in str(e.value)
    for a, b in zip(np.atleast_1d(stream.state), np.atleast_1d(state)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=RANGE):
        stream.reset(_state(layer, 1, HUGE)[0] if cls is not nlstm.LSTM else
                     tuple(a[:, 0] for a in _state(layer, 1, HUGE)))


def test_float64_layers_take_what_float64_holds():
    layer = nlstm.RNN(2, 3, dtype=np.float64, seed=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer(np.full((2, 2), np.inf))
    layer.load_state_dict({k: np.full(v.shape, 1e300) for k, v in layer.state_dict().items()})
    assert (layer.params["weight_hh_l0"] == 1e300).all()


def test_model_and_linear_refuse_overflow(rng):
    model = nlstm.Sequential([nlstm.GRU(3, 4, batch_first=True, seed=0), nlstm.Linear(4, 1, seed=1)])
    before = _snapshot(model)
    X = np.full((2, 5, 3), HUGE)
    for call in (lambda: model.predict(X), lambda: model(X),
                 lambda: model.fit(X, np.zeros((2, 1)), epochs=1, verbose=0)):
        with pytest.raises(ValueError, match=RANGE):
            call()
    sd = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    sd["1.bias"][0] = HUGE
    with pytest.raises(ValueError, match=RANGE):
        model.load_state_dict(sd)
    lin = model.layers[1]
    with pytest.raises(ValueError, match=RANGE):
        lin(np.full((2, 4), HUGE))
    with pytest.raises(ValueError, match=RANGE):
        lin.load_state_dict({"weight": np.full((1, 4), HUGE), "bias": np.zeros(1)})
    _unchanged(model, before)


@pytest.mark.parametrize("make", [
    lambda m: nlstm.SGD(m, lr=1e10, momentum=0.9, weight_decay=1e-3),
    lambda m: nlstm.SGD(m, lr=1e10, momentum=0.9, nesterov=True),
    lambda m: nlstm.SGD(m, lr=1e10),
    lambda m: nlstm.Adam(m, lr=1e-3, weight_decay=1e-2),
    lambda m: nlstm.AdamW(m, lr=1e-3),
], ids=["sgd-momentum", "sgd-nesterov", "sgd", "adam", "adamw"])
def test_an_optimizer_step_that_overflows_changes_nothing(make):
    layer = nlstm.LSTM(3, 4, seed=0)
    opt = make(layer)
    for g in layer.grads.values():
        g.fill(0.01)
    opt.step()  # a normal step first: buffers hold real values
    params = {k: v.copy() for k, v in layer.params.items()}
    state = opt.state_dict()
    for g in layer.grads.values():
        g.fill(1e30)  # 1e30·1e10 and (1e30)² overflow float32
    with pytest.raises(FloatingPointError, match="not finite in float32.*nothing was changed"):
        opt.step()
    for k, v in layer.params.items():
        np.testing.assert_array_equal(v, params[k], err_msg=k)
    after = opt.state_dict()
    assert after["steps"] == state["steps"] == 1
    for k, s in state["state"].items():
        for b, a in s.items():
            np.testing.assert_array_equal(after["state"][k][b], a, err_msg=f"{k}.{b}")
    for g in layer.grads.values():
        g.fill(0.01)
    opt.step()  # and it carries on from where it was
    assert opt.steps == 2


class Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("cls", CELLS)
def test_an_interrupted_backward_leaves_the_gradients_as_they_were(cls, rng, monkeypatch):
    """Layer 1's gradients are accumulated before layer 0's step raises; they are put back."""
    layer = cls(3, 5, num_layers=2, bidirectional=True, seed=0)
    x = rng.standard_normal((6, 2, 3)).astype(np.float32)
    y, _ = layer.forward(x, train=True)
    layer.backward(np.ones_like(y))  # non-zero gradients to keep
    y, _ = layer.forward(x, train=True)
    before = {k: g.copy() for k, g in layer.grads.items()}
    real = type(layer)._input_grads

    def stop_in_layer_0(self, ws, k, d, *args, **kw):
        if k == 0 and d == 1:
            raise Interrupt
        return real(self, ws, k, d, *args, **kw)

    monkeypatch.setattr(type(layer), "_input_grads", stop_in_layer_0)
    with pytest.raises(Interrupt):
        layer.backward(np.ones_like(y))
    changed = [k for k in before if not np.array_equal(layer.grads[k], before[k])]
    assert not changed, f"gradients changed by an interrupted backward: {changed}"
    # Without the interruption the same backward does change them (the test can fail).
    monkeypatch.setattr(type(layer), "_input_grads", real)
    y, _ = layer.forward(x, train=True)
    layer.backward(np.ones_like(y))
    assert all(not np.array_equal(layer.grads[k], before[k]) for k in before)


def test_an_interrupted_model_backward_leaves_every_layer_as_it_was(rng, monkeypatch):
    model = nlstm.Sequential([nlstm.LSTM(3, 5, batch_first=True, seed=0), nlstm.Linear(5, 2, seed=1)])
    x = rng.standard_normal((4, 6, 3)).astype(np.float32)
    out, _ = model.forward(x, train=True)
    model.backward(np.ones_like(out))
    out, _ = model.forward(x, train=True)
    before = {k: g.copy() for k, g in model.grads.items()}

    def fail(*a, **k):
        raise Interrupt

    monkeypatch.setattr(model.layers[0], "_backward_dir", fail)  # after the head's gradients
    with pytest.raises(Interrupt):
        model.backward(np.ones_like(out))
    for k, g in model.grads.items():
        np.testing.assert_array_equal(g, before[k], err_msg=k)


def test_set_num_threads_limits():
    import numba
    cpus = nlstm._threads.cpus_available()
    limit = min(nlstm._threads.MAX_THREADS_PER_CPU * cpus, numba.config.NUMBA_NUM_THREADS)
    before = nlstm.get_num_threads()
    try:
        for bad in (10**6, 2**31, limit + 1):
            with pytest.raises(ValueError, match=f"from 1 to {limit}.*got {bad}"):
                nlstm.set_num_threads(bad)
            assert nlstm.get_num_threads() == before
        for bad in (0, -1, 2.0, 1.5, True, "2", None):
            with pytest.raises(ValueError, match="n must be an int"):
                nlstm.set_num_threads(bad)
        nlstm.set_num_threads(np.int64(1))
        assert nlstm.get_num_threads() == 1
        nlstm.set_num_threads(limit)
        assert nlstm.get_num_threads() == limit
    finally:
        nlstm.set_num_threads(before)
