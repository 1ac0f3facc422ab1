import os

# The tests run nlstm's two- and three-thread paths even on one CPU (or under taskset):
# Numba's thread ceiling is fixed when it is imported, from the CPUs available unless this
# says otherwise. The main thread runs two (Numba's count is per thread; threads a test
# starts begin at the ceiling).
os.environ.setdefault("NUMBA_NUM_THREADS", "3")

import numba  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from numba.core.runtime import _nrt_python  # noqa: E402

numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))

# The zero-allocation test reads Numba's runtime allocation counters.
_nrt_python.memsys_enable_stats()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def nan_filled_workspaces(monkeypatch):
    """Every workspace buffer and every fresh output array (y, final states) starts as NaN,
    so reading or returning an element that no kernel wrote fails deterministically instead
    of depending on what the allocator handed back."""
    import nlstm.recurrent

    def nan_buffer(shape, dtype):
        a = nlstm.recurrent.aligned_empty(shape, dtype)  # aligned, as the layers' own
        a.fill(np.nan)
        return a

    def nan_output(shape, dtype):
        a = np.empty(shape, dtype)
        a.fill(np.nan)
        return a

    monkeypatch.setattr(nlstm.recurrent, "_new_buffer", nan_buffer)
    monkeypatch.setattr(nlstm.recurrent, "_output_buffer", nan_output)
