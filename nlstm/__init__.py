"""nlstm: Numba-accelerated recurrent networks for CPUs."""
from ._threads import get_num_threads, set_num_threads
from .gru import GRU
from .lstm import LSTM
from .recurrent import RecurrentLayer
from .rnn import RNN

from ._version import __version__
from ._warmup import warmup

__all__ = ["LSTM", "GRU", "RNN", "RecurrentLayer", "set_num_threads", "get_num_threads", "warmup",
           "__version__"]
