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

import errno
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
    renamed over ``path``, so an interrupted save leaves any previous file intact and no
    temporary file behind. A new file gets the permissions the umask allows; a replaced
    one keeps its mode. metadata: JSON-compatible extras (defaults to ``model.metadata``
    when it has one). Returns the path written.

    Raises ValueError when a weight is NaN or Inf (``load`` would refuse the file) or the
    metadata is not JSON-compatible, and OSError (naming ``path``) when it cannot be written.
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
    state = model.state_dict()
    for name, a in state.items():
        if not np.isfinite(a).all():
            # load() refuses such a file (its weights would make every output NaN), so
            # writing it would only fail later, far from the cause.
            raise ValueError(f"cannot save to {path}: weight {name!r} contains NaN or Inf "
                             f"(training diverged?); the model was not written")
    arrays.update(state)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_write(path, write, mode: str = "wb") -> str:
    """Call ``write(f)`` on a temporary file in ``path``'s directory, make it durable, then
    rename it over ``path``: an interrupted write leaves any previous file intact and no
    temporary file behind. The file gets the mode of the file it replaces, else what the
    umask allows. Errors name ``path``, never the temporary file.

    Where Linux allows it the temporary file has no name until it is complete (O_TMPFILE),
    so even a process killed mid-write (SIGKILL, power cut) leaves nothing behind; elsewhere
    a hidden ``.<name>.*.tmp`` is removed on every error and on KeyboardInterrupt.
    mode: "wb", or "w" for UTF-8 text (newline="", the caller's line ends are kept).
    Returns the path."""
    path = os.fspath(path)
    if not path:
        raise ValueError("the path to write is empty")
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    tmp = None
    try:
        fd, tmp = _open_temp(directory, prefix)
        text = {} if "b" in mode else {"newline": "", "encoding": "utf-8"}
        with os.fdopen(fd, mode, **text) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _file_mode(path))
            if tmp is None:  # anonymous until now: give it a name to rename over path
                tmp = _name_anonymous(f.fileno(), directory, prefix)
        if not hasattr(os, "fchmod"):  # Windows before Python 3.13
            os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError):
            # The temporary name means nothing to the caller: report the target instead.
            if e.errno is None:
                raise OSError(f"cannot write {path}: {e}") from None
            raise type(e)(e.errno, e.strerror or str(e), path) from None
        raise
    _fsync_dir(directory)
    return path


def _open_temp(directory: str, prefix: str):
    """(fd, None) for an anonymous file in ``directory`` (Linux O_TMPFILE), else (fd, name)
    of a new hidden file there."""
    flag = getattr(os, "O_TMPFILE", 0)
    if flag and os.path.isdir("/proc/self/fd"):
        try:
            return os.open(directory, flag | os.O_WRONLY, 0o600), None
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise  # a real problem (permissions, no space): the fallback would hit it too
            if e.errno == errno.ENOENT and not os.path.isdir(directory):
                raise
    return tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)


def _name_anonymous(fd: int, directory: str, prefix: str) -> str:
    """Link an O_TMPFILE file into ``directory`` under a fresh hidden name; returns it."""
    # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N (os.link only calls linkat, not link,
    # when given a directory fd): the way an unprivileged process names an O_TMPFILE file.
    fds = os.open("/proc/self/fd", os.O_RDONLY)
    try:
        for _ in range(100):
            name = os.path.join(directory, f"{prefix}{os.urandom(6).hex()}.tmp")
            try:
                os.link(str(fd), name, src_dir_fd=fds, follow_symlinks=True)
                return name
            except FileExistsError:
                continue
    finally:
        os.close(fds)
    raise FileExistsError(errno.EEXIST, "no free temporary name", directory)


def _version() -> str:
    from . import __version__

    return __version__


def _file_mode(path: str) -> int:
    """Keep the mode of the file being replaced; else what the umask allows (mkstemp uses 0600)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (setting it, even
    for an instant, would race with files other threads create)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


# Deflate cannot expand data by more than about 1032:1; a member that claims more is lying.
_DEFLATE_RATIO = 1100
_MAX_CONFIG_BYTES = 16 << 20


def load(path):
    """Read a model written by :func:`save`. Returns a ``Sequential`` (with its ``metadata``)
    or the single layer that was saved.

    Raises FileNotFoundError (or another OSError) when the file cannot be opened, and
    ValueError when it is not a valid nlstm model file: corrupt, truncated, tampered with,
    encrypted, or from a newer format version. Every size the file declares is checked
    against the file's real size and against its config before an array is read or a layer
    is built, so a crafted file costs no more time or memory than an honest one.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:  # OSErrors (missing file, directory, permissions) stay OSErrors
        size = os.fstat(f.fileno()).st_size
    try:
        return _load(path, size)
    except FileNotFoundError:
        raise
    except _Invalid as e:
        raise ValueError(f"{path} is not a valid nlstm model file: {e}") from None
    except Exception as e:  # zipfile, zlib, numpy and the layers raise many types on damage
        reason = str(e) or type(e).__name__
        if not isinstance(e, (ValueError, TypeError, KeyError, OSError, EOFError)):
            reason = f"{type(e).__name__}: {reason}"
        raise ValueError(f"{path} is not a valid nlstm model file: {reason}") from None


def _load(path: str, size: int):
    from .model import Sequential, layer_class

    if not zipfile.is_zipfile(path):
        raise _Invalid("not an .npz (zip) archive; it may be truncated or not a model")
    with zipfile.ZipFile(path) as zf:
        members = _members(zf, size)
        if CONFIG_KEY not in members:
            raise _Invalid(f"no {CONFIG_KEY} config entry")
        shapes = {n: _member_header(zf, info, n) for n, info in members.items()}
        shape, dtype = shapes[CONFIG_KEY]
        if dtype != np.uint8 or len(shape) != 1 or shape[0] > _MAX_CONFIG_BYTES:
            raise _Invalid("the config entry must be UTF-8 bytes")
        raw = _read(zf, members[CONFIG_KEY])
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
        weights = {n: shapes[n] for n in members if n != CONFIG_KEY}
        _check_sizes(config, weights)  # before any layer allocates what the config asks for
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
            state[name] = _read(zf, members[name])
        model.load_state_dict(state)  # checks finiteness before changing anything
    if isinstance(model, Sequential):
        model.metadata = metadata
    return model


def _members(zf: zipfile.ZipFile, size: int) -> dict:
    """{array name: ZipInfo} after checking what the zip declares against the file's size."""
    members = {}
    for info in zf.infolist():
        name = info.filename
        if not name.endswith(".npy") or name[:-4] in members:
            raise _Invalid(f"unexpected or repeated entry {name!r}")
        if info.flag_bits & 0x1:
            raise _Invalid(f"entry {name!r} is encrypted")
        if info.header_offset + info.compress_size > size:
            raise _Invalid(f"entry {name!r} declares {info.compress_size} bytes past the end of "
                           f"the file ({size} bytes); it may be truncated")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size:
                raise _Invalid(f"entry {name!r} is stored but declares {info.file_size} bytes in "
                               f"{info.compress_size}")
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            if info.file_size > _DEFLATE_RATIO * info.compress_size + 1024:
                raise _Invalid(f"entry {name!r} declares {info.file_size} bytes from "
                               f"{info.compress_size} compressed: more than deflate can expand")
        else:
            raise _Invalid(f"entry {name!r} uses an unsupported compression ({info.compress_type})")
        members[name[:-4]] = info
    return members


def _member_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str):
    """(shape, dtype) of one .npy member from its header, checked against the member's
    declared size (itself checked against the file) before any data is read."""
    with zf.open(info) as f:
        major, _ = np.lib.format.read_magic(f)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif major in (2, 3):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise _Invalid(f"entry {name!r} has an unknown .npy version {major}")
        start = f.tell()
    if dtype.hasobject:
        raise _Invalid(f"entry {name!r} holds Python objects")
    if fortran:
        raise _Invalid(f"entry {name!r} is in Fortran order; nlstm writes C order")
    nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if nbytes != info.file_size - start:
        raise _Invalid(f"entry {name!r} declares {nbytes} bytes of data and holds "
                       f"{info.file_size - start}; it is truncated or altered")
    return tuple(shape), dtype


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with zf.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _int(v) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _check_sizes(config, weights: dict) -> None:
    """The weights a config asks for must be no more than the weights stored, so that no
    layer is built larger than the file (whose arrays are bounded by its real size) is.

    Uses a lower bound on each layer's parameter count that holds for every cell: each
    direction of each recurrent layer has at least hidden_size x (its input) input weights
    and hidden_size x (proj_size or hidden_size) recurrent ones."""
    total = sum(int(np.prod(s, dtype=np.float64)) for s, _ in weights.values())
    if isinstance(config.get("layers"), list):  # a Sequential: check each layer's config
        cfgs = [s.get("config") for s in config["layers"] if isinstance(s, dict)]
    else:
        cfgs = [config]
    need = 0
    for cfg in cfgs:
        if not isinstance(cfg, dict):
            continue
        for k in _SIZE_FIELDS:
            v = _int(cfg.get(k))
            if v is not None and v > max(total, 1):
                raise _Invalid(f"config {k}={v} is larger than the weights stored")
        h, i = _int(cfg.get("hidden_size")), _int(cfg.get("input_size"))
        if h is not None and i is not None:
            layers = _int(cfg.get("num_layers")) or 1
            if layers > max(len(weights), 1):
                raise _Invalid(f"config num_layers={layers} is more than the weights stored")
            p = _int(cfg.get("proj_size")) or h
            directions = 2 if cfg.get("bidirectional") is True else 1
            need += directions * h * (max(i, 0) + max(layers, 1) * max(p, 0))
        fi, fo = _int(cfg.get("in_features")), _int(cfg.get("out_features"))
        if fi is not None and fo is not None:
            need += max(fi, 0) * max(fo, 0)
    if need > total:
        raise _Invalid(f"the config asks for at least {need} weights and the file stores {total}; "
                       f"config sizes are larger than the weights stored")
