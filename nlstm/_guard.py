"""What keeps a shared object's state whole: the thread that may backpropagate a training
forward, and gradients put back when a backward does not finish.

Layers and models lock their own workspace for each call (see the README's rule for
threads); these helpers cover what a lock cannot: a training forward and its backward are
two calls, and an exception or KeyboardInterrupt may stop a backward half-way.
"""
from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from typing import Dict, Mapping, Optional

import numpy as np


def locked(method):
    """Run ``method`` holding ``self._lock``: calls from several threads take turns."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return run


class Lockable:
    """Pickles without its lock (a lock cannot be pickled; multiprocessing sends layers
    and models to workers) and gets a fresh one when unpickled."""

    _lock_type = staticmethod(threading.Lock)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state["_train_thread"] = None  # a thread of this process means nothing in another
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = self._lock_type()


def check_training_thread(obj, owner: Optional[int]) -> None:
    """Raise RuntimeError if the training forward that ``obj.backward`` would use ran on
    another thread: that thread's forward replaced the one this thread made, and its
    gradients would be another batch's."""
    if owner is not None and owner != threading.get_ident():
        raise RuntimeError(
            f"{obj!r}: backward() was called from another thread than the training forward "
            "it would backpropagate (a shared object keeps one training forward at a time); "
            "give each training thread its own layer or model")


class GradBackup:
    """A copy of a set of gradient arrays, made before a backward and written back if the
    backward stops early, so the gradients are either all accumulated or left as they were.
    The copy's arrays are allocated once and reused (a copy of the gradients costs about
    as much as one optimizer pass, small beside a backward over T·B rows)."""

    def __init__(self):
        self._copies: Dict[str, np.ndarray] = {}

    @contextmanager
    def guard(self, grads: Mapping[str, np.ndarray]):
        copies = self._copies
        for k, g in grads.items():
            c = copies.get(k)
            if c is None or c.shape != g.shape or c.dtype != g.dtype:
                c = copies[k] = np.empty_like(g)
            np.copyto(c, g)
        try:
            yield
        except BaseException:
            for k, g in grads.items():
                np.copyto(g, copies[k])
            raise
