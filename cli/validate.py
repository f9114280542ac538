"""`finetune config validate`: check a config as `finetune train` would, and show it resolved."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from rich.console import Console

from cli.config import config_to_dict, load_config


def validate(path: Path, overrides: Sequence[str] = (), console: Console | None = None) -> None:
    """Print the resolved config as YAML (defaults filled in, overrides applied, paths found);
    a config with problems raises ConfigError listing them all."""
    config = load_config(path, overrides)
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)
    console = console or Console()
    console.print(f"# {path}: valid\n{text}", markup=False, highlight=False, soft_wrap=True, end="")
