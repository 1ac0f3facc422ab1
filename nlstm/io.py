"""Saving and loading models: one ``.npz`` file, weights plus a JSON config, nothing executable.

Layout of the file (a plain, uncompressed NumPy ``.npz`` zip):

- ``__nlstm__``: uint8 bytes of UTF-8 JSON:
  ``{"format": "nlstm", "format_version": 1, "nlstm_version": ..., "class": "Sequential",
  "config": <get_config()>, "metadata": {...}}``
- one array per parameter, under its ``state_dict()`` key, in the model's dtype.

Loading uses ``np.load(..., allow_pickle=False)`` and only ever constructs nlstm classes
named in ``nlstm.model.LAYER_CLASSES`` (or ``Sequential``), so a file from an untrusted
source cannot run code. Anything malformed raises ``ValueError``.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import Mapping, Optional

import numpy as np

FORMAT = "nlstm"
FORMAT_VERSION = 1
CONFIG_KEY = "__nlstm__"
# Config fields that size parameter arrays; bounded by the weights in the file before any
# layer is built, so a tampered config cannot ask for terabytes.
_SIZE_FIELDS = ("input_size", "hidden_size", "proj_size", "in_features", "out_features")


def _class_name(model) -> str:
    from .model import LAYER_CLASSES, Sequential

    name = type(model).__name__
    if not (isinstance(model, Sequential) or name in LAYER_CLASSES):
        raise TypeError(f"model must be an nlstm Sequential or layer, got {name}")
    return name


def save(model, path, metadata: Optional[Mapping] = None) -> str:
    """Write ``model`` (a ``Sequential`` or a single nlstm layer) to ``path`` atomically.

    The file is written under a temporary name in the same directory, flushed to disk and
    renamed over ``path``, so an interrupted save leaves any previous file intact.
    metadata: JSON-compatible extras (defaults to ``model.metadata`` when it has one).
    Returns the path written.
    """
    path = os.fspath(path)
    if metadata is None:
        metadata = getattr(model, "metadata", None) or {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "nlstm_version": _version(),
              "class": _class_name(model), "config": model.get_config(), "metadata": dict(metadata)}
    try:
        text = json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config and metadata must be JSON-compatible (no NaN): {e}") from None
    arrays = {CONFIG_KEY: np.frombuffer(text.encode("utf-8"), np.uint8)}
    arrays.update(model.state_dict())
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_write(path, write) -> str:
    """Call ``write(f)`` on a temporary file in ``path``'s directory, make it durable, then
    rename it over ``path``: an interrupted write leaves any previous file intact and no
    temporary file behind. Returns the path."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)
    return path


def _version() -> str:
    from . import __version__

    return __version__


def _file_mode(path: str) -> int:
    """Keep the mode of the file being replaced; else what the umask allows (mkstemp uses 0600)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable where the OS allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Invalid(Exception):
    """A reason a file is not a valid model; becomes the ValueError's message."""


def load(path):
    """Read a model written by :func:`save`. Returns a ``Sequential`` (with its ``metadata``)
    or the single layer that was saved.

    Raises FileNotFoundError (or another OSError) when the file cannot be opened, and
    ValueError when it is not a valid nlstm model file: corrupt, truncated, tampered with,
    or from a newer format version.
    """
    path = os.fspath(path)
    with open(path, "rb"):  # OSErrors (missing file, directory, permissions) stay OSErrors
        pass
    try:
        return _load(path)
    except FileNotFoundError:
        raise
    except (_Invalid, ValueError, TypeError, KeyError, IndexError, EOFError, MemoryError,
            OverflowError, zipfile.BadZipFile, zipfile.LargeZipFile, OSError, UnicodeDecodeError,
            RecursionError, NotImplementedError) as e:
        reason = str(e) or type(e).__name__
        raise ValueError(f"{path} is not a valid nlstm model file: {reason}") from None


def _load(path: str):
    from .model import Sequential, layer_class

    if not zipfile.is_zipfile(path):
        raise _Invalid("not an .npz (zip) archive; it may be truncated or not a model")
    with np.load(path, allow_pickle=False) as npz:
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise _Invalid("not an .npz archive")
        names = list(npz.files)
        if CONFIG_KEY not in names:
            raise _Invalid(f"no {CONFIG_KEY} config entry")
        shapes = {n: _member_header(npz.zip, n) for n in names}
        raw = npz[CONFIG_KEY]
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise _Invalid("the config entry must be UTF-8 bytes")
        try:
            header = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _Invalid(f"the config is not valid JSON: {e}") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise _Invalid("the config does not name the nlstm format")
        version = header.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise _Invalid(f"bad format_version {version!r}")
        if version > FORMAT_VERSION:
            raise _Invalid(f"format version {version} is newer than this nlstm reads "
                           f"({FORMAT_VERSION}); upgrade nlstm")
        cls_name, config = header.get("class"), header.get("config")
        metadata = header.get("metadata", {})
        if not isinstance(cls_name, str) or not isinstance(config, dict) or not isinstance(metadata, dict):
            raise _Invalid("the config must name a class and hold a config and metadata mapping")
        weights = {n: shapes[n] for n in names if n != CONFIG_KEY}
        _check_sizes(config, weights)
        if cls_name == "Sequential":
            model = Sequential.from_config(config)
        else:
            model = layer_class(cls_name)(**config)
        expected = model.params
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        if missing or unexpected:
            raise _Invalid(f"weights do not match the config: missing {missing}, unexpected {unexpected}")
        state = {}
        for name, p in expected.items():
            shape, dtype = weights[name]
            if shape != p.shape or dtype != p.dtype:
                raise _Invalid(f"weight {name!r} is {dtype}{list(shape)}, the config needs "
                               f"{p.dtype}{list(p.shape)}")
            state[name] = npz[name]
        model.load_state_dict(state)  # checks finiteness before changing anything
    if isinstance(model, Sequential):
        model.metadata = metadata
    return model


def _member_header(zf: zipfile.ZipFile, name: str):
    """(shape, dtype) of one .npy member from its header, checked against the member's size
    before any data is read."""
    info = zf.getinfo(name + ".npy")
    with zf.open(info) as f:
        major, _ = np.lib.format.read_magic(f)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif major in (2, 3):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise _Invalid(f"entry {name!r} has an unknown .npy version {major}")
    if dtype.hasobject:
        raise _Invalid(f"entry {name!r} holds Python objects")
    if int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > info.file_size:
        raise _Invalid(f"entry {name!r} is truncated")
    return tuple(shape), dtype


def _check_sizes(config, weights: dict) -> None:
    """Every size in the config must fit in the weights actually stored."""
    total = sum(int(np.prod(s)) for s, _ in weights.values())
    if isinstance(config.get("layers"), list):  # a Sequential: check each layer's config
        cfgs = [s.get("config") for s in config["layers"] if isinstance(s, dict)]
    else:
        cfgs = [config]
    for cfg in cfgs:
        if not isinstance(cfg, dict):
            continue
        sizes = [cfg.get(k) for k in _SIZE_FIELDS]
        for k, v in zip(_SIZE_FIELDS, sizes):
            if isinstance(v, int) and not isinstance(v, bool) and v > max(total, 1):
                raise _Invalid(f"config {k}={v} is larger than the weights stored")
        h, i = cfg.get("hidden_size"), cfg.get("input_size")
        if isinstance(h, int) and isinstance(i, int) and h * i > max(total, 1):
            raise _Invalid(f"config sizes {i}x{h} are larger than the weights stored")
        layers = cfg.get("num_layers")
        if isinstance(layers, int) and layers > max(len(weights), 1):
            raise _Invalid(f"config num_layers={layers} is more than the weights stored")
