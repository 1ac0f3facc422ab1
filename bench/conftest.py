"""pytest-benchmark runs of nlstm alone: ``python -m pytest bench`` (never part of the tests run).

Threads: NLSTM_BENCH_THREADS (default 2). Compare runs with ``--benchmark-compare``.
"""
import os

import pytest


def pytest_configure(config):
    import nlstm
    nlstm.set_num_threads(int(os.environ.get("NLSTM_BENCH_THREADS", "2")))


@pytest.fixture(scope="session")
def bench_threads():
    import nlstm
    return nlstm.get_num_threads()
