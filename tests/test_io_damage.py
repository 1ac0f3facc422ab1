"""Random damage to a model file (truncation, bit flips, altered declared sizes) into
``nlstm.load``: always a ValueError (or, when the damage missed everything that matters,
the same model), and never more memory than the honest file costs."""
import io
import struct
import zipfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import nlstm  # noqa: E402
from test_io import _lstm_header, craft, load_measured  # noqa: E402

SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
MEMORY_LIMIT = 8 << 20  # the honest file is a few KB; loading it costs well under 1 MB


def _model():
    model = nlstm.Sequential([nlstm.LSTM(3, 4, num_layers=2, seed=0), nlstm.Linear(4, 2, seed=1)],
                             output="last")
    model.metadata = {"task": "damage"}
    return model


def _honest_bytes():
    """What nlstm.save writes for _model(), made in memory (hypothesis examples share it)."""
    import json

    buf, model, arrays = io.BytesIO(), _model(), {}
    header = {"format": "nlstm", "format_version": 1, "nlstm_version": nlstm.__version__,
              "class": "Sequential", "config": model.get_config(), "metadata": model.metadata}
    arrays[nlstm.io.CONFIG_KEY] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    arrays.update(model.state_dict())
    np.savez(buf, **arrays)
    return model, buf.getvalue()


MODEL, HONEST = _honest_bytes()


def _declared_fields(data: bytes):
    """(offset, width) of every flag, compression method and size the zip's headers declare."""
    local = {6: 2, 8: 2, 18: 4, 22: 4, 26: 2, 28: 2}  # flags, method, sizes, name/extra lengths
    central = {8: 2, 10: 2, 20: 4, 24: 4, 28: 2, 30: 2, 42: 4}  # ... and the local header's offset
    end = {8: 2, 10: 2, 12: 4, 16: 4}  # entry counts, directory size and offset
    out = []
    for sig, fields in ((b"PK\x03\x04", local), (b"PK\x01\x02", central), (b"PK\x05\x06", end)):
        i = data.find(sig)
        while i >= 0:
            out += [(i + f, w) for f, w in fields.items()]
            i = data.find(sig, i + 4)
    return out


SIZE_FIELDS = _declared_fields(HONEST)
SHAPES = [i for i in range(len(HONEST)) if HONEST[i:i + 8] == b"'shape':"]


def _load_checked(path):
    got, peak = load_measured(path)
    assert peak < MEMORY_LIMIT, f"load used {peak} bytes"
    if isinstance(got, ValueError):
        assert str(path) in str(got)
    else:  # the damage missed everything that matters (a timestamp, say)
        assert got.get_config() == MODEL.get_config()
        for k, v in MODEL.params.items():
            np.testing.assert_array_equal(got.params[k], v, err_msg=k)


def test_the_honest_file_loads(tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(HONEST)
    got = nlstm.load(path)
    assert got.metadata == {"task": "damage"}
    assert len(SIZE_FIELDS) > 20 and len(SHAPES) == len(MODEL.params) + 1


@SETTINGS
@given(keep=st.integers(0, len(HONEST) - 1))
def test_truncated(tmp_path, keep):
    path = tmp_path / "m.npz"
    path.write_bytes(HONEST[:keep])
    with pytest.raises(ValueError):
        nlstm.load(path)


@SETTINGS
@given(flips=st.lists(st.tuples(st.integers(0, len(HONEST) - 1), st.integers(0, 7)), min_size=1, max_size=8))
def test_bit_flipped(tmp_path, flips):
    data = bytearray(HONEST)
    for at, bit in flips:
        data[at] ^= 1 << bit
    path = tmp_path / "m.npz"
    path.write_bytes(bytes(data))
    _load_checked(path)


@SETTINGS
@given(field=st.sampled_from(SIZE_FIELDS),
       value=st.one_of(st.integers(0, 16), st.integers(0, 2 ** 16 - 1),
                       st.sampled_from([2 ** 32 - 1, 2 ** 31, 10 ** 9])))
def test_declared_zip_fields_altered(tmp_path, field, value):
    """Sizes, offsets, the compression method (8 is deflate) and flags (bit 0: encrypted)."""
    at, width = field
    data = bytearray(HONEST)
    struct.pack_into("<I" if width == 4 else "<H", data, at, value % (2 ** (8 * width)))
    path = tmp_path / "m.npz"
    path.write_bytes(bytes(data))
    _load_checked(path)


@SETTINGS
@given(which=st.sampled_from(SHAPES), dims=st.lists(st.integers(0, 10 ** 6), min_size=0, max_size=3))
def test_declared_array_shapes_altered(tmp_path, which, dims):
    """Rewrite one .npy header's shape (padding keeps the header's length, so the zip stays
    consistent: only the shape lies)."""
    data = bytearray(HONEST)
    end = data.index(b")", which)
    old = data[which:end + 1]
    new = ("'shape': (" + "".join(f"{d}, " for d in dims) + ")").encode()
    hypothesis.assume(len(new) <= len(old))
    data[which:end + 1] = new + b" " * (len(old) - len(new))
    # keep the zip's CRCs right, so only the declared shape is wrong
    path = tmp_path / "m.npz"
    path.write_bytes(_recrc(bytes(data)))
    _load_checked(path)


def _recrc(data: bytes) -> bytes:
    """Rewrite the CRC-32 of every stored member after its bytes were edited."""
    import zlib

    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            start = info.header_offset + 30 + len(info.filename.encode()) + \
                struct.unpack_from("<H", data, info.header_offset + 28)[0]
            crc = zlib.crc32(data[start:start + info.compress_size])
            struct.pack_into("<I", out, info.header_offset + 14, crc)
            i = out.find(b"PK\x01\x02")
            while i >= 0:
                n = struct.unpack_from("<H", out, i + 28)[0]
                if out[i + 46:i + 46 + n].decode() == info.filename:
                    struct.pack_into("<I", out, i + 16, crc)
                i = out.find(b"PK\x01\x02", i + 4)
    return bytes(out)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(I=st.integers(1, 1500), H=st.integers(1, 1500), layers=st.integers(1, 3),
       lie=st.sampled_from(["zip sizes", "config only"]))
def test_declared_sizes_that_lie_cost_nothing(tmp_path, I, H, layers, lie):
    """A config for LSTM(I, H, layers) with arrays that declare (and, for "zip sizes", a zip
    that declares) the matching shapes but hold a few bytes: the file's real size bounds
    what load may allocate, whatever the declared sizes say."""
    header = _lstm_header(I, H)
    header["config"]["num_layers"] = layers
    shapes = {}
    for k in range(layers):
        shapes[f"weight_ih_l{k}"] = (4 * H, I if k == 0 else H)
        shapes[f"weight_hh_l{k}"] = (4 * H, H)
        shapes[f"bias_ih_l{k}"] = shapes[f"bias_hh_l{k}"] = (4 * H,)
    path = tmp_path / "m.npz"
    if lie == "zip sizes":
        craft(path, header, shapes)
    else:  # an honest zip of tiny arrays under a config that asks for the real sizes
        craft(path, header, {k: (2,) for k in shapes})
    got, peak = load_measured(path)
    assert isinstance(got, ValueError) and "not a valid nlstm model file" in str(got), got
    assert peak < MEMORY_LIMIT, f"load used {peak} bytes on a {path.stat().st_size}-byte file"
