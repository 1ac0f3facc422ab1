"""nlstm: Numba-accelerated recurrent networks for CPUs."""
from ._threads import get_num_threads, set_num_threads
from .gru import GRU
from .lstm import LSTM
from .recurrent import RecurrentLayer
from .rnn import RNN

__version__ = "0.1.0"

__all__ = ["LSTM", "GRU", "RNN", "RecurrentLayer", "set_num_threads", "get_num_threads", "__version__"]
