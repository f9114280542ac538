"""`finetune bench`: time ResNet18 workloads on the engine, and in torch with --vs-torch.

A case is a workload at a batch and image size. Every round runs each case once per backend,
each run in a fresh process (idle OpenBLAS threads spin after a call and would slow torch in
the same process): `python -m cli.bench.worker` for the engine, `python -m
cli.bench.torch_worker` for torch (the only module that imports torch), alternating, in
swapped order every other round. A run's figure is the median of
its timed steps; the report gives the median over rounds with the min-max spread, and the
engine/torch ratio of each round the same way. Tables and JSON are made in cli.bench.report.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import typer
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.bench.cases import LOADER_PIXELS, Case, Settings, parse_sizes, parse_workloads, plan
from cli.bench.floor import floor
from cli.bench.report import profile_table, results_table, show, write_json
from cli.bench.worker import MODEL_WORKLOADS
from cli.errors import FinetuneError
from cli.terminal import make_console

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC_IMAGES = 256
Result = dict[str, Any]


class BenchError(FinetuneError):
    """A worker failed, or the torch side of --vs-torch is not available."""


def check_torch() -> None:
    """Refuse --vs-torch, before any work, without torch."""
    if find_spec("torch") is None:
        raise BenchError(
            "--vs-torch needs torch in this Python environment (pip install torch); "
            "run without --vs-torch to time the engine alone"
        )


def synthetic_jpegs(folder: Path, count: int = SYNTHETIC_IMAGES) -> Path:
    """`count` photo-like 224x224 JPEGs (smooth colour fields with grain) in two class folders."""
    rng = np.random.default_rng(0)
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((LOADER_PIXELS, LOADER_PIXELS), Image.Resampling.BICUBIC))
        grain = rng.normal(0, 8, smooth.shape)
        pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
        class_dir = folder / f"class{index % 2}"
        class_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(class_dir / f"{index:04d}.jpg", quality=90)
    return folder


def backends(case: Case, settings: Settings) -> tuple[str, ...]:
    if settings.vs_torch and case.workload in MODEL_WORKLOADS:
        return ("engine", "torch")
    return ("engine",)


def command(backend: str, case: Case, settings: Settings, folder: Path | None) -> list[str]:
    """The worker's command line for one run of `case`."""
    worker = "cli.bench.worker" if backend == "engine" else "cli.bench.torch_worker"
    args = [sys.executable, "-m", worker, "--workload", case.workload, "--batch", str(case.batch)]
    args += ["--size", str(case.pixels), "--warmup", str(settings.warmup)]
    args += ["--steps", str(settings.steps)]
    if case.workload not in MODEL_WORKLOADS:
        args += ["--folder", str(folder)]
    elif settings.profile and backend == "engine":
        args.append("--profile")
    return args


def run_worker(args: list[str], what: str) -> Result:
    """Run a worker; its JSON line."""
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode < 0:
        raise BenchError(f"{what} was killed by signal {-done.returncode} (out of memory?)")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise BenchError(f"{what} failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(
    cases: list[Case], settings: Settings, folder: Path | None
) -> dict[Case, dict[str, list[Result]]]:
    """Each case's worker results per backend, over alternating rounds, with a progress bar."""
    runs = {case: {backend: [] for backend in backends(case, settings)} for case in cases}
    stderr = make_console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    progress = Progress(
        *columns,
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_interactive,
    )
    with progress:
        task = progress.add_task("", total=settings.rounds * sum(map(len, runs.values())))
        for round_index in range(settings.rounds):
            for case, by_backend in runs.items():
                order = list(by_backend) if round_index % 2 == 0 else list(reversed(by_backend))
                for backend in order:
                    what = f"{backend} worker for {case}"
                    progress.update(task, description=f"round {round_index + 1}: {what}")
                    args = command(backend, case, settings, folder)
                    by_backend[backend].append(run_worker(args, f"the {what}"))
                    progress.advance(task)
    return runs


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: list[Result], batch: int) -> Result:
    """One backend's figures for a case: per-round medians, their spread, images/s, peak RSS."""
    round_ms = [statistics.median(run["ms"]) for run in runs]
    summary = {
        "version": runs[0]["version"],
        "steps_ms": [run["ms"] for run in runs],
        "round_ms": round_ms,
        "ms_per_step": spread(round_ms),
        "images_per_s": batch * 1e3 / statistics.median(round_ms),
        "peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
    }
    if "images" in runs[0]:
        summary["images"] = runs[0]["images"]
    if "profile" in runs[0]:
        summary["profile"] = breakdown(runs)
    return summary


def breakdown(runs: list[Result]) -> Result:
    """The profile of the fastest (least disturbed) run, the rest of its mean step as other;
    its GEMM floor and the step's ratio to it."""
    fastest = min(runs, key=lambda run: statistics.fmean(run["ms"]))
    step = statistics.fmean(fastest["ms"])
    ms = dict(fastest["profile"]["ms"])
    ms["other"] = step - sum(ms.values())
    summary = {"step_ms": step, "ms": ms, "missing": fastest["profile"]["missing"]}
    if "gemm_gflop" in fastest["profile"]:
        gemm, gflops = fastest["profile"]["gemm_gflop"], fastest["profile"]["sgemm_gflops"]
        summary.update(gemm_gflop=gemm, sgemm_gflops=gflops, **floor(gemm, gflops, step))
    return summary


def result(case: Case, runs: dict[str, list[Result]]) -> Result:
    """A case's row: the engine's figures, and torch's with the ratio per round if timed."""
    row: Result = {"workload": case.workload, "batch": case.batch, "size": case.pixels}
    row["engine"] = summarise(runs["engine"], case.batch)
    if "torch" in runs:
        row["torch"] = summarise(runs["torch"], case.batch)
        pairs = zip(row["engine"]["round_ms"], row["torch"]["round_ms"], strict=True)
        ratios = [engine / torch for engine, torch in pairs]
        row["ratio"] = {**spread(ratios), "rounds": ratios}
    return row


def bench(
    workloads: list[str] | None,
    sizes: list[str] | None,
    batch: int | None,
    settings: Settings,
    json_path: Path | None = None,
    loader_dir: Path | None = None,
    console: Console | None = None,
) -> None:
    """Time the chosen cases, print the table (and the profile), write the JSON if asked."""
    chosen = parse_workloads(workloads)
    cases = plan(chosen, parse_sizes(sizes, batch))
    if loader_dir is not None and "loader" not in chosen:
        raise typer.BadParameter("--loader needs the loader workload", param_hint="--loader")
    if json_path is not None and not json_path.parent.is_dir():
        raise typer.BadParameter(f"no folder {json_path.parent} to write to", param_hint="--json")
    if settings.vs_torch:
        check_torch()
    with tempfile.TemporaryDirectory() as scratch:
        folder = loader_dir
        if folder is None and "loader" in chosen:
            folder = synthetic_jpegs(Path(scratch))
        runs = measure(cases, settings, folder)
    rows = [result(case, runs[case]) for case in cases]
    console = console or Console()
    source = str(loader_dir) if loader_dir else f"{SYNTHETIC_IMAGES} synthetic 224x224 JPEGs"
    plain = not console.is_terminal
    show(console, results_table(rows, settings, source, plain))
    if any("profile" in row["engine"] for row in rows):
        show(console, profile_table(rows, plain))
    if json_path is not None:
        write_json(json_path, rows, settings, source, ROOT)
        console.print(f"figures written to {json_path}", highlight=False, soft_wrap=True)
