"""Weights I/O: torch checkpoints and safetensors in, safetensors out, and every failure."""

import errno
import io
import os
import pickle
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import engine
from engine.io import (
    WeightsError,
    load_safetensors,
    load_state_dict_file,
    load_torch_checkpoint,
    save_safetensors,
)
from engine.io.atomic import atomic_file, remove_temporary_files, write_atomic
from engine.io.state_dict import extract_state_dict

FIXTURES = Path(__file__).parent / "fixtures"
LOADERS = [load_safetensors, load_torch_checkpoint, load_state_dict_file]


def as_arrays(state_dict):
    return {name: tensor.numpy() for name, tensor in state_dict.items()}


def assert_same_arrays(got, expected):
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        assert got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)


def expected(name):
    with np.load(FIXTURES / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def fragment(value):
    """The pickle opcodes that push ``value``, without the protocol header and STOP."""
    return pickle.dumps(value, protocol=2)[2:-1]


def tensor_pickle(storage_type="FloatStorage", numel=6, offset=0, size=(6,), stride=(1,)):
    """A data.pkl holding ``{"w": tensor}`` as torch.save writes it, built without torch."""
    return (
        b"\x80\x02}"
        + fragment("w")
        + b"ctorch._utils\n_rebuild_tensor_v2\n(("
        + fragment("storage")
        + f"ctorch\n{storage_type}\n".encode()
        + fragment("0")
        + fragment("cpu")
        + fragment(numel)
        + b"tQ"
        + fragment(offset)
        + fragment(size)
        + fragment(stride)
        + b"\x89}tRs."
    )


def global_call_pickle(module, name, protocol):
    """A pickle that calls ``module.name()``: GLOBAL for protocol 2, STACK_GLOBAL for 4."""
    if protocol == 2:
        return b"\x80\x02" + f"c{module}\n{name}\n)R.".encode()
    return b"\x80\x04" + fragment(module) + fragment(name) + b"\x93)R."


def write_zip(path, pickled, storages=None, byteorder="little"):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ckpt/data.pkl", pickled)
        archive.writestr("ckpt/byteorder", byteorder)
        for key, data in (storages or {}).items():
            archive.writestr(f"ckpt/data/{key}", data)
    return path


# --- torch checkpoints, read without torch ------------------------------------


LAYOUTS = pytest.mark.parametrize("layout", ["", "_legacy"], ids=["zip", "legacy"])


@LAYOUTS
@pytest.mark.parametrize("name", ["tensors", "tiny_model"])
def test_torch_fixture_loads_exactly(name, layout):
    loaded = load_torch_checkpoint(FIXTURES / f"{name}{layout}.pth")
    assert_same_arrays(as_arrays(loaded), expected(name))


@LAYOUTS
def test_torch_checkpoint_keeps_key_order(layout):
    loaded = load_torch_checkpoint(FIXTURES / f"tiny_model{layout}.pth")
    assert list(loaded) == list(expected("tiny_model"))


def test_safetensors_keys_come_sorted():
    loaded = load_safetensors(FIXTURES / "tiny_model.safetensors")
    assert list(loaded) == sorted(expected("tiny_model"))


def test_loaded_tensors_own_contiguous_writable_memory():
    for array in as_arrays(load_torch_checkpoint(FIXTURES / "tensors.pth")).values():
        assert array.flags.c_contiguous
        assert array.flags.writeable


@LAYOUTS
def test_views_of_one_storage_load_as_separate_copies(layout):
    loaded = as_arrays(load_torch_checkpoint(FIXTURES / f"tensors{layout}.pth"))
    np.testing.assert_array_equal(loaded["shared.head"], np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(loaded["shared.tail"], np.arange(8.0, 20.0).reshape(3, 4))
    loaded["shared.head"][0, 0] = 100.0
    assert loaded["shared.tail"][0, 0] == 8.0


def test_loaders_return_engine_tensors_without_grad():
    for load in (load_torch_checkpoint, load_state_dict_file):
        loaded = load(FIXTURES / "tiny_model.pth")
        assert all(isinstance(t, engine.Tensor) and not t.requires_grad for t in loaded.values())
        assert loaded["1.num_batches_tracked"].dtype == engine.int64
    loaded = load_safetensors(FIXTURES / "tiny_model.safetensors")
    assert loaded["0.weight"].dtype == engine.float32


def test_buffers_and_odd_dtypes_keep_torch_dtype_and_shape():
    loaded = as_arrays(load_torch_checkpoint(FIXTURES / "tensors.pth"))
    assert loaded["num_batches_tracked"].shape == ()
    assert loaded["num_batches_tracked"].dtype == np.int64
    assert loaded["num_batches_tracked"] == 7
    assert loaded["half"].dtype == np.float16
    assert loaded["double"].dtype == np.float64
    assert loaded["bfloat16"].dtype == np.float32
    assert loaded["empty"].shape == (0, 3)


@LAYOUTS
def test_nested_checkpoint_keeps_plain_values(layout):
    checkpoint = load_torch_checkpoint(FIXTURES / f"nested{layout}.pth")
    assert checkpoint["epoch"] == 3
    assert checkpoint["arch"] == "tiny"
    assert checkpoint["optimizer"] == {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}
    np.testing.assert_array_equal(checkpoint["temperature"].numpy(), np.array([1.5], np.float32))
    assert_same_arrays(as_arrays(checkpoint["state_dict"]), expected("tiny_model"))


@pytest.mark.parametrize(
    "name",
    [
        *("tiny_model.pth", "tiny_model.safetensors", "nested.pth"),
        *("tiny_model_legacy.pth", "nested_legacy.pth"),
    ],
)
def test_load_state_dict_file_reads_any_format(name):
    loaded = load_state_dict_file(FIXTURES / name)
    assert_same_arrays(as_arrays(loaded), expected("tiny_model"))


def test_state_dict_nested_under_model_is_found():
    weights = {"fc.weight": np.ones((2, 2), np.float32)}
    found = extract_state_dict({"model": weights, "epoch": 1}, Path("ckpt.pth"))
    assert found == weights


def test_strided_view_follows_storage_offset_and_strides(tmp_path):
    pickled = tensor_pickle(offset=1, size=(2, 2), stride=(1, 2))
    path = write_zip(tmp_path / "w.pth", pickled, {"0": np.arange(6, dtype="<f4").tobytes()})
    got = load_torch_checkpoint(path)["w"].numpy()
    np.testing.assert_array_equal(got, np.array([[1.0, 3.0], [2.0, 4.0]], np.float32))


def test_big_endian_checkpoint(tmp_path):
    storages = {"0": np.arange(6, dtype=">f4").tobytes()}
    path = write_zip(tmp_path / "w.pth", tensor_pickle(), storages, byteorder="big")
    got = load_torch_checkpoint(path)["w"].numpy()
    np.testing.assert_array_equal(got, np.arange(6, dtype=np.float32))


# --- hostile pickles ------------------------------------------------------------


def test_hostile_fixture_really_runs_code_under_plain_pickle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with zipfile.ZipFile(FIXTURES / "hostile.pth") as archive:
        pickle.loads(archive.read("hostile/data.pkl"))
    assert (tmp_path / "pwned_marker.txt").exists()


def test_hostile_legacy_fixture_really_runs_code_under_plain_pickle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with (FIXTURES / "hostile_legacy.pth").open("rb") as f:
        for _ in range(4):  # magic number, protocol, system info, then the object
            pickle.load(f)
    assert (tmp_path / "pwned_marker.txt").exists()


@pytest.mark.parametrize("name", ["hostile.pth", "hostile_legacy.pth"])
@pytest.mark.parametrize("load", [load_torch_checkpoint, load_state_dict_file])
def test_hostile_pickle_is_refused_and_not_run(load, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = FIXTURES / name
    with pytest.raises(WeightsError, match="refusing to load") as info:
        load(path)
    assert str(path) in str(info.value)
    assert "system" in str(info.value)
    assert not (tmp_path / "pwned_marker.txt").exists()


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize(
    "module, name",
    [("builtins", "eval"), ("builtins", "getattr"), ("os", "system"), ("torch", "load")],
)
def test_any_other_global_is_refused_by_name(tmp_path, module, name, protocol):
    path = write_zip(tmp_path / "evil.pth", global_call_pickle(module, name, protocol))
    with pytest.raises(WeightsError, match=f"`{module}.{name}`") as info:
        load_torch_checkpoint(path)
    assert str(path) in str(info.value)


# --- safetensors ----------------------------------------------------------------


def test_safetensors_fixture_loads_exactly():
    loaded = load_safetensors(FIXTURES / "tiny_model.safetensors")
    assert_same_arrays(as_arrays(loaded), expected("tiny_model"))


def test_save_then_load_round_trips_arrays_and_tensors(tmp_path):
    arrays = {
        "conv.weight": np.random.default_rng(0).standard_normal((2, 3, 3, 3), dtype=np.float32),
        "transposed": np.arange(6.0).reshape(2, 3).T,
        "num_batches_tracked": np.array(5, np.int64),
        "half": np.array([0.5, 1.5], np.float16),
        "mask": np.array([True, False]),
    }
    state = {**arrays, "tensor": engine.ones(3, requires_grad=True)}
    path = tmp_path / "w.safetensors"
    save_safetensors(state, path, metadata={"epoch": "3"})
    loaded = as_arrays(load_safetensors(path))
    assert_same_arrays(loaded, {**arrays, "tensor": np.ones(3, np.float32)})
    with safetensors.safe_open(path, framework="numpy") as f:
        assert f.metadata() == {"epoch": "3"}


def test_save_replaces_existing_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_safetensors({"a": np.zeros(2, np.float32)}, path)
    save_safetensors({"b": np.ones(3, np.float32)}, path)
    assert list(load_safetensors(path)) == ["b"]
    assert os.listdir(tmp_path) == ["w.safetensors"]


class _HalfThenFull:
    """A file that writes half its data, then fails as a full disk would."""

    def __init__(self, file):
        self._file = file

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def write(self, data):
        self._file.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failure", ["write", "fsync", "replace", "interrupt"])
def test_failed_save_leaves_old_file_and_no_temp(tmp_path, monkeypatch, failure):
    path = tmp_path / "w.safetensors"
    save_safetensors({"old": np.zeros(4, np.float32)}, path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        if failure == "interrupt":
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, "No space left on device")

    if failure == "write":
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: _HalfThenFull(real_fdopen(*a, **k)))
    else:
        monkeypatch.setattr(os, "replace" if failure == "replace" else "fsync", fail)
    expected_error = KeyboardInterrupt if failure == "interrupt" else WeightsError
    with pytest.raises(expected_error) as info:
        save_safetensors({"new": np.ones(1000, np.float32)}, path)
    monkeypatch.undo()
    if failure != "interrupt":
        assert str(path) in str(info.value)
        assert "No space left" in str(info.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.safetensors"]


def test_save_into_missing_directory_names_path(tmp_path):
    path = tmp_path / "missing" / "w.safetensors"
    with pytest.raises(WeightsError, match="cannot write") as info:
        save_safetensors({"a": np.zeros(1, np.float32)}, path)
    assert str(path) in str(info.value)


def test_save_rejects_unsupported_dtype_and_non_tensors(tmp_path):
    path = tmp_path / "w.safetensors"
    with pytest.raises(WeightsError, match="complex64"):
        save_safetensors({"z": np.zeros(2, np.complex64)}, path)
    with pytest.raises(TypeError, match="'n'"):
        save_safetensors({"n": 3}, path)
    assert not path.exists()


# --- errors name the file ---------------------------------------------------------


def damaged_files():
    """(file name, content) pairs that no loader may accept."""
    pth = (FIXTURES / "tiny_model.pth").read_bytes()
    st = (FIXTURES / "tiny_model.safetensors").read_bytes()
    legacy = (FIXTURES / "tiny_model_legacy.pth").read_bytes()
    stream = io.BytesIO(legacy)
    for _ in range(5):  # the pickles before the storages, walked without running them
        list(pickletools.genops(stream))
    data = stream.tell()  # the first storage's element count
    flipped = bytearray(pth)
    flipped[pth.index(b"PK\x03\x04", 10) - 20] ^= 0xFF  # inside the first record's data
    return {
        "junk.bin": b"definitely not weights",
        "empty.pth": b"",
        "legacy.pth": b"\x80\x02\x8a\x0alo\xfc\x9cF\xf9 j\xa8P\x19.",
        "half.pth": pth[: len(pth) // 2],
        "half_legacy.pth": legacy[: len(legacy) - 10],
        "legacy_bad_count.pth": legacy[:data]
        + (1 << 40).to_bytes(8, "little")
        + legacy[data + 8 :],
        "half.safetensors": st[: len(st) - 10],
        "flipped.pth": bytes(flipped),
    }


@pytest.mark.parametrize("load", LOADERS)
@pytest.mark.parametrize(
    "name",
    [
        *("junk.bin", "empty.pth", "legacy.pth", "half.pth", "half.safetensors", "flipped.pth"),
        *("half_legacy.pth", "legacy_bad_count.pth"),
    ],
)
def test_damaged_file_raises_weights_error_naming_path(tmp_path, load, name):
    path = tmp_path / name
    path.write_bytes(damaged_files()[name])
    with pytest.raises(WeightsError) as info:
        load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("load", LOADERS)
def test_missing_file_and_directory(tmp_path, load):
    with pytest.raises(WeightsError, match="not found") as info:
        load(tmp_path / "nope.safetensors")
    assert str(tmp_path / "nope.safetensors") in str(info.value)
    with pytest.raises(WeightsError, match="is a directory") as info:
        load(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_loading_the_wrong_format_says_so():
    with pytest.raises(WeightsError, match="not a safetensors file"):
        load_safetensors(FIXTURES / "tiny_model.pth")
    with pytest.raises(WeightsError, match="not a torch.save checkpoint"):
        load_torch_checkpoint(FIXTURES / "tiny_model.safetensors")


@pytest.mark.parametrize(
    "pickled, storages, message",
    [
        (tensor_pickle(offset=3, size=(2, 2), stride=(2, 1)), {"0": bytes(24)}, "past the end"),
        (tensor_pickle(stride=(-1,)), {"0": bytes(24)}, "malformed"),
        (tensor_pickle(), {"0": bytes(8)}, "needs more"),
        (tensor_pickle(), {}, "no item named"),
        (b"\x80\x02" + fragment([1, 2]) + b".", {}, "not a dict"),
        (b"\x80\x02}q\x00(X\x01\x00\x00\x00", {}, "corrupt"),
    ],
    ids=["out-of-bounds", "negative-stride", "short-storage", "missing-storage", "list", "cut"],
)
def test_malformed_checkpoint_raises_weights_error(tmp_path, pickled, storages, message):
    path = write_zip(tmp_path / "bad.pth", pickled, storages)
    with pytest.raises(WeightsError, match=message) as info:
        load_torch_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "pickled",
    [
        tensor_pickle(storage_type="ComplexFloatStorage"),
        global_call_pickle("torch._utils", "_rebuild_tensor_v3", 2),
    ],
    ids=["complex-storage", "rebuild-v3"],
)
def test_unsupported_torch_dtype(tmp_path, pickled):
    path = write_zip(tmp_path / "c.pth", pickled, {"0": bytes(48)})
    with pytest.raises(WeightsError, match="dtype that is not supported") as info:
        load_torch_checkpoint(path)
    assert str(path) in str(info.value)


def test_unsupported_safetensors_dtype(tmp_path):
    path = tmp_path / "u16.safetensors"
    safetensors.numpy.save_file({"x": np.zeros(2, np.uint16)}, path)
    with pytest.raises(WeightsError, match="U16") as info:
        load_safetensors(path)
    assert str(path) in str(info.value)


def test_non_state_dict_checkpoint_is_explained():
    with pytest.raises(WeightsError, match="'epoch' is of type int"):
        extract_state_dict({"epoch": 3, "lr": 0.1}, Path("run.pth"))


# --- interoperability with torch ----------------------------------------------------


@pytest.mark.torch
def test_engine_save_matches_safetensors_torch_byte_for_byte(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tensors = {
        "fc.weight": torch.randn(3, 4),
        "bn.num_batches_tracked": torch.tensor(9),
        "half": torch.randn(5).half(),
        "double": torch.randn(2, dtype=torch.float64),
        "mask": torch.tensor([True, False]),
    }
    save_file(tensors, tmp_path / "torch.safetensors", metadata={"format": "pt"})
    arrays = {name: t.numpy() for name, t in tensors.items()}
    save_safetensors(arrays, tmp_path / "engine.safetensors", metadata={"format": "pt"})
    assert (tmp_path / "engine.safetensors").read_bytes() == (
        tmp_path / "torch.safetensors"
    ).read_bytes()


@pytest.mark.torch
def test_engine_save_loads_in_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    state = load_torch_checkpoint(FIXTURES / "tensors.pth")
    del state["empty"]
    save_safetensors(state, tmp_path / "w.safetensors")
    loaded = load_file(tmp_path / "w.safetensors")
    want = expected("tensors")
    for name, tensor in loaded.items():
        assert tensor.is_contiguous()
        assert tensor.dtype == torch.from_numpy(want[name]).dtype, name
        np.testing.assert_array_equal(tensor.numpy(), want[name], err_msg=name)
    assert sorted(loaded) == sorted(state)


@pytest.mark.torch
def test_torch_safetensors_with_bfloat16_loads_in_engine(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    tensors = {
        "w": torch.randn(2, 3),
        "b": torch.tensor([1.0, -3.5, 2.0**-130], dtype=torch.bfloat16),
        "n": torch.tensor(4),
    }
    save_file(tensors, tmp_path / "w.safetensors")
    loaded = as_arrays(load_safetensors(tmp_path / "w.safetensors"))
    for name, tensor in tensors.items():
        want = tensor.float() if tensor.dtype == torch.bfloat16 else tensor
        np.testing.assert_array_equal(loaded[name], want.numpy(), err_msg=name)
        assert loaded[name].dtype == want.numpy().dtype


@pytest.mark.torch
def test_live_torch_save_loads_in_engine(tmp_path):
    torch = pytest.importorskip("torch")

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    model(torch.randn(2, 3, 6, 6))
    torch.save(model.state_dict(), tmp_path / "m.pth")
    loaded = as_arrays(load_state_dict_file(tmp_path / "m.pth"))
    assert_same_arrays(loaded, {k: v.numpy() for k, v in model.state_dict().items()})


def test_a_failed_streamed_write_keeps_the_old_file_and_stale_temporaries_are_cleared(tmp_path):
    path = tmp_path / "rows.bin"
    write_atomic(path, "old")
    with pytest.raises(ValueError), atomic_file(path) as f:
        f.write(b"half of the new")
        raise ValueError("stopped midway")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["rows.bin"]
    (tmp_path / ".rows.bin.0123abcd.tmp").write_bytes(b"left by a killed process")
    assert [p.name for p in remove_temporary_files(tmp_path)] == [".rows.bin.0123abcd.tmp"]
    assert os.listdir(tmp_path) == ["rows.bin"]
