"""What `finetune bench` shows and writes: the results table, the per-op profile, the JSON.

Tables are rich tables on a terminal and Markdown-style plain text otherwise (logs, pipes,
pasting into an issue). Times show the median over rounds and, when rounds differ, the
min–max spread.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from cli.bench.cases import Settings

Result = dict[str, Any]
PLAIN_WIDTH = 200  # plain text is not squeezed into rich's default 80 columns


def show(console: Console, table: Table) -> None:
    """Print a table; when the console is not a terminal, wide enough not to wrap its cells."""
    if console.is_terminal:
        console.print(table)
        return
    width, console.width = console.width, PLAIN_WIDTH
    try:
        console.print(table)
    finally:
        console.width = width


def _new_table(title: str, caption: str, plain: bool) -> Table:
    style = box.MARKDOWN if plain else box.HEAVY_HEAD
    return Table(
        title=title, caption=caption, box=style, title_justify="left", caption_justify="left"
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _spread(figures: dict[str, float], digits: int) -> str:
    median = f"{figures['median']:.{digits}f}"
    low, high = f"{figures['min']:.{digits}f}", f"{figures['max']:.{digits}f}"
    return median if low == high else f"{median} ({low}–{high})"


def results_table(rows: list[Result], settings: Settings, loader_source: str, plain: bool) -> Table:
    """Per case: the engine's ms/step, images/s and peak RSS; torch's and the ratio if timed."""
    vs_torch = any("torch" in row for row in rows)
    caption = [
        f"median (min–max) over {_count(settings.rounds, 'round')}, each the median of "
        f"{_count(settings.steps, 'step')} after {_count(settings.warmup, 'warm-up step')} "
        "in a fresh process",
        "RSS: peak resident memory of the run's process (torch's includes importing torch)",
    ]
    if any(row["workload"] == "loader" for row in rows):
        caption.append(
            f"loader: the DataLoader alone (2 threads, resize 256, crop 224) on {loader_source}; "
            "ms per batch"
        )
    table = _new_table("ResNet18 on the CPU, float32", "\n".join(caption), plain)
    columns = ["workload", "batch", "size", "engine ms/step", "images/s", "RSS MiB"]
    if vs_torch:
        columns += ["torch ms/step", "torch RSS MiB", "engine/torch"]
    for column in columns:
        table.add_column(column, justify="left" if column == "workload" else "right")
    for row in rows:
        engine = row["engine"]
        cells = [row["workload"], str(row["batch"]), f"{row['size']}x{row['size']}"]
        cells += [_spread(engine["ms_per_step"], 1), f"{engine['images_per_s']:.1f}"]
        cells.append(f"{engine['peak_rss_mib']:.0f}")
        if "torch" in row:
            torch = row["torch"]
            cells += [_spread(torch["ms_per_step"], 1), f"{torch['peak_rss_mib']:.0f}"]
            cells.append(_spread(row["ratio"], 2))
        elif vs_torch:
            cells += ["-", "-", "-"]
        table.add_row(*cells)
    return table


def profile_table(rows: list[Result], plain: bool) -> Table:
    """Milliseconds per step and share of each op category, one column per profiled case
    (there must be one)."""
    profiled = [row for row in rows if "profile" in row["engine"]]
    profiles = [row["engine"]["profile"] for row in profiled]
    missing = sorted({target for profile in profiles for target in profile["missing"]})
    caption = [
        "exclusive times of the fastest run: conv input-grad and weight-grad are not in "
        "'conv backward, other'; small layers compute both at once, one a thread, and wide "
        "ones without Winograd in one spread over the threads ('conv grads side by side'); "
        "where no gradient goes through BatchNorm in eval mode (eval, frozen backbone), it "
        "runs inside 'conv forward'; other: autograd, loss, fc, additions, copies, timers",
    ]
    if all("floor_ms" in profile for profile in profiles):
        rates = ", ".join(f"{profile['sgemm_gflops']:.0f}" for profile in profiles)
        caption.append(
            "GEMM floor: the convolutions' matrix products (Winograd's reduced ones) at the "
            f"SGEMM rate measured in the same run ({rates} GFLOP/s)"
        )
    if missing:
        caption.append(f"not found in the engine, so not timed: {', '.join(missing)}")
    table = _new_table("Engine time per op, ms per step (share)", "\n".join(caption), plain)
    table.add_column("op")
    for row in profiled:
        table.add_column(f"{row['workload']} {row['batch']}x{row['size']}", justify="right")
    for category in profiles[0]["ms"]:
        cells = []
        for profile in profiles:
            ms = profile["ms"][category]
            cells.append(f"{ms:.1f} ({ms / profile['step_ms']:.0%})" if ms else "-")
        table.add_row(category, *cells, end_section=category == "other")
    table.add_row("step", *(f"{profile['step_ms']:.1f}" for profile in profiles))
    if all("floor_ms" in profile for profile in profiles):
        table.add_row("GEMM floor", *(f"{profile['floor_ms']:.1f}" for profile in profiles))
        table.add_row("step / floor", *(f"{profile['floor_ratio']:.2f}" for profile in profiles))
    return table


def _commit(root: Path) -> str | None:
    """The checkout's `git describe --always --dirty`, if it is a git checkout."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def write_json(
    path: Path, rows: list[Result], settings: Settings, loader_source: str, root: Path
) -> None:
    """All figures, with the settings, the machine and the commit, for tracking over time."""
    data = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(root),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "settings": {**asdict(settings), "loader_images": loader_source},
        "results": rows,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
