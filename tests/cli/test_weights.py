"""`finetune weights fetch` from a loopback HTTP server (good hash, bad hash, offline) and
`finetune weights import` of torch-written files, end to end in a subprocess."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from _run_cli import finetune, words

from cli.weights import OFFICIAL, hash_prefix
from engine.io import load_safetensors


@pytest.fixture
def state_dict(torch: ModuleType) -> dict:
    """A small torchvision-style state dict: conv and BatchNorm, with running statistics."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model(torch.randn(2, 3, 5, 5))
    return model.state_dict()


@pytest.fixture
def served(tmp_path: Path, state_dict: dict, torch: ModuleType) -> Path:
    """A folder holding the fixture as resnet18-<its sha256 prefix>.pth and a badly named copy."""
    folder = tmp_path / "server"
    folder.mkdir()
    raw = folder / "raw.pth"
    torch.save(state_dict, raw)
    prefix = hashlib.sha256(raw.read_bytes()).hexdigest()[:8]
    shutil.copy(raw, folder / "resnet18-deadbeef.pth")
    raw.rename(folder / f"resnet18-{prefix}.pth")
    return folder


@pytest.fixture
def base_url(served: Path) -> Iterator[str]:
    """A loopback HTTP server over the served folder."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join()


def good_name(served: Path) -> str:
    return next(p.name for p in served.iterdir() if "deadbeef" not in p.name)


def assert_same_tensors(path: Path, state_dict: dict) -> None:
    loaded = load_safetensors(path)
    assert set(loaded) == set(state_dict)
    for name, tensor in state_dict.items():
        np.testing.assert_array_equal(loaded[name].numpy(), tensor.numpy())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_official_names_carry_their_hash_prefix() -> None:
    assert OFFICIAL["resnet18"] == "resnet18-f37072fd.pth"
    assert hash_prefix("resnet18-f37072fd.pth") == "f37072fd"
    assert hash_prefix("my-best-model.pth") is None


def fetch(url: str, cwd: Path) -> subprocess.CompletedProcess:
    return finetune("weights", "fetch", "resnet18", "--url", url, "--dir", "w", cwd=cwd)


def test_fetch_verifies_and_converts(
    tmp_path: Path, served: Path, base_url: str, state_dict: dict
) -> None:
    name = good_name(served)
    result = fetch(base_url + name, tmp_path)
    assert result.returncode == 0, result.stderr
    stem = name.removesuffix(".pth")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [name, stem + ".safetensors"]
    assert (tmp_path / "w" / name).read_bytes() == (served / name).read_bytes()
    assert_same_tensors(tmp_path / "w" / f"{stem}.safetensors", state_dict)


def test_fetch_with_a_bad_hash_keeps_nothing(tmp_path: Path, base_url: str) -> None:
    url = base_url + "resnet18-deadbeef.pth"
    result = fetch(url, tmp_path)
    assert result.returncode == 1
    message = words(result.stderr)
    assert "SHA-256 mismatch" in message and "deadbeef" in message and "not kept" in message
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "w").iterdir()) == []


def test_fetch_offline_fails_with_the_import_hint(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/resnet18-f37072fd.pth"
    result = fetch(url, tmp_path)
    assert result.returncode == 1
    message = words(result.stderr)
    assert f"cannot download {url}" in message
    assert "finetune weights import" in message
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "w").iterdir()) == []


def test_fetch_reuses_a_verified_file_without_downloading(
    tmp_path: Path,
    served: Path,
    state_dict: dict,
) -> None:
    name = good_name(served)
    (tmp_path / "w").mkdir()
    shutil.copy(served / name, tmp_path / "w" / name)
    url = f"http://127.0.0.1:{closed_port()}/{name}"  # nothing listens: a download would fail
    result = fetch(url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert_same_tensors(tmp_path / "w" / name.replace(".pth", ".safetensors"), state_dict)


def test_import_converts_a_local_file(tmp_path: Path, served: Path, state_dict: dict) -> None:
    source = served / good_name(served)
    result = finetune("weights", "import", str(source), "--out", "mine.safetensors", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_same_tensors(tmp_path / "mine.safetensors", state_dict)


def test_import_of_a_nested_checkpoint_without_a_hash(
    tmp_path: Path, state_dict: dict, torch: ModuleType
) -> None:
    torch.save({"model": state_dict, "epoch": 3}, tmp_path / "checkpoint.pth")
    result = finetune("weights", "import", "checkpoint.pth", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_same_tensors(tmp_path / "checkpoint.safetensors", state_dict)


def test_import_refuses_a_file_whose_name_has_the_wrong_hash(tmp_path: Path, served: Path) -> None:
    result = finetune("weights", "import", str(served / "resnet18-deadbeef.pth"), cwd=tmp_path)
    assert result.returncode == 1
    assert "SHA-256 mismatch" in words(result.stderr)
    assert not (served / "resnet18-deadbeef.safetensors").exists()


def test_import_of_a_missing_file_names_it(tmp_path: Path) -> None:
    result = finetune("weights", "import", "nowhere/resnet18-f37072fd.pth", cwd=tmp_path)
    assert result.returncode == 1
    assert "nowhere/resnet18-f37072fd.pth" in words(result.stderr)
    assert "Traceback" not in result.stderr
