"""Optimizers, clipping and schedules: against hand-computed steps and torch.optim."""
import math
import tracemalloc

import numpy as np
import pytest

import nlstm

P0 = np.array([0.5, -1.5, 2.0])
G1 = np.array([0.1, -0.2, 0.3])
G2 = np.array([-0.4, 0.05, 0.6])


def two_steps(opt_cls, **kw):
    p = {"w": P0.copy()}
    g = {"w": np.zeros(3)}
    opt = opt_cls(p, grads=g, **kw)
    out = []
    for grad in (G1, G2):
        g["w"][:] = grad
        opt.step()
        out.append(p["w"].copy())
    return out


def test_sgd_plain_and_weight_decay_by_hand():
    s1, s2 = two_steps(nlstm.SGD, lr=0.1)
    np.testing.assert_allclose(s1, P0 - 0.1 * G1, rtol=1e-15, err_msg="step 1")
    np.testing.assert_allclose(s2, P0 - 0.1 * G1 - 0.1 * G2, rtol=1e-15, err_msg="step 2")
    s1, _ = two_steps(nlstm.SGD, lr=0.1, weight_decay=0.01)
    np.testing.assert_allclose(s1, P0 - 0.1 * (G1 + 0.01 * P0), rtol=1e-15, err_msg="decay")


def test_sgd_momentum_and_nesterov_by_hand():
    lr, m = 0.1, 0.9
    s1, s2 = two_steps(nlstm.SGD, lr=lr, momentum=m)
    buf1 = G1
    buf2 = m * buf1 + G2
    np.testing.assert_allclose(s1, P0 - lr * buf1, rtol=1e-15, err_msg="momentum 1")
    np.testing.assert_allclose(s2, P0 - lr * buf1 - lr * buf2, rtol=1e-14, err_msg="momentum 2")
    s1, s2 = two_steps(nlstm.SGD, lr=lr, momentum=m, nesterov=True)
    np.testing.assert_allclose(s1, P0 - lr * (G1 + m * buf1), rtol=1e-15, err_msg="nesterov 1")
    np.testing.assert_allclose(s2, s1 - lr * (G2 + m * buf2), rtol=1e-14, err_msg="nesterov 2")
    s1, s2 = two_steps(nlstm.SGD, lr=lr, momentum=m, dampening=0.5)
    np.testing.assert_allclose(s2, s1 - lr * (m * G1 + 0.5 * G2), rtol=1e-14, err_msg="dampening")


def adam_by_hand(lr, b1, b2, eps, wd=0.0, decoupled=False):
    p, m, v = P0.copy(), np.zeros(3), np.zeros(3)
    out = []
    for t, g in enumerate((G1, G2), start=1):
        if decoupled:
            p = p * (1 - lr * wd)
        elif wd:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
        out.append(p)
    return out


@pytest.mark.parametrize("cls, wd", [(nlstm.Adam, 0.0), (nlstm.Adam, 0.1), (nlstm.AdamW, 0.1)])
def test_adam_and_adamw_by_hand(cls, wd):
    got = two_steps(cls, lr=0.01, betas=(0.8, 0.99), eps=1e-3, weight_decay=wd)
    want = adam_by_hand(0.01, 0.8, 0.99, 1e-3, wd, decoupled=cls is nlstm.AdamW)
    for i, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, rtol=1e-13, err_msg=f"{cls.__name__} step {i + 1}")
    assert not np.allclose(got[0], P0)


TORCH_CASES = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.05)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.02, weight_decay=0.1, betas=(0.7, 0.95))),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name, kw", TORCH_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(TORCH_CASES)])
def test_matches_torch_optim(name, kw, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    shapes = {"a": (4, 3), "b": (3,)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    ours = getattr(nlstm, name)(params, grads=grads, **kw)
    theirs = getattr(torch.optim, name)(list(tparams.values()), **kw)
    for step in range(6):
        for k in shapes:
            g = rng.standard_normal(shapes[k]).astype(dtype)
            grads[k][:] = g
            tparams[k].grad = torch.tensor(g)
        ours.step()
        theirs.step()
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)
    for k in shapes:
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), **tol, err_msg=k)


def test_step_allocates_no_arrays():
    # H=128: the smallest parameter (2 KB) is larger than the ~1 KB a NumPy reduction keeps
    # while it runs (the step's finiteness check, min and max), which is no array.
    m = nlstm.LSTM(8, 128, num_layers=2, seed=0)
    for opt in (nlstm.SGD(m, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
                nlstm.Adam(m, lr=1e-3, weight_decay=1e-4), nlstm.AdamW(m)):
        for g in m.grads.values():
            g.fill(0.01)
        opt.step()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            for _ in range(3):
                opt.step()
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        smallest = min(p.nbytes for p in m.params.values())
        assert peak < smallest, f"{type(opt).__name__}.step allocated {peak} bytes"


def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(1)
    grads = {"a": rng.standard_normal((5, 4)), "b": rng.standard_normal(7)}
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
    orig = {k: v.copy() for k, v in grads.items()}
    assert nlstm.clip_grad_norm(grads, 2 * norm) == pytest.approx(norm, rel=1e-12)
    for k in grads:
        np.testing.assert_array_equal(grads[k], orig[k], err_msg=k)  # under the limit: unchanged
    assert nlstm.clip_grad_norm(grads, 1.0) == pytest.approx(norm, rel=1e-12)
    new = math.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
    assert new == pytest.approx(1.0, rel=1e-5)
    torch = pytest.importorskip("torch")
    ts = [torch.tensor(v, requires_grad=True) for v in orig.values()]
    for t, v in zip(ts, orig.values()):
        t.grad = torch.tensor(v)
    torch.nn.utils.clip_grad_norm_(ts, 1.0)
    for (k, g), t in zip(grads.items(), ts):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-12, err_msg=k)


def test_schedules_match_torch():
    torch = pytest.importorskip("torch")
    w = {"w": np.zeros(2)}
    for ours_fn, theirs_fn in [
        (lambda o: nlstm.StepLR(o, step_size=3, gamma=0.5),
         lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5)),
        (lambda o: nlstm.CosineLR(o, T_max=7, eta_min=0.01),
         lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=7, eta_min=0.01)),
    ]:
        opt = nlstm.SGD(w, grads={"w": np.zeros(2)}, lr=0.3)
        topt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.3)
        s, ts = ours_fn(opt), theirs_fn(topt)
        for epoch in range(8):  # to T_max: after it torch's cosine restarts, ours stays at eta_min
            assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12), (type(s).__name__, epoch)
            topt.step()
            s.step()
            ts.step()


def test_cosine_warmup_and_end():
    opt = nlstm.Adam({"w": np.zeros(1)}, grads={"w": np.zeros(1)}, lr=1.0)
    s = nlstm.CosineLR(opt, T_max=10, warmup=2)
    lrs = [opt.lr] + [s.step() for _ in range(12)]
    np.testing.assert_allclose(lrs[:3], [1 / 3, 2 / 3, 1.0], rtol=1e-12, err_msg="warm-up")
    assert lrs[10] == pytest.approx(0.0, abs=1e-12) and lrs[12] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_state_dict_resumes_exactly():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(4) for _ in range(6)]

    def run(split):
        p, g = {"w": np.ones(4)}, {"w": np.zeros(4)}
        opt = nlstm.Adam(p, grads=g, lr=0.1)
        for i, gi in enumerate(grads):
            if i == split:
                saved = opt.state_dict()
                opt = nlstm.Adam(p, grads=g, lr=0.1)
                opt.load_state_dict(saved)
            g["w"][:] = gi
            opt.step()
        return p["w"]

    np.testing.assert_array_equal(run(3), run(None))


def test_bad_arguments():
    p, g = {"w": np.zeros(3)}, {"w": np.zeros(3)}
    cases = [
        (lambda: nlstm.Adam(p, grads={"v": np.zeros(3)}), ValueError, "same keys"),
        (lambda: nlstm.Adam(p, grads={"w": np.zeros(4)}), ValueError, r"grads\['w'\] must have shape"),
        (lambda: nlstm.Adam(p, grads={"w": np.zeros(3, np.float32)}), TypeError, "dtype"),
        (lambda: nlstm.Adam(p, grads=g, lr=0), ValueError, "lr"),
        (lambda: nlstm.Adam(p, grads=g, lr="fast"), TypeError, "lr"),
        (lambda: nlstm.Adam(p, grads=g, betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
        (lambda: nlstm.SGD(p, grads=g, nesterov=True), ValueError, "nesterov"),
        (lambda: nlstm.SGD(p), TypeError, "params must be a layer"),
        (lambda: nlstm.SGD({}, grads={}), ValueError, "empty"),
        (lambda: nlstm.clip_grad_norm(g, 0), ValueError, "max_norm"),
        (lambda: nlstm.StepLR(nlstm.SGD(p, grads=g), step_size=0), ValueError, "step_size"),
        (lambda: nlstm.CosineLR(object(), T_max=3), TypeError, "optimizer"),
    ]
    for call, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            call()
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        nlstm.SGD({"w": ro}, grads={"w": np.zeros(3)})
