"""``nlstm.dask``: inference and synchronous data-parallel training on a Dask cluster.

Needs the optional extra ``dask`` (``pip install "nlstm[dask]"``, i.e. ``dask[distributed]``);
nlstm imports this module only when it is used.

- :func:`predict` runs each chunk of a Dask array (chunked along N) through the model on
  the worker that holds it and returns a Dask array equal to ``model.predict`` on the whole.
- :func:`fit` trains a ``Sequential`` with the arguments and history of
  ``Sequential.fit``. The training rows stay on the workers; each step, every worker
  computes the gradient of its rows of the global batch (the batch ``Sequential.fit``
  would draw from the same seed), the client sums the flat gradient arrays, scales them
  as ``fit``'s mean loss does, and applies one update with ``fit``'s own optimizer,
  clipping and schedule code; the new weights go back to the workers as one flat array.

The model travels once per worker, as the bytes of ``nlstm.save`` (no pickled layers);
per step only two flat arrays per worker move: the weights out and the gradient back.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
import uuid
from concurrent.futures import CancelledError
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

try:
    import dask
    import dask.array as da
    from dask.core import flatten
    from distributed import Client, KilledWorker, wait
    from distributed.client import FuturesCancelledError
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError('nlstm.dask needs dask.distributed: pip install "nlstm[dask]" '
                      f'(or "dask[distributed]"): {e}') from None

from ._validate import is_real
from .io import atomic_write, load, save
from .model import FitRun, Sequential, _chunk_bounds

__all__ = ["predict", "fit"]

CHECKPOINT_FORMAT = "nlstm-dask-checkpoint"


# ---- the model on the wire ----------------------------------------------------------------
def _model_bytes(model) -> bytes:
    """The file ``nlstm.save`` writes for ``model``, as bytes (its errors name what is wrong)."""
    with tempfile.TemporaryDirectory(prefix="nlstm-dask-") as d:
        path = save(model, os.path.join(d, "model.npz"))
        with open(path, "rb") as f:
            return f.read()


def _model_from_bytes(data: bytes):
    with tempfile.TemporaryDirectory(prefix="nlstm-dask-") as d:
        path = os.path.join(d, "model.npz")
        with open(path, "wb") as f:
            f.write(data)
        return load(path)


# A worker loads each model once per run (token) and keeps it for the run's later tasks:
# one copy per worker thread, since a model's workspace and gradients serve one call at a
# time and a process may run several tasks at once (threads_per_worker > 1, or workers
# in one process). Bounded: a long-lived worker keeps the copies of a few runs at most.
_REPLICAS: Dict[str, Dict[int, object]] = {}  # token -> thread ident -> model
_REPLICAS_LOCK = threading.Lock()
_MAX_REPLICAS = 4  # runs


def _replica(token: str, data: bytes):
    """This thread's copy of run ``token``'s model (loaded from ``data`` the first time)."""
    me = threading.get_ident()
    with _REPLICAS_LOCK:
        model = _REPLICAS.get(token, {}).get(me)
    if model is None:
        model = _model_from_bytes(data)
        with _REPLICAS_LOCK:
            if token not in _REPLICAS:
                while len(_REPLICAS) >= _MAX_REPLICAS:
                    _REPLICAS.pop(next(iter(_REPLICAS)))
                _REPLICAS[token] = {}
            _REPLICAS[token][me] = model
    return model


def _flat(arrays: Dict[str, np.ndarray], dtype=None) -> np.ndarray:
    """Every array of ``arrays``, in order, as one flat array."""
    return np.concatenate([a.reshape(-1) for a in arrays.values()]).astype(dtype or np.float64, copy=False)


def _unflat(flat: np.ndarray, arrays: Dict[str, np.ndarray]) -> None:
    """Copy ``flat`` (as made by ``_flat``) into ``arrays`` in place."""
    i = 0
    for a in arrays.values():
        a[...] = flat[i:i + a.size].reshape(a.shape)  # a may be a view: assign, don't reshape it
        i += a.size


# ---- input checks -------------------------------------------------------------------------
def _check_client(client) -> None:
    if not isinstance(client, Client):
        raise TypeError(f"client must be a dask.distributed.Client, got {type(client).__name__}")
    if client.status != "running":
        raise ValueError(f"client must be connected to a scheduler; its status is {client.status!r} "
                         f"(was it closed?)")
    if not client.scheduler_info().get("workers"):
        raise ValueError("the client's cluster has no workers")


def _rows_array(client, name: str, a, ndim_ok, chunk_rows: Optional[tuple] = None,
                multiple: int = 1):
    """``a`` (Dask or NumPy) as a Dask array chunked along axis 0 only: as ``chunk_rows``
    when given, else as it comes (Dask) or one chunk per worker (NumPy), rounded up to
    a ``multiple`` of rows."""
    if isinstance(a, da.Array):
        arr = a
    else:
        if not hasattr(a, "shape") and not isinstance(a, (list, tuple)):
            raise TypeError(f"{name} must be a Dask or NumPy array, got {type(a).__name__}")
        a = np.asarray(a)
        if a.ndim not in ndim_ok:
            raise ValueError(f"{name} must be {' or '.join(f'{n}-D' for n in ndim_ok)}, got shape {a.shape}")
        rows = chunk_rows
        if rows is not None and len(a) != sum(rows):
            raise ValueError(f"{name} must have one entry per sequence of X: expected "
                             f"{sum(rows)} rows, got {len(a)} (shape {a.shape})")
        if rows is None:
            workers = max(1, len(client.scheduler_info()["workers"]))
            rows = max(1, math.ceil(math.ceil(len(a) / workers) / multiple) * multiple)
        arr = da.from_array(a, chunks=(rows,) + a.shape[1:])
    if arr.ndim not in ndim_ok:
        raise ValueError(f"{name} must be {' or '.join(f'{n}-D' for n in ndim_ok)}, got shape {arr.shape}")
    if any(math.isnan(s) for s in arr.shape):
        raise ValueError(f"{name} must have known chunk sizes (call compute_chunk_sizes())")
    if any(len(c) > 1 for c in arr.chunks[1:]):
        raise ValueError(f"{name} must be chunked along its first axis (N) only, got "
                         f"{tuple(len(c) for c in arr.chunks)} chunks per axis; rechunk with "
                         f"{name}.rechunk({{{', '.join(f'{i}: -1' for i in range(1, arr.ndim))}}})")
    return arr


def _check_rows(name: str, arr, N: int) -> None:
    if arr.shape[0] != N:
        raise ValueError(f"{name} must have one entry per sequence of X: expected {N} rows, "
                         f"got {arr.shape[0]} (shape {arr.shape})")


def _check_x(client, model, X, lengths, name="X", multiple: int = 1):
    X = _rows_array(client, name, X, (3,), multiple=multiple)
    if X.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {X.dtype}")
    F = model.input_size
    if X.shape[2] != F:
        raise ValueError(f"{name}.shape[2] must be equal to the first layer's input size. "
                         f"Expected {F}, got {X.shape[2]}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} must have at least one sequence and one time step, got shape {X.shape}")
    L = None
    if lengths is not None:
        L = _rows_array(client, "lengths", lengths, (1,))
        _check_rows("lengths", L, X.shape[0])
        if L.dtype.kind not in "iu":
            raise TypeError(f"lengths must have an integer dtype, got {L.dtype}")
        L = L.rechunk({0: X.chunks[0]})
    return X, L


# ---- predict ------------------------------------------------------------------------------
def predict(client, model, X, lengths=None, batch_size: int = 256):
    """Run ``model`` (a ``Sequential`` or a single nlstm layer) over X on the cluster.

    client: a connected ``dask.distributed.Client``.
    X: a Dask array (N, T, F) chunked along N only, or a NumPy array (chunked here: one
        chunk per worker, rounded up to a multiple of batch_size rows).
    lengths: optional (N,) Dask or NumPy ints, valid steps per row.
    batch_size: rows per forward within a chunk (as ``Sequential.predict``).

    Returns a lazy Dask array with X's chunks along N: for a ``Sequential`` what
    ``model.predict(X, lengths, batch_size=batch_size)`` returns ((N, O) or (N, T, O)),
    bit for bit when every chunk but the last is a multiple of batch_size rows (the
    BLAS rounds a product differently for other batch sizes: then to float rounding);
    for a layer its output y batch-first (N, T, D·O). The model goes to every worker
    once, as the bytes of ``nlstm.save`` in one key of the graph; a chunk or the model
    lost with a worker (even with every worker) is recomputed by Dask elsewhere.
    """
    _check_client(client)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    data = _model_bytes(model)  # unsaveable models fail here, before anything is sent
    if not isinstance(model, Sequential) and not hasattr(model, "num_directions"):
        raise TypeError(f"model must be a Sequential or a recurrent layer, got {type(model).__name__}")
    X, L = _check_x(client, model, X, lengths, multiple=int(batch_size))
    dtype = np.dtype(model.dtype)
    if isinstance(model, Sequential):
        O = model.output_size
        last = model.output == "last"
    else:
        O, last = model.output_size, False
    token = uuid.uuid4().hex
    # The model's bytes as a key of the graph, not a scattered future: Dask recomputes a
    # graph key lost with the workers that held it, while losing every copy of scattered
    # data cancels everything that reads it ("lost dependencies").
    blob = dask.delayed(data, name=f"nlstm-model-{token}")
    out = "ij" if last else "itj"
    args = [X, "itf"] + ([L, "i"] if L is not None else [])
    meta = np.empty((0,) * len(out), dtype)
    return da.blockwise(_predict_block, out, *args, new_axes={"j": O}, concatenate=True,
                        dtype=dtype, meta=meta, name=f"nlstm-predict-{token}",
                        data=blob, run_id=token, batch_size=int(batch_size),
                        has_lengths=L is not None)


def _predict_block(x, lengths=None, *, data, run_id, batch_size, has_lengths):
    model = _replica(run_id, data)
    if not has_lengths:
        lengths = None
    if isinstance(model, Sequential):
        return model.predict(x, lengths, batch_size=batch_size)
    # A single layer: its output y, batch-first.
    tm = not model.batch_first
    y = model.forward(x.transpose(1, 0, 2) if tm else x, lengths=lengths, train=False)[0]
    return np.ascontiguousarray(y.transpose(1, 0, 2)) if tm else y


# ---- fit: the workers' side ---------------------------------------------------------------
class _Shard:
    """The training rows one worker holds for a run, checked once, and its TBPTT state."""

    def __init__(self, X, Y, lengths):
        self.X, self.Y, self.lengths = X, Y, lengths
        self.state = None


def _build_shard(data, token, xs, ys, ls):
    model = _replica(token, data)
    X = np.concatenate(xs) if len(xs) > 1 else xs[0]
    Y = np.concatenate(ys) if len(ys) > 1 else ys[0]
    L = None if ls is None else (np.concatenate(ls) if len(ls) > 1 else ls[0])
    return _Shard(*model._prepare(X, Y, L))


def _shard_grad(shard: _Shard, data, token, weights, idx, t0, t1, first):
    """The gradient of the summed loss over rows ``idx`` of ``shard`` (steps t0..t1-1),
    at ``weights``: (flat gradient or None, summed loss, count, seconds)."""
    t_start = time.perf_counter()
    model = _replica(token, data)
    _unflat(weights, model.params)
    lb = None if shard.lengths is None else shard.lengths[idx]
    chunk = model._chunk(shard.X[idx], shard.Y[idx], lb, t0, t1)
    value, n, shard.state = model._chunk_grad(*chunk, None if first else shard.state, scale=1.0)
    grad = _flat(model.grads, model.dtype) if n else None
    return grad, value * n, n, time.perf_counter() - t_start


# ---- fit: the client's side ---------------------------------------------------------------
class _WorkersLost(Exception):
    """A worker that a step or a shard needed has left (the step can run again)."""


class _Stopped(Exception):
    """Training cannot go on: ``fit`` writes a checkpoint and reports the reason."""


MAX_RECOVERIES = 5  # recoveries in a row without a completed step before fit gives up


class _Trainer:
    """Owns the shards of one run: which worker holds which rows, the step on the cluster,
    and moving a lost worker's rows to the workers that are left."""

    def __init__(self, client, model: Sequential, run: FitRun, X, Y, L, worker_timeout: float,
                 workers: Optional[List[str]]):
        self.client, self.model, self.run = client, model, run
        self.worker_timeout, self.allowed = worker_timeout, workers
        self.token = uuid.uuid4().hex
        self.shards: List[dict] = []
        self._keep, self.blob = [], None
        try:
            self._start(model, X, Y, L, workers)
        except BaseException:
            self.close()
            raise

    def _start(self, model, X, Y, L, workers) -> None:
        client = self.client
        self._data = data = _model_bytes(model)
        [self.blob] = client.scatter([data], workers=workers, broadcast=True, hash=False)
        arrays = [a for a in (X, Y, L) if a is not None]
        # No worker restriction here: a restriction would stay with the chunks' keys, and a
        # chunk lost with its worker could then never be computed again.
        persisted = client.persist(arrays)
        self._keep = persisted  # the futures keep the chunks alive on the workers
        keys = [list(flatten(a.__dask_keys__())) for a in persisted]
        futures = {f.key: f for f in client.futures_of(persisted)}
        starts = np.concatenate([[0], np.cumsum(X.chunks[0])])
        # chunks[i] = (first row, end row, x future, y future, lengths future or None)
        self.chunks = [(int(starts[i]), int(starts[i + 1]),
                        *[futures[k[i]] for k in keys], *([None] if L is None else []))
                       for i in range(len(X.chunks[0]))]
        self.has_lengths = L is not None
        self.owner = np.empty(X.shape[0], np.int64)   # row -> shard index
        self.local = np.empty(X.shape[0], np.int64)   # row -> its position in that shard
        self.T = X.shape[1]
        self.steps_done, self.bytes_per_step, self.moves = 0, 0, 0
        self.seconds, self.compute_seconds = 0.0, 0.0
        self._recover()  # places every chunk: none is held yet

    def _alive(self) -> List[str]:
        alive = self.client.scheduler_info()["workers"]
        return sorted(w for w in alive if self.allowed is None or w in self.allowed)

    def _place(self, chunk_ids: List[int], workers: List[str]) -> None:
        """Group ``chunk_ids`` into shards on ``workers``: a chunk stays on a worker that holds
        it while that worker has less than its share, else goes to the least loaded."""
        if not workers:
            raise _WorkersLost("no workers")  # pragma: no cover - fit checks the workers first
        load = {w: sum(len(s["rows"]) for s in self.shards if s["worker"] == w) for w in workers}
        who = self.client.who_has([self.chunks[i][2] for i in chunk_ids])
        total = sum(self.chunks[i][1] - self.chunks[i][0] for i in chunk_ids) + sum(load.values())
        share = math.ceil(total / len(workers))
        groups: Dict[str, List[int]] = {}
        for i in chunk_ids:
            r0, r1, xf = self.chunks[i][:3]
            holders = [w for w in who.get(xf.key, ()) if w in load and load[w] + (r1 - r0) <= share]
            w = holders[0] if holders else min(workers, key=lambda w: (load[w], w))
            load[w] += r1 - r0
            groups.setdefault(w, []).append(i)
        new = []
        for w, ids in groups.items():
            xs, ys, ls = ([self.chunks[i][j] for i in ids] for j in (2, 3, 4))
            fut = self.client.submit(_build_shard, self.blob, self.token, xs, ys,
                                     ls if self.has_lengths else None, workers=[w],
                                     allow_other_workers=False, pure=False)
            rows = np.concatenate([np.arange(self.chunks[i][0], self.chunks[i][1]) for i in ids])
            new.append({"worker": w, "chunks": ids, "rows": rows, "future": fut})
        try:
            self._wait([s["future"] for s in new], groups)
        except BaseException:
            self.client.cancel([s["future"] for s in new])
            raise
        self.shards += new
        for k, s in enumerate(self.shards):
            self.owner[s["rows"]] = k
            self.local[s["rows"]] = np.arange(len(s["rows"]))

    def _wait(self, futures, workers) -> list:
        """The results of ``futures``, which run on ``workers``; _WorkersLost when one of
        those goes away. Errors of the tasks themselves (bad data, a non-finite loss) are
        raised as they are."""
        workers = set(workers)
        while True:
            try:
                wait(futures, timeout=0.5)
                break
            except TimeoutError:
                gone = workers - set(self._alive())
                if gone:
                    raise _WorkersLost(gone) from None
            except (CancelledError, FuturesCancelledError) as e:
                raise _WorkersLost(e) from None  # the scheduler forgot a task whose worker left
        results = []
        for f in futures:
            try:
                if f.status == "error":
                    exc = f.exception()
                    if isinstance(exc, KilledWorker):
                        raise _WorkersLost(exc)
                    raise exc
                if f.status != "finished":
                    raise _WorkersLost(f.status)
                results.append(f.result())
            except (CancelledError, FuturesCancelledError) as e:  # forgotten since wait returned
                raise _WorkersLost(e) from None
        return results

    def _recover(self) -> None:
        """Place every chunk that no live shard holds (all of them at the start; a departed
        worker's later) on the workers that are there, waiting up to ``worker_timeout``
        seconds for one to exist."""
        deadline = time.monotonic() + self.worker_timeout
        for _ in range(MAX_RECOVERIES):
            alive = self._alive()
            while not alive:
                if time.monotonic() > deadline:
                    raise _Stopped(f"no worker left for {self.worker_timeout:g} s")
                time.sleep(0.2)
                alive = self._alive()
            try:
                if self.blob.status != "finished":  # every copy of the model left
                    [self.blob] = self.client.scatter([self._data], workers=self.allowed,
                                                      broadcast=True, hash=False)
                lost = [s for s in self.shards if s["worker"] not in alive]
                self.shards = [s for s in self.shards if s["worker"] in alive]
                self.client.cancel([s["future"] for s in lost])
                self.moves += len(lost)
                held = set().union(*(set(s["chunks"]) for s in self.shards)) if self.shards else set()
                self._place([i for i in range(len(self.chunks)) if i not in held], alive)
                return
            except _WorkersLost:
                continue  # another worker left meanwhile: look again
        raise _Stopped(f"the rows of a lost worker could not be rebuilt after {MAX_RECOVERIES} "
                       f"tries (were they scattered rather than computed from a graph?)")

    def train_batch(self, idx: np.ndarray):
        """``_fit_loop``'s step: the global batch ``idx`` on the cluster. Returns (loss·count,
        count). A lost worker's rows move to the others and the batch starts again from the
        weights (and optimizer state) it started from."""
        model, run = self.model, self.run
        start = None
        if run.tbptt is not None:
            start = (model.state_dict(), run.opt.state_dict())
        for _ in range(MAX_RECOVERIES):
            try:
                return self._batch(idx)
            except _WorkersLost:
                if start is not None:
                    model.load_state_dict(start[0])
                    run.opt.load_state_dict(start[1])
                self._recover()
        raise _Stopped(f"workers kept leaving: {MAX_RECOVERIES} tries of one step failed")

    def _batch(self, idx: np.ndarray):
        model, run = self.model, self.run
        by_shard = [(k, self.local[idx[self.owner[idx] == k]]) for k in range(len(self.shards))]
        by_shard = [(k, rows) for k, rows in by_shard if len(rows)]
        total, count = 0.0, 0
        for j, (t0, t1) in enumerate(_chunk_bounds(self.T, run.tbptt)):
            t_step = time.perf_counter()
            weights = _flat(model.params, model.dtype)
            futures = [self.client.submit(_shard_grad, self.shards[k]["future"], self.blob,
                                          self.token, weights, rows, t0, t1, j == 0,
                                          workers=[self.shards[k]["worker"]],
                                          allow_other_workers=False, pure=False)
                       for k, rows in by_shard]
            results = self._wait(futures, [self.shards[k]["worker"] for k, _ in by_shard])
            n = sum(r[2] for r in results)
            self.bytes_per_step = weights.nbytes * 2 * len(futures)
            self.compute_seconds += max(r[3] for r in results)
            self.seconds += time.perf_counter() - t_step
            if n == 0:
                continue
            grad = np.zeros(weights.size, np.float64)
            for g, value, c, _ in results:
                if c:
                    grad += g
            grad *= 1.0 / n  # the mean over the global batch, as Sequential.fit's loss
            _unflat(grad, model.grads)
            model._apply_update(run.opt, run.clip_norm)
            total += sum(r[1] for r in results)
            count += n
            self.steps_done += 1
        return total, count

    def stats(self) -> dict:
        return {"steps": self.steps_done, "bytes_per_step": self.bytes_per_step,
                "seconds": self.seconds, "compute_seconds": self.compute_seconds,
                "workers_lost": self.moves, "shards": len(self.shards)}

    def close(self) -> None:
        """Release the run's data and replicas on the cluster."""
        # Only what this run made: the persisted chunks may be the caller's own (an already
        # persisted array has the same keys), so they are released by dropping the reference.
        futures = [s["future"] for s in self.shards] + ([self.blob] if self.blob is not None else [])
        self.client.cancel(futures)
        self._keep = []
        try:
            self.client.run(_forget, self.token)
        except Exception:  # a worker leaving now does not matter: its memory went with it
            pass


def _forget(token: str) -> None:
    with _REPLICAS_LOCK:
        _REPLICAS.pop(token, None)


# ---- checkpoints --------------------------------------------------------------------------
def _write_checkpoint(path: str, model: Sequential, run: FitRun) -> str:
    """The model, optimizer, schedule and the run's position, in one ``.npz`` (no pickle)."""
    opt = run.opt.state_dict()
    arrays = {"model": np.frombuffer(_model_bytes(model), np.uint8)}
    for k, s in opt["state"].items():
        for b, a in s.items():
            arrays[f"opt/{k}/{b}"] = a
    if run.order is not None:
        arrays["order"] = run.order
    if run.best_state is not None:
        for k, a in run.best_state.items():
            arrays[f"best/{k}"] = a
    header = {"format": CHECKPOINT_FORMAT, "n_rows": run.n_rows, "batch_size": run.batch_size,
              "epoch": run.epoch, "step": run.step, "total": run.total, "count": run.count,
              "history": run.history, "best": None if math.isinf(run.best) else run.best,
              "since_best": run.since_best, "elapsed": run.elapsed, "opt_steps": opt["steps"],
              "opt_lr": opt["lr"], "sched_epoch": None if run.sched is None else run.sched.last_epoch,
              "rng": run.rng.bit_generator.state}
    arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), np.uint8)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def _read_checkpoint(path: str, model: Sequential, run: FitRun) -> None:
    """Put ``model`` and ``run`` where the checkpoint at ``path`` left them; checks all first."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as z:
            header = json.loads(z["header"].tobytes().decode("utf-8"))
            if header.get("format") != CHECKPOINT_FORMAT:
                raise ValueError("not an nlstm.dask checkpoint")
            saved = _model_from_bytes(z["model"].tobytes())
            opt_state = {k: {b: z[f"opt/{k}/{b}"] for b in s} for k, s in run.opt.state.items()}
            order = z["order"] if "order" in z.files else None
            has_best = any(n.startswith("best/") for n in z.files)
            best_state = {k: z[f"best/{k}"] for k in model.params} if has_best else None
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"resume={path!r} is not a checkpoint of this model: {e}") from None
    # Check everything against this run first, so that a refused checkpoint changes nothing.
    shapes = {k: p.shape for k, p in model.params.items()}
    if {k: p.shape for k, p in saved.params.items()} != shapes or any(
            opt_state[k][b].shape != shapes[k] for k in opt_state for b in opt_state[k]):
        raise ValueError(f"resume={path!r} holds a model with other parameters than this one")
    if header["n_rows"] != run.n_rows or header["batch_size"] != run.batch_size:
        raise ValueError(f"resume={path!r} was made with {header['n_rows']} rows and batch_size "
                         f"{header['batch_size']}; this run has {run.n_rows} and {run.batch_size}")
    if set(header["history"]) != set(run.history):
        raise ValueError(f"resume={path!r} was made with{'out' if 'val_loss' in run.history else ''} "
                         f"validation_data; resume with the same arguments")
    model.load_state_dict(saved.state_dict())
    run.opt.load_state_dict({"steps": header["opt_steps"], "lr": header["opt_lr"], "state": opt_state})
    if run.sched is not None and header["sched_epoch"] is not None:
        run.sched.last_epoch = header["sched_epoch"]
    run.rng.bit_generator.state = header["rng"]
    run.epoch, run.step, run.order = header["epoch"], header["step"], order
    run.total, run.count, run.elapsed = header["total"], header["count"], header["elapsed"]
    run.history = header["history"]
    run.best = math.inf if header["best"] is None else header["best"]
    run.best_state, run.since_best = best_state, header["since_best"]


# ---- fit ----------------------------------------------------------------------------------
def fit(client, model: Sequential, X, Y, lengths=None, epochs: int = 10, batch_size: int = 32,
        validation_data: Optional[tuple] = None, seed: Optional[int] = None,
        early_stopping: Optional[int] = None, verbose="auto", optimizer="adam",
        lr: float = 1e-3, weight_decay: float = 0.0, clip_norm: Optional[float] = None,
        schedule=None, tbptt: Optional[int] = None, shuffle: bool = True,
        callback: Optional[Callable[[int, dict], Optional[bool]]] = None,
        checkpoint: Optional[str] = None, resume: Optional[str] = None,
        worker_timeout: float = 60.0, workers: Optional[Sequence[str]] = None,
        stats: Optional[dict] = None) -> dict:
    """Train ``model`` on the cluster of ``client``: ``Sequential.fit``'s arguments and
    history, data-parallel and synchronous.

    X: (N, T, F), Y and lengths: Dask arrays chunked along N only (Y and lengths are
        rechunked to X's chunks), or NumPy arrays (one chunk per worker). The rows stay on
        the workers that hold them; a chunk is one worker's (chunk X into at least as many
        pieces as there are workers, or some will idle).
    Every step draws the same global batch as ``Sequential.fit`` with the same seed; the
    per-worker gradients of the summed loss are added on the client (in float64) and
    divided by the global count, so the weights equal ``Sequential.fit``'s to float32
    rounding of the summation order, on any number of workers. Validation, the schedule,
    early stopping, the callback and the progress bar run on the client.
    Dropout masks are drawn on each worker for its own rows, so with ``Dropout`` layers
    (or a recurrent layer's ``dropout``) the weights differ from ``Sequential.fit``'s.

    A worker that leaves (killed, lost) is replaced: its rows are rebuilt on the workers
    left (or new ones) and the step (with tbptt: the batch) that was running starts again
    from the weights it started from. When no worker is left for ``worker_timeout``
    seconds, fit writes a checkpoint (to ``checkpoint``, else to a temporary file) and
    raises RuntimeError naming it; ``fit(..., resume=path)`` continues from it.
    checkpoint: also written at the end of every epoch when given. resume: a checkpoint
    written by this function for the same model, data size and batch size.

    workers: addresses of the workers to train on (default: all of the cluster's).
    stats: a dict to fill with what the run exchanged: "steps" (optimizer steps),
        "bytes_per_step" (weights out plus gradients back, all workers), "seconds" (of
        steps on the cluster), "compute_seconds" (the slowest worker's gradient time,
        summed over steps), "workers_lost" (shards moved after a worker left).

    Returns the history of ``Sequential.fit``. The client's ``model`` holds the weights.
    """
    _check_client(client)
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be an nlstm Sequential, got {type(model).__name__}")
    _model_bytes(model)  # unsaveable models fail before anything is sent
    X, L = _check_x(client, model, X, lengths)
    Y = _rows_array(client, "Y", Y, (1, 2, 3), None if isinstance(Y, da.Array) else X.chunks[0])
    _check_rows("Y", Y, X.shape[0])
    if L is not None:
        L = L.rechunk({0: X.chunks[0]})
    Y = Y.rechunk({0: X.chunks[0]})
    if not is_real(worker_timeout) or not worker_timeout >= 0:
        raise ValueError(f"worker_timeout must be a number of seconds >= 0, got {worker_timeout!r}")
    if workers is not None:
        if isinstance(workers, str) or not all(isinstance(w, str) for w in workers):
            raise TypeError("workers must be a list of worker addresses")
        workers = list(workers)
        missing = sorted(set(workers) - set(client.scheduler_info()["workers"]))
        if missing or not workers:
            raise ValueError(f"workers must name workers of the cluster; unknown: {missing}")
    if stats is not None and not isinstance(stats, dict):
        raise TypeError(f"stats must be a dict to fill, got {type(stats).__name__}")
    if isinstance(validation_data, (tuple, list)):
        validation_data = tuple(v.compute() if isinstance(v, da.Array) else v for v in validation_data)
    # Hold the model's lock as Sequential.fit does: other threads' calls on it wait.
    with model._lock:
        before = model.state_dict()
        run = model._fit_setup(X.shape[0], epochs=epochs, batch_size=batch_size,
                               validation_data=validation_data, seed=seed,
                               early_stopping=early_stopping, verbose=verbose, optimizer=optimizer,
                               lr=lr, weight_decay=weight_decay, clip_norm=clip_norm,
                               schedule=schedule, tbptt=tbptt, shuffle=shuffle, callback=callback)
        if resume is not None:
            _read_checkpoint(resume, model, run)
        try:
            trainer = _Trainer(client, model, run, X, Y, L, float(worker_timeout), workers)
        except _Stopped as e:
            model.load_state_dict(before)  # a checkpoint may have been loaded: undo it
            raise RuntimeError(f"nlstm.dask.fit: {e} while the training rows were being placed; "
                               f"nothing was trained") from None
        except BaseException:
            model.load_state_dict(before)
            raise
        after_epoch = None
        if checkpoint is not None:
            def after_epoch():
                _write_checkpoint(checkpoint, model, run)
        try:
            history = model._fit_loop(run, trainer.train_batch, after_epoch)
        except _Stopped as e:
            path = checkpoint
            if path is None:
                fd, path = tempfile.mkstemp(prefix="nlstm-dask-checkpoint-", suffix=".npz")
                os.close(fd)
            _write_checkpoint(path, model, run)
            raise RuntimeError(f"nlstm.dask.fit: {e}; the run stopped at epoch {run.epoch}, step "
                               f"{run.step}. A checkpoint is at {path}: continue with "
                               f"nlstm.dask.fit(..., resume={path!r})") from None
        finally:
            trainer.close()
        if stats is not None:
            stats.update(trainer.stats())
        return history
