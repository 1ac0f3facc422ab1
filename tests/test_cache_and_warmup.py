"""The kernel cache location, and warmup()."""
import os
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


def test_kernels_cache_to_the_given_directory_in_a_fresh_process(tmp_path):
    code = "import numpy as np, nlstm; nlstm.LSTM(2, 3)(np.zeros((2, 1, 2)))"
    env = dict(os.environ, NLSTM_CACHE_DIR=str(tmp_path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    cached = [f for _, _, files in os.walk(tmp_path) for f in files]
    assert any(f.startswith("lstm.lstm_forward") and f.endswith(".nbi") for f in cached), cached
    assert any(f.endswith(".nbc") for f in cached)


def test_warmup_runs_and_rejects_unknown_cells():
    assert nlstm.warmup(cells=("LSTM", "GRU", "RNN"), dtypes=("float32",), training=True) >= 0
    with pytest.raises(ValueError, match="cells"):
        nlstm.warmup(cells=("Transformer",))
