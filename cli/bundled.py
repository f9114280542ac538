"""The configs that ship with finetune: where they are, their names, and copying one to edit.

One copy of each file: the repository's `configs/` folder, which `cli/configs` links to, so
a wheel carries it as the package data `cli/configs/` (pyproject.toml says how). A bundled
config is named by its file name, with or without `.yaml`: `finetune train quickstart`.
"""

from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cli.errors import FinetuneError

SUFFIX = ".yaml"


class BundledConfigError(FinetuneError):
    """A bundled config asked for by a name that is not one, or a copy that cannot be made."""

    exit_code = 2


def bundled_dir() -> Path:
    """The folder of the bundled configs: cli/configs, in a wheel or (as a symbolic link to the
    top-level configs/) in a source checkout."""
    return Path(str(importlib.resources.files("cli") / "configs"))


def names() -> list[str]:
    """The bundled configs' names, sorted."""
    return sorted(path.stem for path in bundled_dir().glob(f"*{SUFFIX}"))


def find(name: str) -> Path | None:
    """The bundled config called `name` (`quickstart` or `quickstart.yaml`), if there is one."""
    stem = name.removesuffix(SUFFIX)
    return bundled_dir() / f"{stem}{SUFFIX}" if stem in names() else None


def resolve(path: Path) -> Path:
    """The config file `path` means: itself if it exists, else a bare NAME's NAME.yaml in the
    current folder (an edited copy), else the bundled config NAME, else `path` unchanged."""
    if path.exists() or path.parent != Path("."):
        return path
    local = Path(f"{path}{SUFFIX}")
    if not path.suffix and local.exists():
        return local
    return find(path.name) or path


def listing() -> str:
    """The bundled names, for messages: "quickstart, resnet18-finetune, ..."."""
    return ", ".join(names())


def copy(name: str, dest: Path | None = None, *, overwrite: bool = False) -> Path:
    """Copy the bundled config `name` to `dest` (a file, or a folder to put `NAME.yaml` in;
    default: the current folder); refuses to replace a file unless `overwrite`."""
    source = find(name)
    if source is None:
        raise BundledConfigError(
            f"no bundled config named {name!r}; the bundled configs: {listing()}"
        )
    target = Path(source.name) if dest is None else dest
    if target.is_dir():
        target = target / source.name
    if target.exists() and not overwrite:
        raise BundledConfigError(f"{target} already exists; add --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def describe(name: str) -> str:
    """The first sentence of the config's leading comment: what it is for."""
    lines = (bundled_dir() / f"{name}{SUFFIX}").read_text(encoding="utf-8").splitlines()
    comment = []
    for line in lines:
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    first, _, _ = " ".join(comment).partition(". ")
    return first.removesuffix(".")


def show(console: Console | None = None) -> None:
    """Print the bundled configs' names and what each is for."""
    table = Table(title="Bundled configs (finetune train NAME; finetune config copy NAME)")
    table.add_column("name")
    table.add_column("what it is")
    for name in names():
        table.add_row(name, describe(name))
    (console or Console()).print(table)
