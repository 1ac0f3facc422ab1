"""What keeps a shared object's state whole: a lock per object for each call (see the
README's rule for threads), the thread that may backpropagate a training forward (a
training forward and its backward are two calls, which a lock cannot join), and
gradients put back when an exception or KeyboardInterrupt stops a backward half-way.
"""
from __future__ import annotations

import functools
import os
import threading
import weakref
from contextlib import contextmanager
from typing import Dict, Mapping, Optional

import numpy as np


def locked(method):
    """Run ``method`` holding ``self._lock``: calls from several threads take turns."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        lock = self._lock
        lock.acquire()  # (a with statement costs 0.08 µs more: see Stream.__call__)
        try:
            return method(self, *args, **kwargs)
        finally:
            lock.release()
    return run


class Lockable:
    """An object with a lock for its calls (``self._lock``, made by ``_new_lock``). It
    pickles without the lock (a lock cannot be pickled; multiprocessing sends layers and
    models to workers) and gets a fresh one when unpickled, and a child process made by
    fork() gets fresh locks for every such object (a lock held by another thread of the
    parent at the fork would never be released in the child)."""

    _lock_type = staticmethod(threading.Lock)

    def _new_lock(self) -> None:
        self._lock = self._lock_type()
        _live.add(self)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state["_train_thread"] = None  # a thread of this process means nothing in another
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._new_lock()


_live: "weakref.WeakSet[Lockable]" = weakref.WeakSet()


def _fresh_locks_in_child() -> None:
    for obj in list(_live):
        obj._lock = obj._lock_type()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_locks_in_child)


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
