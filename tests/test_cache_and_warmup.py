"""The kernel cache location, and warmup()."""
import os
import re
import subprocess
import sys

import pytest

import nlstm
from nlstm.kernels import config


def test_cache_dir_is_user_level_and_versioned(monkeypatch, tmp_path):
    monkeypatch.setenv("NLSTM_CACHE_DIR", str(tmp_path))
    d = config.cache_dir()
    assert d.startswith(str(tmp_path))
    assert nlstm.__version__ in d and "numba" in d
    monkeypatch.delenv("NLSTM_CACHE_DIR")
    assert "nlstm" in config.cache_dir() and not config.cache_dir().startswith(
        os.path.dirname(nlstm.__file__))


def test_each_install_caches_in_a_folder_of_its_own(monkeypatch, tmp_path):
    """Two installs of the same versions (two virtual environments, a renamed copy of the
    package) must not share Numba's index files, which name an entry by file and function
    only: they would overwrite each other's, or fail to unpickle the other's types."""
    monkeypatch.setenv("NLSTM_CACHE_DIR", str(tmp_path))
    here = config.cache_dir()
    assert config.cache_dir() == here  # the same install: the same folder, every call
    monkeypatch.setattr(config, "_KERNELS_DIR", str(tmp_path / "elsewhere" / "nlstm" / "kernels"))
    there = config.cache_dir()
    assert there != here and os.path.dirname(there) == os.path.dirname(here) == str(tmp_path)


def test_kernels_cache_to_the_given_directory_in_a_fresh_process(tmp_path):
    """...and a first run says on stderr, once, that it compiles and what; warmup() reports
    what it compiled and how long it took, and a call at the grid's M after it compiles
    nothing more; a later run loads from the cache and says nothing."""
    code = ("import numpy as np, nlstm; from nlstm.kernels import blocks, config\n"
            "r = nlstm.warmup(streaming=False)\n"
            "print(repr(r)); print(r)\n"
            "mark = len(config.compiled)\n"
            "nlstm.LSTM(64, 128, seed=0)(np.zeros((100, 16, 64), np.float32))  # the grid's M\n"
            "print('after warmup:', [k for k, _, _ in config.compiled[mark:]])\n"
            "nlstm.LSTM(2, 3, dtype=np.float64)(np.zeros((2, 1, 2)))  # compiles again: no second notice\n")
    env = dict(os.environ, NLSTM_CACHE_DIR=str(tmp_path))
    env.pop("NLSTM_COMPILE_NOTICE", None)
    first = subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=600,
                           capture_output=True, text=True)
    cached = [f for _, _, files in os.walk(tmp_path) for f in files]
    assert any(f.startswith("lstm.lstm_forward") and f.endswith(".nbi") for f in cached), cached
    assert any(f.endswith(".nbc") for f in cached)
    notices = [l for l in first.stderr.splitlines() if "compiling" in l]
    assert len(notices) == 1, first.stderr
    # the first kernel a one-row forward compiles (its input projection runs by NumPy)
    assert notices[0].startswith("nlstm: compiling kernels for this machine (starting with "
                                 "lstm.lstm_forward_row for float32)") \
        and "once per machine and nlstm version" in notices[0], notices
    assert "compiled=[('lstm.lstm_forward_row', 'float32', " in first.stdout \
        and "('lstm.lstm_forward', 'float32', " in first.stdout, first.stdout
    assert re.search(r"warmup took [0-9.]+ s, [0-9.]+ s of it compiling \d+ kernels? .*lstm.lstm_forward "
                     r"\(float32\)", first.stdout), first.stdout
    assert "after warmup: []" in first.stdout, first.stdout  # M compiled nothing more

    again = subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=600,
                           capture_output=True, text=True)
    assert "compiling" not in again.stderr, again.stderr
    assert "compiled=[])" in again.stdout and "every kernel came from the cache" in again.stdout, again.stdout


def test_the_compile_listener_is_off_the_hot_path(monkeypatch):
    """Once a kernel is compiled (or loaded), calling it never reaches the listener."""
    import numpy as np
    from numba.core import event

    layer = nlstm.LSTM(2, 3, seed=0)
    x = np.zeros((4, 1, 2), np.float32)
    layer(x)
    listener = next(l for l in event._registered["numba:compile"] if type(l).__name__ == "_CompileListener")
    calls = []
    monkeypatch.setattr(listener, "on_start", lambda ev: calls.append(ev))
    for _ in range(3):
        layer(x)
    assert calls == []
    report = nlstm.warmup()
    assert report.compiled == () and report.compile_seconds == 0 and "from the cache" in str(report)


def test_warmup_runs_and_rejects_unknown_cells():
    assert nlstm.warmup(cells=("LSTM", "GRU", "RNN"), dtypes=("float32",), training=True) >= 0
    with pytest.raises(ValueError, match="cells"):
        nlstm.warmup(cells=("Transformer",))


def test_an_edit_to_any_kernel_file_changes_every_kernels_cache_stamp(monkeypatch, tmp_path):
    """Kernels inline helpers from other files (blocks.py, slots.py...); Numba's own stamp,
    the function's file alone, would keep serving code compiled against the old helpers."""
    import shutil
    for f in os.listdir(config._KERNELS_DIR):
        if f.endswith(".py"):
            shutil.copy(os.path.join(config._KERNELS_DIR, f), tmp_path / f)
    monkeypatch.setattr(config, "_KERNELS_DIR", str(tmp_path))
    monkeypatch.setattr(config, "_stamp", (None, None))
    before = config._kernels_stamp()
    assert config._kernels_stamp() == before
    with open(tmp_path / "blocks.py", "a") as fh:
        fh.write("\n# an edit\n")
    os.utime(tmp_path / "blocks.py", ns=(1, 1))  # a different mtime even on a coarse clock
    after = config._kernels_stamp()
    assert after != before
    from numba.core import caching
    locator = next(c for c in caching.CacheImpl._locator_classes
                   if c.__name__ == "NlstmCacheLocator")

    def stamp_of(file, line):
        loc = locator.__new__(locator)
        loc._py_file, loc._lineno = str(tmp_path / file), line
        return loc.get_source_stamp()

    # One import decorates a file's kernels top to bottom: the stamp is taken once for them.
    monkeypatch.setattr(config, "_last_decorated", (None, 0))
    assert stamp_of("lstm.py", 10) == after
    with open(tmp_path / "blocks.py", "a") as fh:
        fh.write("\n# a second edit\n")
    os.utime(tmp_path / "blocks.py", ns=(2, 2))
    assert stamp_of("lstm.py", 20) == after
    # A kernel of another file, or a reload (the same file from the top), stamps afresh.
    newer = config._kernels_stamp()
    assert newer != after
    assert stamp_of("gru.py", 30) == newer
    with open(tmp_path / "blocks.py", "a") as fh:
        fh.write("\n# a third edit\n")
    os.utime(tmp_path / "blocks.py", ns=(3, 3))
    assert stamp_of("gru.py", 5) == config._kernels_stamp() != newer


def test_a_cache_folder_is_proven_writable_once_per_process(monkeypatch, tmp_path):
    """Numba writes a temporary file to prove the folder writable; nlstm does that once per
    folder, not for each of the ~180 kernels an import decorates."""
    from numba.core import caching
    locator = next(c for c in caching.CacheImpl._locator_classes
                   if c.__name__ == "NlstmCacheLocator")
    made = []
    real = caching._CacheLocator.ensure_cache_path
    monkeypatch.setattr(caching._CacheLocator, "ensure_cache_path",
                        lambda self: (made.append(self._cache_path), real(self)))
    monkeypatch.setattr(config, "_writable", set())
    for folder in ("a", "a", "b", "a"):
        loc = locator.__new__(locator)
        loc._cache_path = str(tmp_path / folder)
        loc.ensure_cache_path()
    assert made == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert os.path.isdir(tmp_path / "b")


def test_warmup_compiles_the_drivers_that_split_a_batch_over_threads():
    from nlstm.kernels import parallel
    before = nlstm.get_num_threads()
    nlstm.set_num_threads(2)
    try:
        nlstm.warmup(("RNN",), dtypes=("float64",), training=True, streaming=False)
    finally:
        nlstm.set_num_threads(before)
    assert parallel._rnn_forward.signatures and parallel._rnn_backward.signatures


def test_a_first_one_row_inference_compiles_only_what_it_runs(tmp_path):
    """Numba compiles every path of a kernel, run or not: the first-ever float32 S inference
    (one row, the plain cell) and stream step must compile only the row kernels (and the
    packing of the one-row tile; the input projection runs by NumPy on one thread), not
    lstm_forward's other paths (the variants' general activations in ``_pointwise``, the
    tiles, the blocks of rows: 22 of the 27 s that first call took); likewise the GRU's and
    the RNN's first one-row inference."""
    code = ("import numpy as np, numba.core.event as ev\n"
            "names = []\n"
            "class L(ev.Listener):\n"
            "    def on_start(self, e):\n"
            "        f = e.data['dispatcher'].py_func\n"
            "        names.append(f.__module__.rsplit('.', 1)[-1] + '.' + f.__name__)\n"
            "    def on_end(self, e): pass\n"
            "ev.register('numba:compile', L())\n"
            "import nlstm; from nlstm.kernels import config\n"
            "m = nlstm.LSTM(4, 16, seed=0)\n"
            "m(np.ones((5, 1, 4), np.float32)); m.stream()(np.ones(4, np.float32))\n"
            "nlstm.GRU(4, 16)(np.ones((5, 4), np.float32)); nlstm.RNN(4, 16)(np.ones((5, 4), np.float32))\n"
            "print(sorted(k for k, _, _ in config.compiled)); print(sorted(set(names)))\n")
    env = dict(os.environ, NLSTM_CACHE_DIR=str(tmp_path), NLSTM_COMPILE_NOTICE="0")
    out = subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=600,
                         capture_output=True, text=True).stdout.splitlines()
    # (and the one-row tiles' packing: H = 16 is a multiple of the vector width, and the
    # GRU's and RNN's rows run on panels at any H)
    # (the stream's step kernel takes its arguments as one table: lstm_step_table)
    assert out[0] == ("['gru.gru_forward_row', 'lstm.lstm_forward_row', 'lstm.lstm_step_table', "
                      "'rnn.rnn_forward_row', 'tiles.pack_gates_part', "
                      "'tiles.pack_panels_part']"), out
    nested = out[1]
    for name in ("lstm._pointwise", "lstm.lstm_forward'", "lstm._forward_tiled",
                 "blocks.add_recurrent", "lstm.lstm_step_options", "gru.gru_forward'",
                 "rnn.rnn_forward'", "tiles.panel_rows"):
        assert name not in nested, (name, nested)
    assert "lstm._forward_row" in nested, nested  # (the cell's math is inlined: no compile of its own)
