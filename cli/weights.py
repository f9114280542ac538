"""`finetune weights`: fetch torchvision's official ResNet weights, or import a local `.pth`.

Both end in a safetensors file beside the `.pth`, converted with the engine's
torch-free reader. A file name ending in `-<hex>.pth` carries the first hex
digits of the file's SHA-256 (torchvision's rule); they are checked before a
download is kept and before any file is converted.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.request
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from cli.errors import FinetuneError
from cli.terminal import make_console
from engine.io import load_state_dict_file, save_safetensors

BASE_URL = "https://download.pytorch.org/models/"
OFFICIAL = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
}
TIMEOUT_SECONDS = 10
CHUNK_BYTES = 1 << 20
_HASH_IN_STEM = re.compile(r"-([0-9a-f]{8,64})$")


def hash_prefix(name: str) -> str | None:
    """The SHA-256 prefix a file name carries (`resnet18-f37072fd.pth` -> `f37072fd`), if any."""
    match = _HASH_IN_STEM.search(Path(name).stem)
    return match.group(1) if match else None


def fetch(
    arch: str, directory: Path, url: str | None = None, console: Console | None = None
) -> Path:
    """Download `arch`'s ImageNet weights (or the file at `url`) into `directory`, then convert.

    A download is verified before it is kept; a `.pth` already there is verified
    and reused. Returns the safetensors path.
    """
    console = console or make_console(stderr=True)
    url = url or BASE_URL + OFFICIAL[arch]
    name = Path(urlsplit(url).path).name
    if hash_prefix(name) is None:
        raise FinetuneError(
            f"cannot verify {url}: the file name {name!r} carries no SHA-256 prefix; "
            f"pass a URL ending in a name like {OFFICIAL[arch]}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    if target.exists():
        _verify(target, f"delete {target} and run the command again")
    else:
        part = target.with_name(name + ".part")
        try:
            _download(url, part, console)
            _verify(part, f"downloaded from {url}; the file was not kept, try again", name)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
    return _to_safetensors(target, None, console)


def import_file(source: Path, out: Path | None = None, console: Console | None = None) -> Path:
    """Convert a weights file the user already has, checking the hash its name carries, if any."""
    source = Path(source)
    if source.is_file():
        _verify(source, "download or copy the file again")
    return _to_safetensors(source, out, console or Console(stderr=True))


def _to_safetensors(source: Path, out: Path | None, console: Console) -> Path:
    out = Path(out) if out is not None else source.with_suffix(".safetensors")
    if out.resolve() == source.resolve():
        raise FinetuneError(f"{source}: the output would overwrite the input; pass --out FILE")
    state_dict = load_state_dict_file(source)
    save_safetensors(state_dict, out, metadata={"format": "pt", "source": source.name})
    count = sum(t.numel() for t in state_dict.values())
    console.print(f"{out}: {len(state_dict)} tensors, {count:,} values, from {source.name}")
    return out


def _verify(path: Path, advice: str, name: str | None = None) -> None:
    """Check `path` against the SHA-256 prefix in `name` (default: its own name)."""
    name = name or path.name
    expected = hash_prefix(name)
    if expected is None:
        return
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    if not digest.hexdigest().startswith(expected):
        raise FinetuneError(
            f"{name}: SHA-256 mismatch: the file's digest is {digest.hexdigest()}, but its name "
            f"says it starts with {expected}; the file is corrupt or not the one named ({advice})"
        )


def _download(url: str, dest: Path, console: Console) -> None:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            columns = ("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
            bar = Progress(
                *columns, console=console, transient=True, disable=not console.is_interactive
            )
            with dest.open("wb") as f, bar:
                task = bar.add_task(dest.name.removesuffix(".part"), total=size)
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
                    bar.advance(task, len(chunk))
    except HTTPError as exc:
        answer = f"the server answered {exc.code} {exc.reason}"
        raise FinetuneError(f"cannot download {url}: {answer}; check the URL") from None
    except (URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", None) or exc
        pth = dest.with_name(dest.name.removesuffix(".part"))
        raise FinetuneError(
            f"cannot download {url}: {reason}\n"
            f"Offline? Download {url} on a machine with internet access, copy it to {pth} "
            f"and run: finetune weights import {pth}   (see weights/README.md)"
        ) from None
    except OSError as exc:
        raise FinetuneError(f"cannot write {dest}: {exc.strerror or exc}") from None
