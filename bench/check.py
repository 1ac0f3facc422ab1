"""The agreement check that runs before anything is timed.

Every engine's outputs are compared with a float64 run of the plain NumPy cell (LSTM,
GRU or RNN: ``bench.numpy_lstm``) on the same weights and inputs (an implementation that
shares nothing with nlstm) and with nlstm's own outputs. An engine that disagrees with
either is not timed: a fast wrong answer is not a result.

The error of a tensor is max|got − want| / max|want| (its largest element sets the
scale, so tiny elements do not blow the ratio up); an engine passes when every tensor's
error is at most ``TOL`` (float32 against float64 stays near 1e-6 on the whole grid; a
wrong gate order, weight or length handling gives 1e-2 and more).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from .grid import Problem

TOL = 1e-3


def reference(problem: Problem, mode: str) -> Dict:
    """The float64 outputs every engine must match (same keys as ``Runner.result``)."""
    from .numpy_lstm import NUMPY_CELLS
    c = problem.case
    names = ("h_n", "c_n") if c.cell == "lstm" else ("h_n",)
    m = NUMPY_CELLS[c.cell](problem.params, c.layers, c.bidirectional, np.float64)
    x = problem.x.astype(np.float64)
    if mode == "infer":
        y, st = m.forward(x, problem.lengths)
        return dict(y=y, **dict(zip(names, st)))
    if mode == "train":
        y, _ = m.forward(x, problem.lengths, train=True)
        dx, _, grads = m.backward(np.ones_like(y))
        return dict(y=y, dx=dx, grads=grads)
    st, ys = None, []
    for t in range(x.shape[0]):
        y, st = m.step(x[t], st)
        ys.append(y)
    return dict(y=np.stack(ys), **dict(zip(names, st)))


def _flatten(out: Dict) -> Dict[str, np.ndarray]:
    flat = {}
    for k, v in out.items():
        if isinstance(v, dict):
            flat.update({f"grad {n}": a for n, a in v.items()})
        else:
            flat[k] = v
    return flat


def errors(got: Dict, want: Dict) -> Dict[str, float]:
    """Scaled max error per tensor of ``want``; inf for a missing or misshapen tensor."""
    g, w = _flatten(got), _flatten(want)
    out = {}
    for k, ref in w.items():
        a = g.get(k)
        ref = np.asarray(ref, np.float64)
        if a is None or np.shape(a) != ref.shape:
            out[k] = float("inf")
            continue
        a = np.asarray(a, np.float64)
        scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-12)
        diff = np.abs(a - ref)
        out[k] = float(np.max(diff)) / scale if diff.size else 0.0
        if not np.all(np.isfinite(a)):
            out[k] = float("inf")
    return out


@dataclass
class Verdict:
    engine: str
    ok: bool
    vs_reference: float  # worst scaled error against float64
    vs_nlstm: float      # worst scaled error against nlstm (nan for nlstm itself)
    worst_tensor: str = ""
    note: str = ""
    detail: Dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        s = f"{self.engine}: {'agrees' if self.ok else 'DISAGREES'} (vs float64 {self.vs_reference:.1e}"
        if not np.isnan(self.vs_nlstm):
            s += f", vs nlstm {self.vs_nlstm:.1e}"
        s += ")"
        if not self.ok:
            s += f", worst tensor {self.worst_tensor}"
        if self.note:
            s += f" [{self.note}]"
        return s


def verify(engine: str, got: Dict, ref: Dict, nlstm_out: Optional[Dict], tol: float = TOL) -> Verdict:
    """Compare one engine's outputs with the float64 reference and with nlstm's."""
    e_ref = errors(got, ref)
    worst_key = max(e_ref, key=e_ref.get)
    worst_ref = e_ref[worst_key]
    worst_nl = float("nan")
    detail = {f"ref {k}": v for k, v in e_ref.items()}
    if nlstm_out is not None:
        e_nl = errors(got, nlstm_out)
        k2 = max(e_nl, key=e_nl.get)
        worst_nl = e_nl[k2]
        detail.update({f"nlstm {k}": v for k, v in e_nl.items()})
        if worst_nl > worst_ref:
            worst_key = k2
    ok = worst_ref <= tol and (np.isnan(worst_nl) or worst_nl <= tol)
    return Verdict(engine, bool(ok), worst_ref, worst_nl, worst_key, detail=detail)


def check_engines(problem: Problem, mode: str, runners: Dict, tol: float = TOL):
    """Run every runner's ``result()`` and judge it. nlstm (if present) goes first.

    Returns ({name: Verdict}, reference). Engines whose ``result()`` raises are rejected.
    """
    ref = reference(problem, mode)
    verdicts = {}
    nl_out = None
    order = sorted(runners, key=lambda n: n != "nlstm")
    for name in order:
        try:
            out = runners[name].result()
        except Exception as e:  # an engine that crashes is as untimed as one that disagrees
            verdicts[name] = Verdict(name, False, float("inf"), float("inf"), note=f"raised {e!r}"[:200])
            continue
        if name == "nlstm":
            v = verify(name, out, ref, None, tol)
            if v.ok:
                nl_out = out
        else:
            v = verify(name, out, ref, nl_out, tol)
        verdicts[name] = v
    return verdicts, ref
