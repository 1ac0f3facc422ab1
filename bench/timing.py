"""Timing that survives a shared 2-core machine and peers with spinning thread pools.

ONNX Runtime's (and OpenMP's) worker threads spin for a while after each call; on two
cores that starves whatever runs next. So engines are never interleaved call by call:
each gets its own chunk of calls, the first calls after every switch are dropped, and the
chunks rotate over the engines ``repeat`` times (order reversed every other round, so no
engine always follows the same one). The figure reported is the median of all samples;
the spread of the per-chunk medians shows how noisy the run was.

Other processes on the machine are the other hazard: when something else keeps a core
busy, an engine whose threads meet at a barrier every time step (torch's OpenMP, ORT)
can slow down 10-1000x, far more than one that doesn't. So every chunk measures how
much CPU the rest of the machine used meanwhile (/proc/stat minus this process, steal
included); a chunk during which others used more than ``BUSY_CORES`` is re-run (up to
``RETRIES`` times, after a pause), and any contended chunk that had to be kept is counted
in the result so the table can say so.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List

import numpy as np

SETTLE_S = 0.02  # after a switch, drop the first call and at least this much more
BUSY_CORES = 0.3  # CPU (in cores) that other processes may use during a clean chunk
RETRIES = 2


def _jiffies():
    """(machine busy jiffies incl. steal, this process's jiffies), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            s = f.read().rsplit(")", 1)[1].split()
        busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
        return busy, int(s[11]) + int(s[12])
    except (OSError, ValueError, IndexError):
        return None


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Load:
    """CPU used by other processes (in cores) between ``start()`` and ``others()``."""

    def start(self):
        self.t0, self.j0 = time.perf_counter(), _jiffies()
        return self

    def others(self) -> float:
        j1 = _jiffies()
        if self.j0 is None or j1 is None:
            return 0.0
        dt = time.perf_counter() - self.t0
        return max(0.0, ((j1[0] - self.j0[0]) - (j1[1] - self.j0[1])) / _HZ / max(dt, 1e-6))


def wait_quiet(max_wait_s: float, probe_s: float = 0.5) -> float:
    """Wait (up to max_wait_s) until other processes use under BUSY_CORES; returns their load."""
    t_end = time.perf_counter() + max_wait_s
    while True:
        ld = Load().start()
        time.sleep(probe_s)
        busy = ld.others()
        if busy < BUSY_CORES or time.perf_counter() >= t_end:
            return busy


@dataclass
class Stats:
    median: float          # seconds per call
    q1: float
    q3: float
    best: float
    chunk_medians: List[float]
    samples: int
    calls_per_sample: int
    contended_chunks: int = 0   # chunks kept although other processes were busy
    retried_chunks: int = 0
    others_cores: float = 0.0   # mean CPU other processes used during the kept chunks

    def to_dict(self):
        return asdict(self)


def warmup(fn: Callable, min_calls: int = 3, max_s: float = 3.0) -> float:
    """Call until compilation and first-touch costs are gone; returns the last call's time."""
    t_start = time.perf_counter()
    prev = None
    n = 0
    while True:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        n += 1
        settled = prev is not None and dt < 1.5 * prev
        if (n >= min_calls and settled) or time.perf_counter() - t_start > max_s:
            return dt
        prev = dt


def calls_per_sample(one_call_s: float, sample_s: float = 2e-3, cap: int = 2000) -> int:
    """Batch very short calls so the timer's own cost and resolution do not matter."""
    return int(min(cap, max(1, round(sample_s / max(one_call_s, 1e-9)))))


def time_chunked(runners: Dict[str, Callable], repeat: int = 5, chunk_s: float = 0.3,
                 min_samples: int = 2, max_samples: int = 200) -> Dict[str, Stats]:
    """Median time per call of each runner, timed in rotating chunks (see module doc)."""
    names = list(runners)
    inner = {}
    for n in names:
        inner[n] = calls_per_sample(warmup(runners[n]))
    samples: Dict[str, List[float]] = {n: [] for n in names}
    chunks: Dict[str, List[float]] = {n: [] for n in names}
    busy: Dict[str, List[float]] = {n: [] for n in names}
    retried = {n: 0 for n in names}
    for r in range(repeat):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            for attempt in range(RETRIES + 1):
                got, others = _chunk(runners[n], inner[n], chunk_s, min_samples, max_samples)
                if others < BUSY_CORES or attempt == RETRIES:
                    break
                retried[n] += 1
                time.sleep(0.5)
            samples[n].extend(got)
            chunks[n].append(float(np.median(got)))
            busy[n].append(others)
    out = {}
    for n in names:
        s = np.asarray(samples[n])
        out[n] = Stats(float(np.median(s)), float(np.percentile(s, 25)), float(np.percentile(s, 75)),
                       float(s.min()), chunks[n], int(s.size), inner[n],
                       sum(b >= BUSY_CORES for b in busy[n]), retried[n], float(np.mean(busy[n])))
    return out


def _chunk(fn, k, chunk_s, min_samples, max_samples):
    """One chunk of samples of k calls each, and the CPU others used meanwhile."""
    t_settle = time.perf_counter() + SETTLE_S
    fn()
    while time.perf_counter() < t_settle:
        fn()
    got = []
    load = Load().start()
    t_end = time.perf_counter() + chunk_s
    while len(got) < min_samples or (len(got) < max_samples and time.perf_counter() < t_end):
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        got.append((time.perf_counter() - t0) / k)
    return got, load.others()


def sgemm_rate(M: int = 2560, K: int = 512, N: int = 2048, budget_s: float = 0.25,
               library: str = "numpy") -> float:
    """float32 GFLOP/s of NumPy's (or torch's) matmul at (M, K)·(K, N), the median of a few
    calls. The default shape is the grid's largest product (XL's input projection)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    c = np.empty((M, N), np.float32)
    matmul = np.matmul
    if library == "torch":
        import torch
        a, b, c = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        matmul = torch.matmul
    matmul(a, b, out=c)
    ts = []
    t_end = time.perf_counter() + budget_s
    while len(ts) < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        matmul(a, b, out=c)
        ts.append(time.perf_counter() - t0)
    return 2.0 * M * K * N / float(np.median(ts)) / 1e9


def matmul_rates(with_torch: bool) -> Dict[str, float]:
    """``sgemm_rate`` of NumPy and, if asked, torch: the floor's rate is the faster one."""
    rates = {"numpy": sgemm_rate()}
    if with_torch:
        rates["torch"] = sgemm_rate(library="torch")
    return rates
