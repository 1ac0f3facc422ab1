"""Saving and loading: exact round trips, atomic writes, and clear errors for bad files."""
import json
import os
import re

import numpy as np
import pytest

import nlstm
import nlstm.io

UNPICKLED = []


def _mark():
    UNPICKLED.append(True)
    return "unpickled!"


class Evil:
    """Unpickling this calls _mark: a loader that unpickles would be caught."""

    def __reduce__(self):
        return (_mark, ())


def make_model(dtype=np.float32):
    layers = [nlstm.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True, dtype=dtype,
                         seed=0, dropout=0.1)]
    width = 10
    if hasattr(nlstm, "GRU"):
        layers.append(nlstm.GRU(width, 4, dtype=dtype, seed=1))
        width = 4
    layers += [nlstm.Dropout(0.2, seed=3), nlstm.Linear(width, 2, dtype=dtype, seed=2)]
    model = nlstm.Sequential(layers, output="last")
    rng = np.random.default_rng(7)
    for v in model.params.values():  # weights no init could make
        v[:] = rng.standard_normal(v.shape)
    return model


def rewrite(path, change):
    """Load every entry of an .npz, let change() edit the dict, and write it back."""
    with np.load(path, allow_pickle=False) as f:
        entries = {k: f[k] for k in f.files}
    change(entries)
    with open(path, "wb") as out:
        np.savez(out, **entries)


def edit_config(path, change):
    def go(entries):
        header = json.loads(entries[nlstm.io.CONFIG_KEY].tobytes().decode())
        change(header)
        entries[nlstm.io.CONFIG_KEY] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    rewrite(path, go)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_exact(tmp_path, dtype):
    model = make_model(dtype)
    meta = {"task": "test", "mean": [0.1, 1 / 3], "nested": {"a": 1}}
    path = model.save(tmp_path / "m.npz", metadata=meta)
    assert path == str(tmp_path / "m.npz")
    again = nlstm.load(path)
    assert isinstance(again, nlstm.Sequential)
    assert again.get_config() == model.get_config()
    assert again.metadata == meta
    for k, v in model.params.items():
        assert again.params[k].dtype == v.dtype
        np.testing.assert_array_equal(again.params[k], v, err_msg=k)
    x = np.random.default_rng(0).standard_normal((4, 6, 3))
    np.testing.assert_array_equal(again.predict(x), model.predict(x))


def test_single_layers_round_trip(tmp_path):
    for layer in (nlstm.LSTM(2, 3, seed=0), nlstm.Linear(3, 2, seed=0, bias=False)):
        nlstm.save(layer, tmp_path / "l.npz")
        again = nlstm.load(tmp_path / "l.npz")
        assert type(again) is type(layer) and again.get_config() == layer.get_config()
        for k in layer.params:
            np.testing.assert_array_equal(again.params[k], layer.params[k], err_msg=k)


def test_an_interrupted_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    old = make_model()
    old.save(path)
    new = make_model()
    for v in new.params.values():
        v += 1

    def failing_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a model")  # some bytes reach the disk, then the crash
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(nlstm.io.np, "savez", failing_savez)
    with pytest.raises(KeyboardInterrupt):
        new.save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["m.npz"], "no temporary file is left behind"
    survivor = nlstm.load(path)
    for k, v in old.params.items():
        np.testing.assert_array_equal(survivor.params[k], v, err_msg=k)
    with pytest.raises(ValueError, match="JSON"):
        new.save(path, metadata={"bad": np.float32(1)})
    assert os.listdir(tmp_path) == ["m.npz"]
    new.save(path)  # a save that completes replaces it
    np.testing.assert_array_equal(nlstm.load(path).params["0.weight_ih_l0"], new.params["0.weight_ih_l0"])


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        nlstm.load(tmp_path / "nothing.npz")


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_weight_byte(path):
    data = bytearray(path.read_bytes())
    i = data.index(b"0.weight_hh_l0.npy")
    data[i + 200] ^= 0xFF  # inside that entry's data: the zip CRC no longer matches
    path.write_bytes(bytes(data))


CORRUPT = [
    ("empty", lambda p: p.write_bytes(b""), "not an .npz"),
    ("text", lambda p: p.write_text("hello, I am not a model\n"), "not an .npz"),
    ("truncated", _truncate, "not a valid nlstm model file"),
    ("bit flip", _flip_a_weight_byte, "not a valid nlstm model file"),
    ("plain npy", lambda p: np.save(open(p, "wb"), np.zeros(3)), "not an .npz"),
    ("no config", lambda p: rewrite(p, lambda e: e.pop(nlstm.io.CONFIG_KEY)), "no __nlstm__"),
    ("bad json", lambda p: rewrite(p, lambda e: e.__setitem__(nlstm.io.CONFIG_KEY,
                                                                np.frombuffer(b"{not json", np.uint8))), "JSON"),
    ("other format", lambda p: edit_config(p, lambda h: h.__setitem__("format", "keras")), "nlstm format"),
    ("newer version", lambda p: edit_config(p, lambda h: h.__setitem__("format_version", 99)), "newer"),
    ("unknown class", lambda p: edit_config(p, lambda h: h["config"]["layers"][0].__setitem__("class", "os.system")),
     "unknown layer class"),
    ("bad kwarg", lambda p: edit_config(p, lambda h: h["config"]["layers"][0]["config"].__setitem__("evil", 1)),
     "unexpected keyword"),
    ("chain", lambda p: edit_config(p, lambda h: h["config"]["layers"][0]["config"].__setitem__("hidden_size", 6)),
     "expects .* input features"),
    ("shape", lambda p: edit_config(p, lambda h: h["config"]["layers"][-1]["config"].__setitem__("out_features", 3)),
     r"weight '\d.weight' is float32\[2, \d+\], the config needs float32\[3, \d+\]"),
    ("huge size", lambda p: edit_config(p, lambda h: h["config"]["layers"][0]["config"].__setitem__("hidden_size", 10 ** 9)),
     "larger than the weights"),
    ("missing weight", lambda p: rewrite(p, lambda e: e.pop("0.bias_hh_l1")), "missing .'0.bias_hh_l1'."),
    ("extra weight", lambda p: rewrite(p, lambda e: e.__setitem__("9.weight", np.zeros(2, np.float32))), "unexpected"),
    ("dtype", lambda p: rewrite(p, lambda e: e.__setitem__("0.weight_ih_l0", e["0.weight_ih_l0"].astype(np.float64))),
     "float64"),
    ("nan", lambda p: rewrite(p, lambda e: e["0.weight_ih_l0"].__setitem__((0, 0), np.nan)), "NaN"),
]


@pytest.mark.parametrize("name, corrupt, msg", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_bad_files_raise_value_error(tmp_path, name, corrupt, msg):
    path = tmp_path / "m.npz"
    make_model().save(path)
    corrupt(path)
    with pytest.raises(ValueError, match=msg) as info:
        nlstm.load(path)
    assert str(path) in str(info.value)


def test_pickled_objects_are_never_loaded(tmp_path):
    path = tmp_path / "m.npz"
    make_model().save(path)

    def add_evil(entries):
        entries["0.weight_ih_l0"] = np.array([Evil()], dtype=object)

    with np.load(path, allow_pickle=False) as f:
        entries = {k: f[k] for k in f.files}
    add_evil(entries)
    with open(path, "wb") as out:
        np.savez(out, allow_pickle=True, **entries)
    UNPICKLED.clear()
    with pytest.raises(ValueError, match="Python objects"):
        nlstm.load(path)
    assert not UNPICKLED


# ---- sizes declared in a file are checked before they cost anything ----------------------
def craft(path, header, shapes, dtype="<f4"):
    """A small .npz whose members declare ``shapes`` (and whose zip declares the matching
    uncompressed sizes) but hold only 8 bytes of data each: a file that lies about its size."""
    import io
    import struct
    import zipfile

    buf, sizes = io.BytesIO(), {}
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        b = io.BytesIO()
        np.save(b, np.frombuffer(json.dumps(header).encode(), np.uint8))
        zf.writestr(nlstm.io.CONFIG_KEY + ".npy", b.getvalue())
        for name, shape in shapes.items():
            b = io.BytesIO()
            np.lib.format.write_array_header_1_0(b, {"descr": dtype, "fortran_order": False,
                                                     "shape": tuple(shape)})
            sizes[name + ".npy"] = b.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize
            b.write(b"\0" * 8)
            zf.writestr(name + ".npy", b.getvalue())
    data = bytearray(buf.getvalue())
    # (signature, offset of the uncompressed size, of the name length, of the name)
    for sig, at_size, at_len, at_name in ((b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)):
        i = data.find(sig)
        while i >= 0:
            n = struct.unpack_from("<H", data, i + at_len)[0]
            name = data[i + at_name:i + at_name + n].decode()
            if name in sizes:
                struct.pack_into("<I", data, i + at_size, sizes[name])
            i = data.find(sig, i + 4)
    path.write_bytes(bytes(data))


def _lstm_header(I, H):
    config = nlstm.LSTM(1, 1).get_config()
    config.update(input_size=I, hidden_size=H)
    return {"format": "nlstm", "format_version": 1, "class": "LSTM", "config": config, "metadata": {}}


def load_measured(path):
    """(nlstm.load(path) or the ValueError it raised, the peak of memory allocated meanwhile,
    numpy arrays included)."""
    import tracemalloc

    tracemalloc.start()
    try:
        try:
            got = nlstm.load(path)
        except ValueError as e:
            got = e
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return got, peak


def _refused_cheaply(path, match, limit=5 << 20):
    got, peak = load_measured(path)
    assert isinstance(got, ValueError), got
    assert re.search(match, str(got)), str(got)
    assert peak < limit, f"load used {peak} bytes"


def test_a_crafted_file_costs_no_more_memory_than_its_size(tmp_path):
    """1.6 KB declaring LSTM(6000, 6000) weights drove load to 2.8 GB before it errored."""
    H, path = 6000, tmp_path / "crafted.npz"
    craft(path, _lstm_header(H, H), {"weight_ih_l0": (4 * H, H), "weight_hh_l0": (4 * H, H),
                                     "bias_ih_l0": (4 * H,), "bias_hh_l0": (4 * H,)})
    assert path.stat().st_size < 2000
    _refused_cheaply(path, "not a valid nlstm model file: entry 'weight_ih_l0.npy' is stored but declares")


def test_a_config_larger_than_its_weights_is_refused_before_a_layer_is_built(tmp_path):
    """Honest arrays, a config asking for far more: every single size passes the old checks
    (2000 <= the 2500 weights stored, 1 x 2000 too), but LSTM(1, 2000) needs 16 million."""
    path = tmp_path / "m.npz"
    arrays = {nlstm.io.CONFIG_KEY: np.frombuffer(json.dumps(_lstm_header(1, 2000)).encode(), np.uint8),
              "weight_ih_l0": np.zeros((50, 50), np.float32)}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    _refused_cheaply(path, "config asks for at least 4002000 weights and the file stores 2500")


def test_an_encrypted_zip_is_a_value_error(tmp_path):
    path = tmp_path / "m.npz"
    nlstm.save(nlstm.LSTM(2, 3, seed=0), path)
    data = bytearray(path.read_bytes())
    for sig, at_flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = data.find(sig)
        while i >= 0:
            data[i + at_flags] |= 1  # "encrypted"
            i = data.find(sig, i + 4)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is encrypted"):
        nlstm.load(path)


# ---- save: what it refuses, where its temporary file lives, what it leaves -----------------
def test_save_refuses_non_finite_weights_and_writes_nothing(tmp_path):
    model = make_model()
    model.params["0.weight_hh_l1"][0, 0] = np.inf
    with pytest.raises(ValueError, match=r"cannot save to .*m.npz: weight '0.weight_hh_l1' contains NaN or Inf"):
        model.save(tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


def test_save_to_an_empty_path_writes_nothing_anywhere(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(ValueError, match="path to write is empty"):
        nlstm.save(nlstm.LSTM(2, 3), "")
    assert os.listdir(tmp_path) == ["here"] and os.listdir(tmp_path / "here") == []


def test_save_errors_name_the_users_path(tmp_path):
    target = tmp_path / "no such dir" / "m.npz"
    with pytest.raises(FileNotFoundError) as info:
        nlstm.save(nlstm.LSTM(2, 3), target)
    assert info.value.filename == str(target) and ".tmp" not in str(info.value)
    with pytest.raises(IsADirectoryError) as info:
        nlstm.save(nlstm.LSTM(2, 3), tmp_path)
    assert info.value.filename == str(tmp_path)


@pytest.mark.parametrize("when", ["write", "fsync", "rename"])
def test_an_interrupt_anywhere_in_save_leaves_no_temporary_file(tmp_path, monkeypatch, when):
    path = tmp_path / "m.npz"
    nlstm.save(nlstm.LSTM(2, 3, seed=0), path)
    before = path.read_bytes()

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    target = {"write": (nlstm.io.np, "savez"), "fsync": (nlstm.io.os, "fsync"),
              "rename": (nlstm.io.os, "replace")}[when]
    monkeypatch.setattr(*target, interrupt)
    with pytest.raises(KeyboardInterrupt):
        nlstm.save(nlstm.LSTM(2, 3, seed=1), path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["m.npz"] and path.read_bytes() == before


@pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="O_TMPFILE is Linux-only")
def test_a_save_in_progress_has_no_name_a_kill_could_leave(tmp_path, monkeypatch):
    """A process killed mid-write cannot clean up: on Linux the data goes to an anonymous
    file that is only named once it is complete."""
    seen = []
    real = np.savez

    def watching(f, **arrays):
        real(f, **arrays)
        seen.append(sorted(os.listdir(tmp_path)))

    monkeypatch.setattr(nlstm.io.np, "savez", watching)
    nlstm.save(nlstm.LSTM(2, 3), tmp_path / "m.npz")
    assert seen == [[]], seen
    assert os.listdir(tmp_path) == ["m.npz"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_new_files_follow_the_umask_and_replaced_ones_keep_their_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        nlstm.save(nlstm.LSTM(2, 3), tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "m.npz").st_mode & 0o777 == 0o666 & ~umask
    os.chmod(tmp_path / "m.npz", 0o604)
    nlstm.save(nlstm.LSTM(2, 3), tmp_path / "m.npz")
    assert os.stat(tmp_path / "m.npz").st_mode & 0o777 == 0o604


@pytest.mark.parametrize("kw", [dict(activations=("Relu",)), dict(nonlinearity="relu"),
                                dict(activations=("Relu", "Relu"), bidirectional=True)])
def test_an_rnn_of_relus_says_relu_and_round_trips(tmp_path, kw):
    # activations=("Relu",) is nonlinearity="relu" (README): the attribute says so, and the
    # saved config still rebuilds the layer from the arguments it was given.
    layer = nlstm.RNN(3, 4, seed=0, **kw)
    assert layer.nonlinearity == "relu"
    nlstm.save(layer, tmp_path / "r.npz")
    back = nlstm.load(tmp_path / "r.npz")
    assert back.nonlinearity == "relu" and back.activations == layer.activations
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(back(x)[0], layer(x)[0])
    assert nlstm.RNN(3, 4, activations=("Tanh",)).nonlinearity == "tanh"
