"""nlstm: Numba-accelerated recurrent networks for CPUs."""
from ._threads import get_num_threads, set_num_threads
from .gru import GRU
from .lstm import LSTM
from .lnlstm import LayerNormLSTM
from .recurrent import RecurrentLayer
from .rnn import RNN
from .stream import Stream
from .linear import Dropout, Linear
from .losses import CrossEntropyLoss, MSELoss
from .optim import SGD, Adam, AdamW, CosineLR, StepLR, clip_grad_norm
from .model import Sequential
from .io import load, save
from .interop import from_keras, from_torch, to_torch
# The function (imported now: imported lazily, the submodule would take its name on the
# package); its classes are in the module, ``from nlstm.inspect import Trace``.
from .inspect import inspect

from ._version import __version__
from ._warmup import warmup

__all__ = ["LSTM", "LayerNormLSTM", "GRU", "RNN", "RecurrentLayer", "Stream", "set_num_threads",
           "get_num_threads", "warmup", "__version__"]
__all__ += ["Linear", "Dropout", "Sequential", "MSELoss", "CrossEntropyLoss", "SGD", "Adam",
            "AdamW", "StepLR", "CosineLR", "clip_grad_norm", "save", "load"]
__all__ += ["from_torch", "to_torch", "from_keras", "inspect"]


def __getattr__(name):
    # ``nlstm.onnx`` works without ``import nlstm.onnx``; the onnx package itself is only
    # imported when one of its functions runs. ``nlstm.dask`` imports dask when first used.
    if name in ("onnx", "dask"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'nlstm' has no attribute {name!r}")
