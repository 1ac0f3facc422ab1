"""``python -m bench.extra``: issue 15's targets that are not a table of peers.

Sections (``--sections``, default all):
  step       streaming latency of ``lstm.step`` and of a stream from Python (B=1, I=32,
             H=128, state carried)
  coldstart  fresh process: import + first S forward, Numba cache warm (nlstm and torch)
  compile    first-ever compile of the float32 inference path (empty NLSTM_CACHE_DIR and
             NUMBA_CACHE_DIR),
             and of the training path
  rss        peak RSS of a process that imports the engine and runs S inference
  trainmem   training memory in bytes per T·B·H (tracemalloc, and peak RSS against torch)
  threads    same results at 1 and 2 threads (largest difference, bitwise or not)
  breakdown  where nlstm's time goes per case: the recurrence (kernel threads), the
             whole-sequence matrix products, and the rest (Python, checks, copies)

Writes ``<out>/extra.json`` and ``<out>/extra.md``.
"""
from __future__ import annotations

import os as _os
import sys as _sys

if __name__ == "__main__" and not __package__:  # run as a file: bench/extra.py (PEP 366)
    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    __package__ = "bench"

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ["step", "coldstart", "compile", "rss", "trainmem", "threads", "breakdown"]
# Issue 15's: a step through a Stream and through lstm.step; cold start at most this share
# of torch's; first-ever compile; peak RSS.
TARGETS = dict(stream_us=5.0, step_us=8.0, coldstart_share=0.5, compile_s=15.0, rss_mb=150.0)


# ---- fresh processes ----------------------------------------------------------------------
# Peak RSS is read from /proc/self/status (VmHWM): ru_maxrss is carried across exec on
# Linux, so a child started from this (large) process would report our peak, not its own.
_HWM = """
def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))  # KiB
"""

_S_NLSTM = _HWM + """
import time, json
t0 = time.perf_counter()
import numpy as np
import nlstm
t1 = time.perf_counter()
m = nlstm.LSTM(32, 64, seed=0)
x = np.random.default_rng(0).standard_normal((100, 1, 32)).astype(np.float32)
m(x)
t2 = time.perf_counter()
if TRAIN:
    y, _ = m.forward(x, train=True)
    m.backward(np.ones_like(y))
t3 = time.perf_counter()
print(json.dumps(dict(import_s=t1 - t0, first_forward_s=t2 - t1, total_s=t2 - t0,
                      train_s=t3 - t2, maxrss=hwm())))
"""

_S_TORCH = _HWM + """
import time, json
t0 = time.perf_counter()
import numpy as np
import torch
t1 = time.perf_counter()
m = torch.nn.LSTM(32, 64)
x = torch.from_numpy(np.random.default_rng(0).standard_normal((100, 1, 32)).astype(np.float32))
with torch.inference_mode():
    m(x)
t2 = time.perf_counter()
print(json.dumps(dict(import_s=t1 - t0, first_forward_s=t2 - t1, total_s=t2 - t0,
                      maxrss=hwm())))
"""

_S_NUMPY = _HWM + """
import time, json
t0 = time.perf_counter()
import numpy as np
x = np.random.default_rng(0).standard_normal((100, 1, 32)).astype(np.float32)
t1 = time.perf_counter()
print(json.dumps(dict(import_s=t1 - t0, first_forward_s=0.0, total_s=t1 - t0,
                      maxrss=hwm())))
"""


def _fresh(script: str, env_extra: Dict = None, train: bool = False) -> Dict:
    """Run a script in a new interpreter; its JSON line plus the whole process's wall time."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(env_extra or {})
    code = script.replace("TRAIN", "True" if train else "False")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"fresh process failed: {p.stderr[-800:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["process_s"] = wall
    if "maxrss" in out:
        out["maxrss_mb"] = out["maxrss"] / 1024.0  # KiB
    return out


def _median_runs(script, n, **kw) -> Dict:
    runs = [_fresh(script, **kw) for _ in range(n)]
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))]
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {"runs": n}


def section_coldstart(args) -> Dict:
    _fresh(_S_NLSTM)  # make sure the cache is warm (this may compile)
    out = {"nlstm": _median_runs(_S_NLSTM, args.fresh_runs)}
    try:
        import importlib.util
        if importlib.util.find_spec("torch"):
            _fresh(_S_TORCH)
            out["torch"] = _median_runs(_S_TORCH, max(1, args.fresh_runs - 2))
    except RuntimeError as e:
        out["torch"] = {"error": str(e)}
    torch_s = out.get("torch", {}).get("total_s")
    out["target_s"] = None if torch_s is None else TARGETS["coldstart_share"] * torch_s
    out["met"] = out["target_s"] is not None and out["nlstm"]["total_s"] <= out["target_s"]
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        # nlstm runs here from its checkout, whose sources then compile to bytecode in every
        # process (torch's came compiled from its wheel); an installed nlstm has them
        # compiled too. Both engines again with bytecode kept in a folder of their own.
        import tempfile
        with tempfile.TemporaryDirectory() as pyc:
            env = {"PYTHONPYCACHEPREFIX": pyc, "PYTHONDONTWRITEBYTECODE": ""}
            _fresh(_S_NLSTM, env_extra=env)
            out["nlstm_bytecode"] = _median_runs(_S_NLSTM, args.fresh_runs, env_extra=env)
            if "total_s" in out.get("torch", {}):
                try:
                    _fresh(_S_TORCH, env_extra=env)
                    out["torch_bytecode"] = _median_runs(_S_TORCH, max(1, args.fresh_runs - 2),
                                                         env_extra=env)
                except RuntimeError as e:
                    out["torch_bytecode"] = {"error": str(e)}
    return out


def section_compile(args) -> Dict:
    """Import + first S forward (then a first training step) with an empty Numba cache."""
    runs = []
    for _ in range(args.compile_runs):
        with tempfile.TemporaryDirectory(prefix="nlstm-numba-") as d:
            # nlstm keeps its kernels' cache under NLSTM_CACHE_DIR (else a user cache
            # directory); NUMBA_CACHE_DIR covers anything compiled outside nlstm.kernels
            r = _fresh(_S_NLSTM, {"NUMBA_CACHE_DIR": d, "NLSTM_CACHE_DIR": d}, train=True)
            n_files = sum(len(f) for _, _, f in os.walk(d))
            r["cache_files_written"] = n_files
            runs.append(r)
    out = dict(runs=runs,
               first_inference_s=statistics.median(r["total_s"] for r in runs),
               first_train_extra_s=statistics.median(r["train_s"] for r in runs),
               target_s=TARGETS["compile_s"])
    out["met"] = out["first_inference_s"] <= TARGETS["compile_s"]
    if not any(r["cache_files_written"] for r in runs):
        out["warning"] = ("nothing was written to NUMBA_CACHE_DIR: nlstm may keep its cache "
                          "elsewhere, so this may not have been a first-ever compile")
    return out


# Numba's own floor: one trivial jitted function, loaded from a warm on-disk cache.
_NUMBA_FLOOR = _HWM + """
import json, os, sys
sys.path.insert(0, os.environ["NLSTM_FLOOR_DIR"])
import numpy as np
import floor_fn
floor_fn.f(np.zeros(3))
print(json.dumps(dict(maxrss=hwm())))
"""


def _numba_floor_mb() -> float:
    """Peak RSS of a process whose only compiled code is ``a.sum()`` (cache warm)."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "floor_fn.py"), "w") as f:
            f.write("import numba\n\n@numba.njit(cache=True)\ndef f(a):\n    return a.sum()\n")
        env = dict(NLSTM_FLOOR_DIR=d, NUMBA_CACHE_DIR=os.path.join(d, "cache"))
        _fresh(_NUMBA_FLOOR, env)  # fills the cache
        return _median_runs(_NUMBA_FLOOR, 3, env_extra=env)["maxrss_mb"]


def section_rss(args) -> Dict:
    out = {"python+numpy": _median_runs(_S_NUMPY, 3)["maxrss_mb"],
           "numba alone (one trivial cached @njit function)": _numba_floor_mb(),
           "nlstm": _median_runs(_S_NLSTM, 3)["maxrss_mb"]}
    try:
        out["torch"] = _median_runs(_S_TORCH, 2)["maxrss_mb"]
    except RuntimeError:
        pass
    out["target_mb"] = TARGETS["rss_mb"]
    out["met"] = out["nlstm"] <= TARGETS["rss_mb"]
    return out


# ---- in-process ---------------------------------------------------------------------------
def section_step(args) -> Dict:
    import nlstm
    from .timing import time_chunked
    m = nlstm.LSTM(32, 128, seed=0)
    x = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
    box = [None]

    def batched():
        _, box[0] = m.step(x, box[0])

    x1 = x[0]
    box1 = [None]

    def unbatched():
        _, box1[0] = m.step(x1, box1[0])

    stream, stream1 = m.stream(batch_size=1), m.stream()
    st = time_chunked({"step (1, I)": batched, "step (I,)": unbatched,
                       "stream (1, I)": lambda: stream(x), "stream (I,)": lambda: stream1(x1)},
                      repeat=args.repeat, chunk_s=0.2)
    out = {k: v.median * 1e6 for k, v in st.items()}
    out["target_us"] = TARGETS["step_us"]
    out["stream_target_us"] = TARGETS["stream_us"]
    # one step from Python with the state carried, by each public way
    out["met"] = (out["step (1, I)"] <= TARGETS["step_us"]
                  and out["stream (1, I)"] <= TARGETS["stream_us"])
    # how much of it is the kernel call itself (dispatch included) versus Python around it;
    # a fresh layer, whose cached step plan picks up the clock's wrapped kernels
    m2 = nlstm.LSTM(32, 128)
    m2.load_state_dict(m.state_dict())
    box2 = [None]
    with KernelClock() as clk:
        for _ in range(2000):
            _, box2[0] = m2.step(x, box2[0])
    out["kernel_us"] = clk.kernel_s / 2000 * 1e6 if clk.ok else None
    out["floor_us"] = 2.0 * 4 * 128 * (32 + 128) / 1e9 * 1e6 / max(args.gflops, 1e-9)
    return out


def section_threads(args) -> Dict:
    import nlstm
    from .grid import GRID, make_problem
    out = {}
    for cname in ("M", "ragged", "M-bi2", "L"):
        case = GRID[cname]
        prob = make_problem(case)
        m = nlstm.LSTM(case.I, case.H, num_layers=case.layers, bidirectional=case.bidirectional)
        m.load_state_dict(prob.params)
        res = {}
        for n in (1, 2):
            nlstm.set_num_threads(n)
            y, (h, c) = m(prob.x, lengths=prob.lengths)
            m.zero_grad()
            yt, _ = m.forward(prob.x, lengths=prob.lengths, train=True)
            dx, _ = m.backward(np.ones_like(yt))
            res[n] = [y, h, c, dx] + [g.copy() for g in m.grads.values()]
        diffs = [float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))
                 for a, b in zip(res[1], res[2])]
        out[cname] = dict(max_rel_diff=max(diffs),
                          bitwise=all(np.array_equal(a, b) for a, b in zip(res[1], res[2])))
    nlstm.set_num_threads(args.threads)
    out["met"] = all(v["max_rel_diff"] < 1e-5 for v in out.values() if isinstance(v, dict))
    return out


def section_trainmem(args) -> Dict:
    import tracemalloc
    import nlstm
    from .grid import GRID, make_problem
    out = {}
    for cname in ("M", "L", "M-bi2", "long"):
        case = GRID[cname]
        prob = make_problem(case)
        m = nlstm.LSTM(case.I, case.H, num_layers=case.layers, bidirectional=case.bidirectional)
        m.load_state_dict(prob.params)
        dy = np.ones((case.T, case.B, case.D * case.H), np.float32)
        # load (or compile) the kernels first: compiler allocations are not training memory
        y, _ = m.forward(prob.x[:2, :1], train=True)
        m.backward(np.ones_like(y))
        tracemalloc.start()
        y, _ = m.forward(prob.x, train=True)
        m.backward(dy)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        tbh = case.T * case.B * case.H * case.layers * case.D
        out[cname] = dict(peak_bytes=peak, bytes_per_TBH=peak / tbh,
                          note="T·B·H counted per layer and direction")
    out["rss"] = _trainmem_rss()
    return out


_TRAIN_RSS = _HWM + """
import json, numpy as np
T, B, I, H = 200, 64, 256, 256
x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
ENGINE
before = hwm()
step()
after = hwm()
print(json.dumps(dict(delta_bytes=(after - before) * 1024, per_TBH=(after - before) * 1024 / (T * B * H))))
"""
_TRAIN_RSS_NLSTM = """
import nlstm
m = nlstm.LSTM(I, H, seed=0)
m(x[:2])  # compile/load the kernels before the measurement
y, _ = m.forward(x[:2], train=True); m.backward(np.ones_like(y))
def step():
    y, _ = m.forward(x, train=True)
    m.backward(np.ones_like(y))
"""
_TRAIN_RSS_TORCH = """
import torch
torch.set_num_threads(2)
m = torch.nn.LSTM(I, H)
xt = torch.from_numpy(x).requires_grad_(True)
m(xt[:2])[0].sum().backward()
def step():
    m(xt)[0].sum().backward()
"""


def _trainmem_rss() -> Dict:
    out = {"size": "T=200 B=64 I=256 H=256, peak RSS growth over one training step"}
    for name, body in (("nlstm", _TRAIN_RSS_NLSTM), ("torch", _TRAIN_RSS_TORCH)):
        try:
            out[name] = _fresh(_TRAIN_RSS.replace("ENGINE", body))["per_TBH"]
        except (RuntimeError, KeyError) as e:
            out[name] = f"failed: {e}"[:200]
    return out


class KernelClock:
    """Time spent in nlstm's recurrence while active, measured from the calling thread.

    Wraps ``nlstm._threads.run_rows`` (the recurrence over the rows: its wall time; not
    the whole-sequence products on the panel tiles, which run through it too),
    ``run_units`` (a one-row batch's recurrence split by hidden units) and every
    Numba dispatcher in ``nlstm.kernels.*`` (kernel calls made outside run_rows, e.g. by
    ``step``). Diagnostic only: relies on those internals and reports ``ok=False`` when
    they are not there. Kernels must already be compiled when it is entered.
    """

    def __enter__(self):
        self.kernel_s = 0.0
        self.calls = 0
        self._undo = []
        self.ok = False
        try:
            import numba.core.registry
            import nlstm._threads as thr
            local = threading.local()
            clock = self
            main = threading.main_thread()

            def timed(fn):
                def wrapper(*a, **k):
                    # workers run inside a run_rows the main thread is already timing
                    if getattr(local, "inside", False) or threading.current_thread() is not main:
                        return fn(*a, **k)
                    local.inside = True
                    t0 = time.perf_counter()
                    try:
                        return fn(*a, **k)
                    finally:
                        clock.kernel_s += time.perf_counter() - t0
                        clock.calls += 1
                        local.inside = False
                return wrapper

            from nlstm.kernels import parallel
            rows = timed(thr.run_rows)
            untimed = thr.run_rows

            products = (parallel.project_panels, parallel.project_ragged_panels,
                        parallel.project_narrow, parallel.weight_grad_panels,
                        parallel.nonfinite)
            # the packing of the weights counts as kernel time (as its calls on the calling
            # thread, which go to the split's own kernel, not through run_rows)
            for name in ("pack_gates", "pack_panels", "pack_panels_of_transpose"):
                split = getattr(parallel, name)
                self._patch(parallel, name, parallel.Split(timed(split.serial), split.parallel))

            def run_rows(B, work, split, *a, **k):  # the whole-sequence products are not
                if split in products:  # the recurrence
                    return untimed(B, work, split, *a, **k)
                return rows(B, work, split, *a, **k)

            self._patch(thr, "run_rows", run_rows)
            self._patch(thr, "run_units", timed(thr.run_units))  # one-row unit split
            for name, mod in list(sys.modules.items()):
                if not name.startswith("nlstm.kernels") or mod is None:
                    continue
                for attr, val in list(vars(mod).items()):
                    if isinstance(val, numba.core.registry.CPUDispatcher):
                        self._patch(mod, attr, timed(val))
            self.ok = True
        except Exception:
            self.__exit__()
        return self

    def _patch(self, obj, attr, new):
        self._undo.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, new)

    def __exit__(self, *exc):
        for obj, attr, old in reversed(self._undo):
            setattr(obj, attr, old)
        self._undo = []
        return False


def _gemm_runner(shapes):
    """A call doing the whole-sequence products the layer needs, standalone, the way nlstm
    runs them: a product of at least ``tuning.SMALL_GEMM`` multiply-adds on nlstm's panel
    tiles (``project_panels``), rows split over nlstm's threads; a smaller one by one NumPy
    ``matmul`` on the calling thread. b is packed once, before the timed calls (nlstm packs
    its weights at every call: that packing is not in this time). Every product here is a
    plain a @ b on ``project_panels``: nlstm's weight gradients run on
    ``weight_grad_panels`` (the same tiles, columns split over the threads, dg packed
    inside), so those are an approximation."""
    from nlstm import _threads
    from nlstm.kernels import parallel as P, tiles, tuning
    from nlstm.recurrent import aligned_empty
    rng = np.random.default_rng(0)
    mats = [(rng.standard_normal(a).astype(np.float32), rng.standard_normal(b).astype(np.float32))
            for a, b in shapes]
    outs = [np.empty((a.shape[0], b.shape[1]), np.float32) for a, b in mats]
    no_bias = np.empty(0, np.float32)
    no_rows = np.empty(0, np.int64)
    packed = []
    for a, b in mats:
        work = float(a.shape[0] * a.shape[1] * b.shape[1])
        if work >= tuning.SMALL_GEMM:
            wp = aligned_empty(tiles.panels_size(b), np.float32)
            tiles.pack_panels(wp, b)
        else:
            wp = None
        packed.append((work, wp))

    def run():
        with _threads.single_threaded_blas:
            for (a, b), o, (work, wp) in zip(mats, outs, packed):
                if wp is None:
                    np.matmul(a, b, out=o)
                else:
                    _threads.run_rows(a.shape[0], work, P.project_panels,
                                      (a, wp, o, no_bias, no_rows, tiles.FROM_ZERO), [()], (),
                                      min_work=tuning.SMALL_GEMM)
    return run


def section_breakdown(args) -> Dict:
    """Per call: total, time in the recurrence, and the same GEMMs timed right after it."""
    import nlstm
    from .grid import GRID, flops, make_problem
    from .timing import wait_quiet
    out = {}
    for cname in ("S", "M", "L", "XL", "long", "ragged", "M-bi2"):
        case = GRID[cname]
        prob = make_problem(case)
        m = nlstm.LSTM(case.I, case.H, num_layers=case.layers, bidirectional=case.bidirectional)
        m.load_state_dict(prob.params)
        dy = np.ones((case.T, case.B, case.D * case.H), np.float32)
        T, B, H, G = case.T, case.B, case.H, 4 * case.H
        for mode in ("infer", "train"):
            if mode == "infer":
                fn = lambda: m(prob.x, lengths=prob.lengths)
            else:
                def fn():
                    m.zero_grad()
                    m.forward(prob.x, lengths=prob.lengths, train=True)
                    m.backward(dy)
            shapes = []
            # nlstm projects a ragged batch's valid steps only (as one product here)
            valid = T * B if prob.lengths is None else int(np.sum(prob.lengths))
            for k in range(case.layers):
                I = case.I if k == 0 else case.D * H
                for _ in range(case.D):
                    shapes.append(((valid, I), (I, G)))  # input projection
                    if mode == "train":
                        shapes += [((G, T * B), (T * B, I)), ((G, T * B), (T * B, H)),
                                   ((T * B, G), (G, I))]  # dW_ih, dW_hh, dx
            gemm = _gemm_runner(shapes)
            for _ in range(2):
                fn()
                gemm()
            n = max(5, min(300, int(args.breakdown_s / max(_time_once(fn), 1e-6))))
            wait_quiet(args.wait_quiet)
            tot, rec, gm = [], [], []
            with KernelClock() as clk:
                for _ in range(n):
                    k0 = clk.kernel_s
                    t0 = time.perf_counter()
                    fn()
                    t1 = time.perf_counter()
                    gemm()
                    t2 = time.perf_counter()
                    tot.append(t1 - t0)
                    rec.append(clk.kernel_s - k0)
                    gm.append(t2 - t1)
            med = lambda v: float(np.median(v))
            rows = float(np.sum(prob.lengths)) if prob.lengths is not None else float(T * B)
            rec_flops = case.layers * case.D * 2.0 * rows * G * H * (2 if mode == "train" else 1)
            r = med(rec) if clk.ok else None
            out[f"{cname} {mode}"] = dict(
                calls=n, total_ms=med(tot) * 1e3, gemm_ms=med(gm) * 1e3,
                recurrence_ms=None if r is None else r * 1e3,
                rest_ms=None if r is None else med(np.subtract(np.subtract(tot, rec), gm)) * 1e3,
                recurrence_per_step_us=None if r is None else r / (T * case.layers * case.D) * 1e6,
                recurrence_gflops=None if not r else rec_flops / r / 1e9,
                gemm_floor_ms=flops(case, mode, prob.lengths) / (args.gflops * 1e9) * 1e3)
    return out


def _time_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---- report -------------------------------------------------------------------------------
def markdown(res: Dict) -> str:
    L = [f"Command: `{res['command']}`  ", f"Threads: {res['num_threads']}; floor rate (the "
         f"faster float32 matmul of NumPy and torch) {res['gflops']:.1f} GFLOP/s", ""]
    yn = lambda b: "met" if b else "NOT met"
    if "step" in res:
        s = res["step"]
        L += ["## Streaming step (B=1, I=32, H=128, state carried)", "",
              f"- targets ≤ {s['target_us']:g} µs through `lstm.step`, ≤ "
              f"{s['stream_target_us']:g} µs through a stream: {yn(s['met'])}",
              f"- `lstm.step(x (1, I), state)`: {s['step (1, I)']:.1f} µs median "
              f"(unbatched x (I,): {s['step (I,)']:.1f} µs)",
              f"- of which the kernel call (Numba dispatch included): "
              f"{s['kernel_us']:.1f} µs" if s.get("kernel_us") is not None else "- kernel share: n/a",
              f"- `stream(x)`, the state kept in a `lstm.stream(batch_size=1)`: "
              f"{s['stream (1, I)']:.1f} µs median (unbatched `lstm.stream()`: {s['stream (I,)']:.1f} µs)",
              f"- matrix-product floor of one step: {s['floor_us']:.2f} µs", ""]
    if "coldstart" in res:
        c = res["coldstart"]
        L += ["## Cold start (fresh process, Numba cache warm): import + first S forward", ""]
        for eng in ("nlstm", "torch"):
            if eng in c and "total_s" in c[eng]:
                e = c[eng]
                L.append(f"- {eng}: {e['total_s']:.2f} s (import {e['import_s']:.2f} s, first forward "
                         f"{e['first_forward_s']:.2f} s; whole process incl. interpreter "
                         f"{e['process_s']:.2f} s; median of {e['runs']})")
        L += ["- target ≤ half of torch's"
              + (f" ({c['target_s']:.2f} s)" if c.get("target_s") else " (torch not measured)")
              + f": {yn(c['met'])}"]
        if "nlstm_bytecode" in c:
            t = c.get("torch_bytecode", {}).get("total_s")
            L.append(f"- `PYTHONDONTWRITEBYTECODE` is set, so the checkout's sources compiled to "
                     f"bytecode in each run above; with bytecode kept (as an installed nlstm has "
                     f"it): nlstm {c['nlstm_bytecode']['total_s']:.2f} s (import "
                     f"{c['nlstm_bytecode']['import_s']:.2f} s)"
                     + (f", torch {t:.2f} s" if t is not None else ""))
        L.append("")
    if "compile" in res:
        c = res["compile"]
        L += ["## First-ever compile (empty NLSTM_CACHE_DIR and NUMBA_CACHE_DIR)", "",
              f"- import + first float32 S inference: {c['first_inference_s']:.1f} s; target ≤ "
              f"{c['target_s']:g} s: {yn(c['met'])}",
              f"- then the first training step (forward + backward) adds {c['first_train_extra_s']:.1f} s"]
        if c.get("warning"):
            L.append(f"- warning: {c['warning']}")
        L.append("")
    if "rss" in res:
        r = res["rss"]
        L += ["## Peak RSS: import + S inference", ""]
        L += [f"- {k}: {r[k]:.0f} MB" for k in ("python+numpy",
              "numba alone (one trivial cached @njit function)", "nlstm", "torch") if k in r]
        L += [f"- target ≤ {r['target_mb']:g} MB: {yn(r['met'])}", ""]
    if "trainmem" in res:
        t = res["trainmem"]
        L += ["## Training memory", "", "| case | peak traced bytes | bytes per T·B·H |", "|---|---|---|"]
        L += [f"| {k} | {v['peak_bytes'] / 1e6:.1f} MB | {v['bytes_per_TBH']:.1f} |"
              for k, v in t.items() if isinstance(v, dict) and "peak_bytes" in v]
        r = t.get("rss", {})
        L += ["", f"Peak-RSS growth of one training step ({r.get('size', '')}), bytes per T·B·H: "
              + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in r.items() if k != "size"), ""]
    if "threads" in res:
        t = res["threads"]
        L += ["## Same results at 1 and 2 threads", ""]
        L += [f"- {k}: largest relative difference {v['max_rel_diff']:.1e}"
              f"{' (bitwise identical)' if v['bitwise'] else ''}" for k, v in t.items() if isinstance(v, dict)]
        L += [f"- {yn(t['met'])}", ""]
    if "breakdown" in res:
        L += ["## Where nlstm's time goes", "",
              "recurrence = wall time inside the threaded recurrent kernels; GEMMs = the same "
              "whole-sequence products timed standalone; rest = total − both (Python, checks, "
              "copies, bias adds, reductions). Recurrence GFLOP/s counts h·W_hhᵀ (and in training "
              "the dh product) over the valid steps.", "",
              "| case | total | recurrence | GEMMs | rest | recurrence per step | recurrence GFLOP/s | floor |",
              "|---|---|---|---|---|---|---|---|"]
        f = lambda v, u="ms": "—" if v is None else f"{v:.3g} {u}"
        for k, v in res["breakdown"].items():
            L.append(f"| {k} | {f(v['total_ms'])} | {f(v['recurrence_ms'])} | {f(v['gemm_ms'])} | "
                     f"{f(v['rest_ms'])} | {f(v['recurrence_per_step_us'], 'µs')} | "
                     f"{f(v['recurrence_gflops'], '')} | {f(v['gemm_floor_ms'])} |")
        L.append("")
    return "\n".join(L)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.extra", description=__doc__.split("\n")[0])
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--fresh-runs", type=int, default=5, help="fresh processes per cold-start figure")
    p.add_argument("--compile-runs", type=int, default=1)
    p.add_argument("--update-results", action="store_true",
                   help="also put the new figures into bench/RESULTS.md (between its markers)")
    p.add_argument("--breakdown-s", type=float, default=1.0, help="seconds of calls per breakdown row")
    p.add_argument("--wait-quiet", type=float, default=10.0,
                   help="wait up to this long for other processes to go idle before measuring")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
    a = p.parse_args(argv)
    a.sections = [s for s in a.sections.split(",") if s]
    bad = [s for s in a.sections if s not in SECTIONS]
    if bad:
        p.error(f"unknown sections {bad}; choose from {SECTIONS}")
    from .engines import import_torch_first
    with_torch = import_torch_first()  # before Numba's layer starts: see configure_threads
    import nlstm
    from .timing import matmul_rates, wait_quiet
    nlstm.set_num_threads(a.threads)
    wait_quiet(a.wait_quiet)
    # the floor's rate: the fastest matmul of NumPy and torch (contention only lowers it)
    a.gflops = max(max(matmul_rates(with_torch).values()) for _ in range(3))
    res = dict(command="python -m bench.extra" + (" " + " ".join(argv) if argv else ""),
               num_threads=a.threads, gflops=a.gflops)
    for s in a.sections:
        wait_quiet(a.wait_quiet)
        t0 = time.perf_counter()
        res[s] = globals()[f"section_{s}"](a)
        print(f"[{s}] {time.perf_counter() - t0:.1f} s")
    md = markdown(res)
    print("\n" + md)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "extra.json"), "w") as f:
        json.dump(res, f, indent=1, default=float)
    with open(os.path.join(a.out, "extra.md"), "w") as f:
        f.write(md)
    if a.update_results:
        from .compare import update_results
        ok = update_results("extra", md)
        print("updated bench/RESULTS.md" if ok else "bench/RESULTS.md has no extra markers: not updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
