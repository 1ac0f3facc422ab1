"""The one place where nlstm's compilation policy lives.

Every kernel is compiled lazily (on the first call with a new signature), cached on
disk, and uses the same fastmath flags. ``nnan``/``ninf`` are left out so that NaN and
Inf still propagate as IEEE says; the flags kept allow reassociation and FMA contraction,
which is what lets LLVM vectorise the gate loops and the dot products.

The on-disk cache of these kernels lives in a user cache directory (``cache_dir()``), one
folder per nlstm, Numba and Python version and install location, so a read-only install
still caches, an upgrade never loads stale code, and two installs (two virtual
environments, a checkout beside an installed copy) never overwrite each other's entries.
Each entry is keyed to a hash of every source file of this folder (Numba's own key, the
function's file alone, misses edits to the helpers it inlines).

When a kernel really compiles (not when it loads from that cache), nlstm says so once per
process on stderr (``NLSTM_COMPILE_NOTICE=0`` silences it) and records it in ``compiled``.
"""
import hashlib
import os
import sys

import numba
import numba.core.event

from .._version import __version__

_KERNELS_DIR = os.path.dirname(os.path.abspath(__file__))


def cache_dir() -> str:
    """Where nlstm's compiled kernels are cached: ``$NLSTM_CACHE_DIR`` if set, else the user
    cache directory (``~/.cache/nlstm/...`` on Linux), in a folder of its own for this
    install."""
    root = os.environ.get("NLSTM_CACHE_DIR")
    if not root:
        from numba.misc.appdirs import user_cache_dir
        root = user_cache_dir("nlstm")
    # Numba names an entry by its file and function, not its path: installs sharing a folder
    # would overwrite each other's index (each run of the other one recompiling everything),
    # and one whose package goes by another name makes the other's index unreadable.
    where = hashlib.sha256(_KERNELS_DIR.encode()).hexdigest()[:12]
    tag = (f"nlstm-{__version__}-numba-{numba.__version__}-py{sys.version_info[0]}"
           f"{sys.version_info[1]}-{where}")
    return os.path.join(root, tag)


_stamp: tuple = (None, None)


def _kernels_stamp() -> str:
    """A hash of every source file of this folder (recomputed when one of them changes)."""
    global _stamp
    files = sorted(f for f in os.listdir(_KERNELS_DIR) if f.endswith(".py"))
    key = tuple((f, os.stat(os.path.join(_KERNELS_DIR, f)).st_mtime_ns) for f in files)
    if _stamp[0] != key:
        h = hashlib.sha256()
        for f in files:
            with open(os.path.join(_KERNELS_DIR, f), "rb") as fh:
                h.update(f.encode() + b"\0" + fh.read())
        _stamp = (key, h.hexdigest())
    return _stamp[1]


_writable: set = set()  # cache folders proven writable in this process
_last_decorated: tuple = (None, 0)  # (file, first line) of the last kernel given a stamp


def _stamp_for(py_file: str, lineno: int) -> str:
    """``_kernels_stamp()`` for a kernel being decorated, without stat-ing every file for
    each of the ~180 kernels an import decorates: a module's kernels are decorated top to
    bottom, so a kernel below the last one in the same file is the same import, in which no
    file changed. Any other kernel (another file, a reload, a kernel made by a factory)
    stamps afresh."""
    global _last_decorated
    last_file, last_line = _last_decorated
    same_import = _stamp[1] is not None and last_file == py_file and lineno > last_line
    _last_decorated = (py_file, lineno)
    return _stamp[1] if same_import else _kernels_stamp()


def _install_cache_locator() -> None:
    """Point Numba's cache for the files of this folder (and only them) at ``cache_dir()``.
    Uses Numba's locator hook; if a Numba version lacks it, its default locations apply."""
    try:
        from numba.core import caching
        base = (caching._SourceFileBackedLocatorMixin, caching._CacheLocator)
        impl = caching.CacheImpl
    except AttributeError:
        return

    class NlstmCacheLocator(*base):
        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = os.path.join(cache_dir(), "kernels")

        def get_cache_path(self):
            return self._cache_path

        def get_source_stamp(self):
            # Numba stamps an entry with its own file only; kernels inline helpers from the
            # other files here, so an edit to any of them must invalidate every entry.
            return _stamp_for(self._py_file, self._lineno)

        def ensure_cache_path(self):
            # Numba proves the folder writable by creating a file in it, for every kernel
            # it decorates (a fifth of import time): once per folder and process is enough.
            if self._cache_path not in _writable:
                super().ensure_cache_path()
                _writable.add(self._cache_path)

        @classmethod
        def from_function(cls, py_func, py_file):
            if os.path.dirname(os.path.abspath(py_file)) != _KERNELS_DIR:
                return None
            return super().from_function(py_func, py_file)  # None if not writable

    if not any(getattr(c, "__name__", "") == "NlstmCacheLocator" for c in impl._locator_classes):
        impl._locator_classes.insert(0, NlstmCacheLocator)


_install_cache_locator()


_OWN_PREFIX = "_ZN5nlstm7kernels"  # Numba's mangled names of this folder's functions


def _install_private_helpers() -> None:
    """Make the helper kernels a kernel calls private to that kernel's compiled code.

    Numba links a copy of every helper into each caller, as ``linkonce_odr`` (a weak
    symbol), and the JIT binds a weak symbol to the first definition it loaded: the
    helper's own build when this process compiled the caller (it compiles the helper
    first), the copy inside a cached kernel when it loaded the caller from the disk cache.
    The two builds round differently (the copy is optimised again inside the caller), so a
    first run and later ones differed in the last bit (bench/RESULTS.md, stop 45). With
    this folder's helper copies made internal once linked (and before the caller is
    optimised), each kernel always runs its own copies, compiled or loaded. Other
    packages' functions keep Numba's linkage.

    Two kernels that must give the same bits (the LayerNorm unit split and the one-row
    kernel) then each optimise their own copy of a shared helper, inlined or not, so such
    a helper's sums must not leave their order to LLVM's reassociation (``lnlstm.moments``
    sums on explicit vectors)."""
    from llvmlite import binding as ll
    from numba.core import codegen

    cls = getattr(codegen, "CPUCodeLibrary", None)
    optimize = getattr(cls, "_optimize_final_module", None)
    if optimize is None or getattr(optimize, "_nlstm", False):
        # A Numba without this hook still runs nlstm; only a first run's last bits may
        # then differ from later runs' (tests/test_reproducibility.py says so).
        return

    def _optimize_final_module(self):
        for fn in self._final_module.functions:
            if (not fn.is_declaration and fn.linkage == ll.Linkage.linkonce_odr
                    and fn.name.startswith(_OWN_PREFIX)):
                fn.linkage = "internal"
        optimize(self)

    _optimize_final_module._nlstm = True
    cls._optimize_final_module = _optimize_final_module


_install_private_helpers()

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})


def options() -> dict:
    """The compile options of every kernel but the on-disk cache.

    Kernels run without Numba's reference counting (``_nrt=False``): they allocate nothing
    and every array they see outlives the call (the layer holds it), yet with it each view
    a kernel made (a row, a gate block) and each array it passed to another kernel cost a
    pair of atomic operations wherever LLVM's pruning could not pair them up (inside
    branches, across calls): 10-80 pairs a row and step in the LayerNorm, zoneout and GRU
    kernels and 20 in the panel tiles of the input projection (counted), 19% of the plain
    LSTM's time and 42% of the LayerNorm cell's at M on one thread (sampled). The ``prange``
    drivers keep it."""
    return dict(nogil=True, fastmath=set(FASTMATH), error_model="numpy", boundscheck=False,
                _nrt=False)


def kernel(fn):
    """``numba.njit`` with nlstm's policy: cached, nogil, fastmath without nnan/ninf, no
    reference counts."""
    return numba.njit(cache=True, **options())(fn)


def inlined_kernel(fn):
    """``kernel``, inlined into each caller by Numba: for the micro-kernels. Called as a
    function, each call passes every array as its seven fields and costs about as much as
    a short tile's sums (the panel products ran at 57-87 GFLOP/s that way, 81-140 inlined,
    the same bits)."""
    return numba.njit(cache=True, inline="always", **options())(fn)


def parallel_kernel(fn):
    """``kernel``'s policy with ``parallel=True``: a driver whose ``prange`` loop Numba runs
    on its threading layer (see nlstm._threads)."""
    return numba.njit(parallel=True, cache=True, nogil=True, fastmath=set(FASTMATH),
                      error_model="numpy", boundscheck=False)(fn)


# ---- telling the user when kernels compile ---------------------------------------------------
# A first run compiles for 20-50 s; silence then looks like a hang. Numba broadcasts a
# "numba:compile" event only when it really compiles (a cache load does not), and only on
# that slow path: once a kernel is compiled or loaded, calls never reach this code.
compiled: list = []  # (kernel, argument dtypes, seconds) compiled in this process, in order
_notice_shown = False


def _ours(dispatcher) -> bool:
    """Whether ``dispatcher`` is one of nlstm's kernels. Not the lambdas of its
    ``@overload``s (tanh, sigmoid, cast_like): Numba compiles those, uncached, into each
    function that calls them, the user's own too, where no nlstm kernel is compiling."""
    fn = getattr(dispatcher, "py_func", None)
    # (a function made by exec() without __name__ in its globals has __module__ None)
    module = getattr(fn, "__module__", None)
    return (isinstance(module, str) and module.startswith(__package__ + ".")
            and getattr(fn, "__name__", "") != "<lambda>")


def _describe(dispatcher, args) -> tuple:
    """("lstm.lstm_forward", "float32") for a kernel and its argument types."""
    fn = dispatcher.py_func
    name = f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"
    dtypes = sorted({str(a.dtype) for a in args if hasattr(a, "dtype") and hasattr(a, "ndim")
                     and str(a.dtype).startswith("float")})
    return name, "/".join(dtypes)


def notices_enabled() -> bool:
    """False when ``NLSTM_COMPILE_NOTICE=0`` asks for silence."""
    return os.environ.get("NLSTM_COMPILE_NOTICE", "1").strip().lower() not in ("0", "false", "no", "off")


class _CompileListener(numba.core.event.Listener):
    """Records each nlstm kernel Numba compiles (the outermost one: the helpers a kernel
    inlines compile inside it) and says so on stderr the first time in a process."""

    def __init__(self):
        self._open: list = []  # (dispatcher, start) of nlstm kernels being compiled, outermost first

    def on_start(self, event):
        global _notice_shown
        d = event.data["dispatcher"]
        if not _ours(d):
            return
        import time
        self._open.append((d, time.perf_counter()))
        if len(self._open) > 1 or _notice_shown or not notices_enabled():
            return
        _notice_shown = True
        name, dtypes = _describe(d, event.data["args"])
        if type(getattr(d, "_cache", None)).__name__ == "NullCache":
            later = (f"the kernel cache {cache_dir()} is not writable, so every run compiles "
                     f"(set NLSTM_CACHE_DIR to a writable directory)")
        else:
            later = "later runs load them from the cache"
        print(f"nlstm: compiling kernels for this machine (starting with {name}"
              f"{' for ' + dtypes if dtypes else ''}); this happens once per machine and nlstm "
              f"version and can take a minute; {later}", file=sys.stderr, flush=True)

    def on_end(self, event):
        d = event.data["dispatcher"]
        if not _ours(d) or not self._open or self._open[-1][0] is not d:
            return
        import time
        _, start = self._open.pop()
        if not self._open:  # (Numba 0.68's Event.is_failed reads inverted: not used)
            compiled.append((*_describe(d, event.data["args"]), time.perf_counter() - start))


numba.core.event.register("numba:compile", _CompileListener())
