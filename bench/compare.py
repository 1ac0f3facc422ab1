"""``python -m bench.compare``: nlstm against torch, ONNX Runtime, JAX and NumPy on issue 3's grid.

The grid runs for each cell (``--cells``, default lstm,gru,rnn; issue 5): the LSTM against
torch.nn.LSTM and ORT's LSTM operator, the GRU against torch.nn.GRU and ORT's GRU
(linear_before_reset=1, PyTorch's form), the tanh RNN against torch.nn.RNN and ORT's RNN;
JAX and NumPy run all three. Every cell is held to the same targets per case.

For each case and mode, in one process with the same thread count and the same weights:
  1. every engine builds its model and runs once; its outputs are checked against a
     float64 reference and against nlstm (``bench.check``); an engine that disagrees
     or raises is reported and not timed;
  2. the engines that agree are warmed up (compilation outside the timing) and timed in
     rotating chunks (``bench.timing``); the figure is the median over all samples;
  3. the floor is the case's matrix-product FLOPs divided by the faster float32 matmul
     rate of NumPy and torch (when torch is among the engines) in this run (each measured
     once per case at the grid's largest product, the run's medians compared).
The tables of medians and of ratios against the fastest peer are printed and written per
cell to ``<out>/compare.json`` and ``compare.md`` (LSTM), ``compare-gru.*`` and
``compare-rnn.*``, so a run of some cells leaves the others' files alone.

Examples:
  python -m bench.compare                           # the full grid, 2 threads
  python -m bench.compare --quick --cases S,M,step  # a fast look
  python -m bench.compare --cells gru,rnn           # only the GRU and RNN grids
  python -m bench.compare --threads 1 --engines nlstm,torch
  python -m bench.compare --extra                   # also streaming, startup, memory, threads
"""
from __future__ import annotations

import os as _os
import sys as _sys

if __name__ == "__main__" and not __package__:  # run as a file: bench/compare.py (PEP 366)
    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    __package__ = "bench"

import argparse
import dataclasses
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from .grid import GRID, flops, make_problem

ENGINE_ORDER = ["nlstm", "torch", "ort", "jax", "numpy"]
CELLS = ["lstm", "gru", "rnn"]
# per cell: output-file and RESULTS.md-block suffix, and what the peers are
CELL_INFO = {
    "lstm": ("", "LSTM: torch.nn.LSTM, ONNX Runtime's LSTM operator, JAX, NumPy"),
    "gru": ("-gru", "GRU (PyTorch's form): torch.nn.GRU, ONNX Runtime's GRU operator "
                    "(linear_before_reset=1), JAX, NumPy"),
    "rnn": ("-rnn", "RNN (tanh): torch.nn.RNN, ONNX Runtime's RNN operator, JAX, NumPy"),
}

# Issue 15's targets, the same for every cell: (kind, factor). "peer": fastest peer /
# nlstm >= factor; "peer+floor": that and nlstm at >= FLOOR_SHARE of the sgemm floor;
# "torch": torch / nlstm >= factor. The step keeps issue 3's (issue 15 sets the stream's
# and lstm.step's times instead: bench.extra).
TARGETS = {
    ("S", "infer"): ("peer", 2.0), ("long", "infer"): ("peer", 2.0), ("step", "step"): ("peer", 3.0),
    ("M", "infer"): ("peer", 1.0), ("ragged", "infer"): ("peer", 1.5),
    ("L", "infer"): ("peer+floor", 1.0), ("XL", "infer"): ("peer+floor", 1.0),
    ("S", "train"): ("torch", 2.0), ("long", "train"): ("torch", 2.0),
    ("ragged", "train"): ("torch", 2.0), ("M", "train"): ("torch", 1.3),
    ("L", "train"): ("torch", 1.2), ("XL", "train"): ("torch", 1.05),
}
FLOOR_SHARE = 0.85


def describe_target(kind: str, factor: float) -> str:
    return {"peer": f">= {factor:g}x fastest peer",
            "peer+floor": f">= {factor:g}x fastest peer, >= {FLOOR_SHARE:.0%} of floor",
            "torch": f">= {factor:g}x torch"}[kind]


def judge_target(row: Dict) -> Optional[Dict]:
    spec = TARGETS.get((row["case"], row["mode"]))
    if spec is None:
        return None
    kind, factor = spec
    sp = row["speedup_vs"]
    out = dict(target=describe_target(kind, factor), met=None, detail="")
    if "nlstm" not in row["median_s"]:
        out["detail"] = "nlstm not timed"
        return out
    if kind in ("peer", "peer+floor"):
        fastest = row.get("speedup_vs_fastest")
        if fastest is None:
            out["detail"] = "no peer timed"
            return out
        met = fastest >= factor
        detail = f"{fastest:.2f}x {row['fastest_peer']}"
        if kind == "peer+floor":
            eff = row["floor_efficiency"]
            met = met and eff >= FLOOR_SHARE
            detail += f", {eff:.0%} of floor"
        out.update(met=bool(met), detail=detail)
        return out
    if "torch" not in sp:
        out["detail"] = "torch not timed"
        return out
    met = sp["torch"] >= factor
    detail = f"{sp['torch']:.2f}x torch"
    out.update(met=bool(met), detail=detail)
    return out


# ---- formatting ---------------------------------------------------------------------------
def fmt_time(s: Optional[float]) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs" if s >= 1e-6 else f"{s * 1e6:.2f} µs"
    if s < 1.0:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def fmt_ratio(r: Optional[float]) -> str:
    return "—" if r is None else f"{r:.2f}x"


def markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w)
                               for i, (x, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def tables(results: List[Dict], engines: List[str]):
    """(header, rows) of the medians table and of the ratios table."""
    h1 = ["case", "mode"] + engines + ["floor", "fastest peer", "nlstm speedup", "floor eff.",
                                       "target", "met"]
    r1, r2 = [], []
    h2 = ["case", "mode"] + [f"{e} / fastest peer" for e in engines]
    for row in results:
        cells = []
        for e in engines:
            st = row["engines"].get(e, {})
            if "median_s" in st:
                flag = "*" if st["stats"]["contended_chunks"] else ""
                cells.append(fmt_time(st["median_s"]) + flag)
            else:
                cells.append({"rejected": "WRONG", "error": "error"}.get(st.get("status"), "—"))
        tgt = row.get("target") or {}
        met = {True: "yes", False: "NO", None: "—"}[tgt.get("met")]
        eff = row.get("floor_efficiency")
        r1.append([row["case"], row["mode"]] + cells + [
            fmt_time(row["floor_s"]), row.get("fastest_peer") or "—",
            fmt_ratio(row.get("speedup_vs_fastest")),
            "—" if eff is None else f"{eff:.0%}",
            tgt.get("target", "—"), met + (f" ({tgt['detail']})" if tgt.get("detail") else "")])
        fp = row.get("fastest_peer")
        base = row["median_s"].get(fp) if fp else None
        r2.append([row["case"], row["mode"]] + [
            fmt_ratio(row["median_s"][e] / base) if base and e in row["median_s"] else "—"
            for e in engines])
    return (h1, r1), (h2, r2)


# ---- environment --------------------------------------------------------------------------
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def update_results(block: str, text: str, path: str = RESULTS, heading: Optional[str] = None,
                   after: Optional[List[str]] = None) -> bool:
    """Replace what sits between ``<!-- {block}:begin -->`` and ``<!-- {block}:end -->``
    in bench/RESULTS.md, so a re-run refreshes the tables and leaves the analysis alone.

    A block that is not there yet is created (only when ``heading`` is given) as a new
    section right after the first of the blocks ``after`` that exists, else at the end:
    other blocks and the hand-written text are never touched."""
    begin, end = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    try:
        with open(path) as f:
            doc = f.read()
    except OSError:
        return False
    i, j = doc.find(begin), doc.find(end)
    if i < 0 or j < i:
        if heading is None:
            return False
        at = len(doc)
        for other in after or []:
            k = doc.find(f"<!-- {other}:end -->")
            if k >= 0:
                at = k + len(f"<!-- {other}:end -->")
                break
        section = f"\n\n## {heading}\n\n{begin}\n{end}"
        doc = doc[:at] + section + doc[at:]
        i, j = doc.find(begin), doc.find(end)
    with open(path, "w") as f:
        f.write(doc[:i + len(begin)] + "\n" + text.strip() + "\n" + doc[j:])
    return True


def machine_info(threads: int) -> Dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "threads": threads,
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "NUMBA_THREADING_LAYER": os.environ.get("NUMBA_THREADING_LAYER", "")}
    info["environment"] = {k: v for k, v in os.environ.items() if k.startswith(
        ("OPENBLAS_", "NUMBA_CPU_", "ONEDNN_", "ATEN_CPU_", "MKL_"))}
    from nlstm.kernels import simd
    info["nlstm target"] = (f"{simd.target_vector_bits()}-bit vectors, "
                            f"{simd.target_vector_registers()} registers")
    try:
        import numba
        info["numba threading layer"] = numba.threading_layer()
    except (ImportError, ValueError):  # ValueError: no parallel work has started a layer
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("Model name", "CPU family", "Model", "Core(s) per socket", "Socket(s)",
                               "Thread(s) per core", "Hypervisor vendor",
                               "L2 cache", "L3 cache", "Flags"):
                val = val.strip()
                if key.strip() == "Flags":
                    val = " ".join(f for f in val.split() if f in ("avx2", "fma", "avx512f"))
                info["lscpu " + key.strip()] = val
    except (OSError, subprocess.SubprocessError):
        pass
    versions = {}
    for mod in ("numpy", "numba", "scipy", "nlstm", "torch", "onnxruntime", "onnx", "jax", "jaxlib"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    info["versions"] = versions
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        info["numpy BLAS"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        pass
    return info


# ---- the run ------------------------------------------------------------------------------
def run_case(case, mode: str, engines: List[str], repeat: int, chunk_s: float,
             min_samples: int, log=print, check_only: bool = False) -> Dict:
    from . import check, engines as E
    from .timing import time_chunked

    problem = make_problem(case)
    row = dict(case=case.name, cell=case.cell, mode=mode, describe=case.describe(),
               flops=flops(case, mode, problem.lengths), engines={}, median_s={})
    runners = {}
    for name in engines:
        eng = E.ENGINES[name]
        why = eng.unavailable() or eng.supports(problem, mode)
        if why:
            row["engines"][name] = dict(status="skipped", reason=why)
            continue
        try:
            runners[name] = eng.prepare(problem, mode)
        except Exception as e:
            row["engines"][name] = dict(status="error", reason=f"prepare raised {e!r}"[:300])
    verdicts, _ = check.check_engines(problem, mode, runners)
    accepted = {}
    for name in [n for n in engines if n in runners]:
        v = verdicts[name]
        row["engines"][name] = dict(status="agrees" if v.ok else "rejected",
                                    vs_reference=v.vs_reference, vs_nlstm=v.vs_nlstm,
                                    worst_tensor=v.worst_tensor, note=v.note)
        log(f"  check {v.summary()}")
        if v.ok:
            accepted[name] = runners[name]
    if accepted and not check_only:
        stats = time_chunked(accepted, repeat=repeat, chunk_s=chunk_s, min_samples=min_samples)
        for name, st in stats.items():
            row["engines"][name].update(status="timed", median_s=st.median, stats=st.to_dict())
            row["median_s"][name] = st.median
    runners.clear()
    accepted.clear()
    gc.collect()
    return row


def finish_row(row: Dict, gflops: float) -> Dict:
    row["floor_s"] = row["flops"] / (gflops * 1e9)
    med = row["median_s"]
    peers = {n: t for n, t in med.items() if n != "nlstm"}
    row["speedup_vs"] = {n: t / med["nlstm"] for n, t in peers.items()} if "nlstm" in med else {}
    if peers:
        fp = min(peers, key=peers.get)
        row["fastest_peer"] = fp
        row["speedup_vs_fastest"] = row["speedup_vs"].get(fp)
    row["floor_efficiency"] = row["floor_s"] / med["nlstm"] if "nlstm" in med else None
    row["target"] = judge_target(row)
    return row


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=",".join(GRID), help=f"comma-separated, from {','.join(GRID)}")
    p.add_argument("--cells", default=",".join(CELLS), help="comma-separated: lstm,gru,rnn")
    p.add_argument("--modes", default="infer,train,step", help="comma-separated: infer,train,step")
    p.add_argument("--engines", default=",".join(ENGINE_ORDER), help="comma-separated engines")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=None, help="timing rounds per case (default 5; 3 with --quick)")
    p.add_argument("--chunk", type=float, default=None, help="seconds per engine per round (default 0.3)")
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds: a look, not a result")
    p.add_argument("--check-only", action="store_true",
                   help="run the agreement check of every engine and case, time nothing, write nothing")
    p.add_argument("--wait-quiet", type=float, default=10.0,
                   help="before each case, wait up to this many seconds for other processes to go idle")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
    p.add_argument("--extra", action="store_true", help="then run bench.extra (streaming, startup, memory)")
    p.add_argument("--update-results", action="store_true",
                   help="also put the new tables into bench/RESULTS.md (between its markers)")
    a = p.parse_args(argv)
    a.cases = [c for c in a.cases.split(",") if c]
    a.cells = [c for c in a.cells.split(",") if c]
    a.modes = [m for m in a.modes.split(",") if m]
    a.engines = [e for e in a.engines.split(",") if e]
    bad = [c for c in a.cases if c not in GRID] + [e for e in a.engines if e not in ENGINE_ORDER] \
        + [m for m in a.modes if m not in ("infer", "train", "step")] \
        + [c for c in a.cells if c not in CELLS]
    if bad:
        p.error(f"unknown names: {bad}")
    a.repeat = a.repeat or (3 if a.quick else 5)
    a.chunk = a.chunk or (0.1 if a.quick else 0.3)
    a.min_samples = 1 if a.quick else 2
    return a


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    from . import engines as E
    E.configure_threads(a.threads)  # before torch/jax are imported
    from .timing import matmul_rates, wait_quiet

    command = "python -m bench.compare" + ("" if not argv else " " + shlex.join(argv))
    meta = machine_info(a.threads)
    meta.update(command=command, repeat=a.repeat, chunk_s=a.chunk,
                date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    print(f"{command}\n{meta.get('lscpu Model name', '?')}, {meta['cpu_count']} cores, "
          f"{a.threads} threads; versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v))
    for name in a.engines:
        why = E.ENGINES[name].unavailable()
        if why:
            print(f"  {name}: skipped, {why}")
    t_start = time.perf_counter()
    rates, results = [], []  # rates: per round, each library's matmul GFLOP/s
    torch_rate = "torch" in a.engines and not E.ENGINES["torch"].unavailable()
    for cell in a.cells:
        for cname in a.cases:
            case = dataclasses.replace(GRID[cname], cell=cell)
            for mode in case.modes():
                if mode not in a.modes:
                    continue
                if a.check_only:
                    print(f"\n[{cell.upper()} {cname} {mode}] {case.describe()}")
                    run_case(case, mode, a.engines, 0, 0.0, 0, check_only=True)
                    continue
                others = wait_quiet(a.wait_quiet)
                rates.append(matmul_rates(torch_rate))
                print(f"\n[{cell.upper()} {cname} {mode}] {case.describe()}  (matmul GFLOP/s: "
                      + ", ".join(f"{k} {v:.1f}" for k, v in rates[-1].items())
                      + f"; other processes using {others:.2f} cores)")
                row = run_case(case, mode, a.engines, a.repeat, a.chunk, a.min_samples)
                row["others_cores_at_start"] = others
                results.append(row)
                print("  " + ", ".join(f"{n} {fmt_time(t)}" for n, t in row["median_s"].items()))
    if a.check_only:
        print(f"\nchecked in {time.perf_counter() - t_start:.0f} s; nothing timed")
        return 0
    rates.append(matmul_rates(torch_rate))
    # the floor's rate: the faster library's median (issue 15: the fastest float32 matmul
    # any installed library reaches in the same run)
    by_lib = {k: [r[k] for r in rates] for k in rates[0]}
    medians = {k: float(np.median(v)) for k, v in by_lib.items()}
    fastest = max(medians, key=medians.get)
    gflops = medians[fastest]
    for row in results:
        finish_row(row, gflops)
    elapsed = time.perf_counter() - t_start
    meta.update(sgemm_gflops=gflops, floor_library=fastest, matmul_gflops=medians,
                matmul_rounds=by_lib, sgemm_shape=[2560, 512, 2048], elapsed_s=elapsed)
    floor_rounds = by_lib[fastest]
    rate_text = ", ".join(f"{k} {v:.1f}" for k, v in medians.items())

    engines = [e for e in ENGINE_ORDER if e in a.engines]
    os.makedirs(a.out, exist_ok=True)
    for cell in a.cells:
        rows = [r for r in results if r["cell"] == cell]
        if not rows:
            continue
        suffix, title = CELL_INFO[cell]
        (h1, r1), (h2, r2) = tables(rows, engines)
        print(f"\n{title}\nmedians ({a.threads} threads; float32; floor = matmul FLOPs / {gflops:.1f} "
              f"GFLOP/s, {fastest}'s matmul; nlstm speedup = fastest peer / nlstm; {elapsed:.0f} s in all)\n")
        print(text_table(h1, r1))
        print("* = some chunks were timed while other processes kept a core busy (see the JSON)")
        print("\ntime relative to the fastest peer (below 1 is faster than every peer)\n")
        print(text_table(h2, r2))

        json_name, md_name = f"compare{suffix}.json", f"compare{suffix}.md"
        with open(os.path.join(a.out, json_name), "w") as f:
            json.dump(dict(meta=dict(meta, cell=cell), results=rows), f, indent=1, default=float)
        md = ([f"Cell: {title}  "] if cell != "lstm" else []) + [
            f"Command: `{command}`  ",
            f"Machine: {meta.get('lscpu Model name', '?')} (family {meta.get('lscpu CPU family', '?')} "
            f"model {meta.get('lscpu Model', '?')}), {meta['cpu_count']} cores "
            f"({meta.get('lscpu Flags', '')}); {a.threads} threads; {meta['date']}  ",
            f"nlstm compiles for: {meta.get('nlstm target', '?')}; environment: "
            + (", ".join(f"{k}={v}" for k, v in meta.get("environment", {}).items())
               or "no OPENBLAS_/NUMBA_CPU_/ONEDNN_/ATEN_CPU_/MKL_ variable") + "  ",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v) + "  ",
            f"Floor rate: {gflops:.1f} GFLOP/s, {fastest}'s float32 matmul, the faster of {rate_text} "
            f"(medians of {len(floor_rounds)} rounds at 2560x512x2048; {fastest}'s range "
            f"{min(floor_rounds):.1f}-{max(floor_rounds):.1f})  ",
            f"Timing: {a.repeat} rounds x {a.chunk:g} s chunks per engine; medians of all samples",
            "", markdown_table(h1, r1), "",
            f"`*`: some chunks were timed while other processes kept a core busy (see {json_name}).",
            "", "Time relative to the fastest peer:", "",
            markdown_table(h2, r2), ""]
        with open(os.path.join(a.out, md_name), "w") as f:
            f.write("\n".join(md))
        print(f"\nwrote {os.path.join(a.out, json_name)} and {md_name}")
        if a.update_results:
            block = "compare" + suffix
            heading = f"{cell.upper()} peers against nlstm (`python -m bench.compare --cells {cell}`)"
            # a missing GRU/RNN block is created after the block of the cell before it
            ok = update_results(block, "\n".join(md), heading=None if cell == "lstm" else heading,
                                after=["compare" + CELL_INFO[c][0] for c in CELLS[:CELLS.index(cell)]][::-1])
            print(f"updated bench/RESULTS.md ({block})" if ok
                  else f"bench/RESULTS.md has no {block} markers: not updated")
    if a.extra:
        from . import extra
        extra.main(["--threads", str(a.threads), "--out", a.out]
                   + (["--update-results"] if a.update_results else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
