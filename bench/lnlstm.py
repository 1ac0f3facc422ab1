"""``python -m bench.lnlstm``: the LayerNorm LSTM and zoneout (issue 20) against nlstm's plain
LSTM and against a torch LayerNorm LSTM written from the paper's equations.

Engines, per case and mode (inference; training = forward and backward), all float32, the
same weights, the same threads, in one process:
  lstm            nlstm.LSTM, the baseline of the ratios
  lstm+zo         nlstm.LSTM(zoneout=0.1)
  lnlstm          nlstm.LayerNormLSTM
  lnlstm+zo       nlstm.LayerNormLSTM(zoneout=0.1)
  torch-ln        a LayerNorm LSTM in torch from Ba et al.'s equations, haste's form (W·x
                  and R·h normalised separately by torch.nn.LayerNorm, the cell state
                  before its tanh): one big input product and LayerNorm, then a Python loop
                  over the steps
  torch-ln-compiled  the same with its step under torch.compile, if that runs here
Before anything is timed, lnlstm's outputs (inference: y, h_n, c_n; training: also dx and
every parameter gradient) are checked against torch-ln's, and lnlstm+zo's inference (the
expectation) against torch-ln with zoneout's; an engine that disagrees is not timed.
Timing as bench.compare's (rotating chunks, median; bench.timing). The ratios to lstm are
paired: per round, one engine's chunk median over lstm's from the same round, then the median
of those; chunks of one round run within a second or two of each other, so the host's slow
swings (the same code reads 1.4x apart in runs minutes apart here) cancel out of the ratios.

Targets (issue 20): lnlstm and lstm+zo at most 1.3x lstm's time; torch-ln (the faster of
eager and compiled) at least 3x lnlstm's, at S, M and long.

  python -m bench.lnlstm                    # S, M, long, 2 threads
  python -m bench.lnlstm --quick            # a fast look (short timing, long at T=400)
  python -m bench.lnlstm --cases S --no-compile
"""
from __future__ import annotations

import os as _os
import sys as _sys

if __name__ == "__main__" and not __package__:  # run as a file (PEP 366)
    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    __package__ = "bench"

import argparse
import dataclasses
import json
from typing import Dict, Optional

import numpy as np

from .grid import GRID

ZONEOUT = 0.1
TOL = 2e-3  # float32 against float32: largest difference over the largest magnitude
TARGETS = {"lnlstm": ("lstm", 1.3), "lstm+zo": ("lstm", 1.3), "lnlstm+zo": ("lstm", 1.3)}
TORCH_TARGET = 3.0


def nlstm_layer(kind: str, case, seed: int = 0):
    import nlstm
    zo = ZONEOUT if kind.endswith("+zo") else 0.0
    cls = nlstm.LayerNormLSTM if kind.startswith("lnlstm") else nlstm.LSTM
    m = cls(case.I, case.H, seed=seed, zoneout=zo)
    set_contracting_norms(m, np.random.default_rng(seed + 1))
    return m


def set_contracting_norms(m, rng) -> None:
    """Gains and shifts away from the init's 1 and 0, chosen so that the recurrence
    contracts: γ_hh in 0.2-0.5 (the recurrent share of every gate small), γ_ih and γ_c in
    0.8-1.2, β_c in ±0.2. With gains of 0.5-1.5 for all three the cell is chaotic at
    long: float32 and float64 nlstm (and torch) part by T = 1000, since every rounding
    difference grows exponentially. With these they agree to 1e-6 over all 4000 steps.
    Scaling W_hh would not help: LN(W_hh h) does not depend on W_hh's scale."""
    for name, p in m.params.items():
        if name.startswith("ln_weight_hh"):
            p[...] = rng.uniform(0.2, 0.5, p.shape)
        elif name.startswith("ln_weight"):
            p[...] = rng.uniform(0.8, 1.2, p.shape)
        elif name.startswith("ln_"):
            p[...] = rng.uniform(-0.2, 0.2, p.shape)


class TorchLayerNormLSTM:
    """One layer, from the equations: z = LN_ih(W_ih x) + LN_hh(W_hh h) (each LayerNorm with
    its own gain and bias), i, f, g, o = σ, σ, tanh, σ; c' = f⊙c + i⊙g; h' = o⊙tanh(LN_c(c')).
    Zoneout p: training masks from torch.rand, inference the expectation."""

    def __init__(self, layer, compiled: bool):
        import torch
        nn = torch.nn
        I, H = layer.input_size, layer.hidden_size
        p = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in layer.params.items()}
        self.w_ih = nn.Linear(I, 4 * H, bias=False)
        self.w_hh = nn.Linear(H, 4 * H, bias=False)
        self.ln_ih, self.ln_hh, self.ln_c = nn.LayerNorm(4 * H), nn.LayerNorm(4 * H), nn.LayerNorm(H)
        with torch.no_grad():
            self.w_ih.weight.copy_(p["weight_ih_l0"])
            self.w_hh.weight.copy_(p["weight_hh_l0"])
            for ln, w, b in ((self.ln_ih, "ln_weight_ih_l0", "bias_ih_l0"),
                             (self.ln_hh, "ln_weight_hh_l0", "bias_hh_l0"),
                             (self.ln_c, "ln_weight_c_l0", "ln_bias_c_l0")):
                ln.weight.copy_(p[w])
                ln.bias.copy_(p[b])
        self.modules = [self.w_ih, self.w_hh, self.ln_ih, self.ln_hh, self.ln_c]
        self.zoneout = layer.zoneout
        self.H = H
        self.step = torch.compile(self._step, dynamic=False) if compiled else self._step

    def _step(self, xw_t, h, c):
        import torch
        z = xw_t + self.ln_hh(self.w_hh(h))
        i, f, g, o = z.chunk(4, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(self.ln_c(c_new))
        return h_new, c_new

    def parameters(self):
        return [q for m in self.modules for q in m.parameters()]

    def forward(self, x, train: bool):
        import torch
        T, B, _ = x.shape
        h = x.new_zeros(B, self.H)
        c = x.new_zeros(B, self.H)
        xw = self.ln_ih(self.w_ih(x))  # the whole sequence at once, as nlstm does
        p, ys = self.zoneout, []
        for t in range(T):
            h_new, c_new = self.step(xw[t], h, c)
            if p and train:
                mh = (torch.rand_like(h) < p).to(h.dtype)
                mc = (torch.rand_like(c) < p).to(c.dtype)
                h_new, c_new = mh * h + (1 - mh) * h_new, mc * c + (1 - mc) * c_new
            elif p:
                h_new, c_new = p * h + (1 - p) * h_new, p * c + (1 - p) * c_new
            h, c = h_new, c_new
            ys.append(h)
        return torch.stack(ys), h, c


def torch_runner(layer, x_np: np.ndarray, mode: str, compiled: bool):
    """(call, result) for the torch LayerNorm LSTM, or raises."""
    import torch
    model = TorchLayerNormLSTM(layer, compiled)
    x = torch.from_numpy(x_np)
    if mode == "infer":
        def call():
            with torch.inference_mode():
                return model.forward(x, False)

        def result():
            y, h, c = call()
            return dict(y=y.numpy(), h_n=h.numpy()[None], c_n=c.numpy()[None])
        return call, result

    def call():
        for q in model.parameters():
            q.grad = None
        xg = x.clone().requires_grad_(True)
        y, _, _ = model.forward(xg, True)
        y.sum().backward()
        return xg

    def result():
        xg = call()
        grads = {"weight_ih_l0": model.w_ih.weight.grad, "weight_hh_l0": model.w_hh.weight.grad,
                 "ln_weight_ih_l0": model.ln_ih.weight.grad, "bias_ih_l0": model.ln_ih.bias.grad,
                 "ln_weight_hh_l0": model.ln_hh.weight.grad, "bias_hh_l0": model.ln_hh.bias.grad,
                 "ln_weight_c_l0": model.ln_c.weight.grad, "ln_bias_c_l0": model.ln_c.bias.grad}
        return dict(dx=xg.grad.numpy(), **{k: v.numpy() for k, v in grads.items()})
    return call, result


def nlstm_runner(layer, x: np.ndarray, mode: str):
    if mode == "infer":
        def result():
            y, (h, c) = layer(x)
            return dict(y=y, h_n=h, c_n=c)
        return (lambda: layer(x)), result
    dy = np.ones((x.shape[0], x.shape[1], layer.output_size), np.float32)

    def call():
        layer.zero_grad()
        layer.forward(x, train=True)
        return layer.backward(dy)

    def result():
        dx, _ = call()
        return dict(dx=dx, **{k: v.copy() for k, v in layer.grads.items()})
    return call, result


def disagreement(got: Dict, want: Dict) -> float:
    """The largest difference over the largest magnitude, over the arrays both have."""
    worst = 0.0
    for k in want:
        if k in got:
            a, b = np.asarray(got[k], np.float64), np.asarray(want[k], np.float64)
            worst = max(worst, float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6)))
    return worst


def run_case(case, mode: str, repeat: int, chunk_s: float, compile_torch: bool) -> Dict:
    from .timing import time_chunked
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case.T, case.B, case.I)).astype(np.float32)
    layers = {k: nlstm_layer(k, case) for k in ("lstm", "lstm+zo", "lnlstm", "lnlstm+zo")}
    runners = {k: nlstm_runner(m, x, mode) for k, m in layers.items()}
    notes = {}
    torch_kinds = [("torch-ln", False)] + ([("torch-ln-compiled", True)] if compile_torch else [])
    for name, compiled in torch_kinds:
        try:
            runners[name] = torch_runner(layers["lnlstm"], x, mode, compiled)
            err = disagreement(runners["lnlstm"][1](), runners[name][1]())
            if mode == "infer":  # zoneout's inference: the expectation, deterministic
                zo = torch_runner(layers["lnlstm+zo"], x, mode, False)
                err = max(err, disagreement(runners["lnlstm+zo"][1](), zo[1]()))
            notes[name] = f"max rel. difference {err:.1e}"
            if not err <= TOL:
                notes[name] += " DISAGREES: not timed"
                del runners[name]
        except Exception as e:  # torch missing, or torch.compile not running here
            notes[name] = f"not run: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            runners.pop(name, None)
    stats = time_chunked({k: r[0] for k, r in runners.items()}, repeat=repeat, chunk_s=chunk_s)
    times = {k: s.median for k, s in stats.items()}
    row = dict(case=case.name, mode=mode, describe=case.describe(), times=times, notes=notes)
    row["ratios"] = {k: paired_ratio(stats[k].chunk_medians, stats[base].chunk_medians)
                     for k, (base, _) in TARGETS.items() if k in times}
    torch_best = min((times[k] for k in times if k.startswith("torch")), default=None)
    if torch_best is not None:
        row["torch_over_lnlstm"] = torch_best / times["lnlstm"]
    return row


def paired_ratio(num, den) -> float:
    """Median over rounds of num's chunk median over den's from the same round."""
    return float(np.median(np.asarray(num) / np.asarray(den)))


def fmt(s: Optional[float]) -> str:
    if s is None:
        return "—"
    return f"{s * 1e6:.0f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def report(rows) -> str:
    engines = ["lstm", "lstm+zo", "lnlstm", "lnlstm+zo", "torch-ln", "torch-ln-compiled"]
    lines = ["| case | " + " | ".join(engines) + " | lnlstm / lstm (≤1.3) | lstm+zo / lstm (≤1.3) "
             "| torch / lnlstm (≥3) |", "|---" * (len(engines) + 4) + "|"]
    for r in rows:
        t, q = r["times"], r["ratios"]
        met = lambda v, ok: "—" if v is None else f"{v:.2f}x" + (" ✓" if ok(v) else " ✗")
        lines.append(f"| {r['case']} {r['mode']} | " + " | ".join(fmt(t.get(e)) for e in engines)
                     + f" | {met(q.get('lnlstm'), lambda v: v <= 1.3)}"
                     + f" | {met(q.get('lstm+zo'), lambda v: v <= 1.3)}"
                     + f" | {met(r.get('torch_over_lnlstm'), lambda v: v >= TORCH_TARGET)} |")
    notes = [f"- {r['case']} {r['mode']} {k}: {v}" for r in rows for k, v in r["notes"].items()]
    return "\n".join(lines + [""] + notes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.lnlstm", description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="S,M,long", help="grid cases (default S,M,long)")
    ap.add_argument("--modes", default="infer,train")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="short timing, long at T=400")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    from .engines import configure_threads
    configure_threads(args.threads)
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    repeat, chunk_s = (1, 0.05) if args.quick else (args.repeat, 0.3)
    rows = []
    for name in args.cases.split(","):
        case = GRID[name]
        if args.quick and case.T > 400:
            case = dataclasses.replace(case, T=400)
        for mode in args.modes.split(","):
            rows.append(run_case(case, mode, repeat, chunk_s, not args.no_compile))
            print(f"{name} {mode}: " + ", ".join(f"{k} {fmt(v)}" for k, v in rows[-1]["times"].items()),
                  flush=True)
    print()
    print(report(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
