import numpy as np
import pytest
from numba.core.runtime import _nrt_python

# The zero-allocation test reads Numba's runtime allocation counters.
_nrt_python.memsys_enable_stats()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
