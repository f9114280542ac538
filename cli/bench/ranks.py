"""`finetune bench --ranks N`: the training step over N processes (MPI) against one process.

The worker (`python -m cli.bench.ranks`) runs ResNet18's data-parallel training step exactly as
`finetune train` does (cli.training: shards of a global batch, one in-place allreduce of the
step's buffer, SGD with momentum) on a synthetic batch, and prints one JSON line from rank 0:
the milliseconds of each step, of its reduction (pack, allreduce, unpack: waiting for the
slowest process included), and of the allreduce alone after a barrier. The runner times it
without MPI in one process with every core's BLAS threads, then under `mpiexec -n N` (each
process with its share of the cores), and reports ms per step, the reduction's share and the
scaling efficiency: one process's step time over N's, as they share this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cli.bench.cases import Settings
from cli.errors import FinetuneError
from cli.launcher import limit_blas_threads, prepare_engine

NUM_CLASSES = 10
ALLREDUCE_REPEATS = 5


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    import engine
    from cli.training.distributed import connect
    from cli.training.reduction import StepReduction
    from cli.training.sharding import Sharding
    from engine import optim
    from engine.models import resnet18
    from engine.nn import functional as F

    prepare_engine()  # as the finetune command does at start-up
    comm = connect()
    sharding = Sharding(comm.rank, comm.size)
    engine.manual_seed(0)
    model = resnet18(num_classes=NUM_CLASSES).train()
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.batch, 3, args.size, args.size)).astype(np.float32)
    labels = np.arange(args.batch) % NUM_CLASSES
    (mine,) = sharding.local(np.arange(args.batch), min_size=2)
    x, y = engine.from_numpy(images[mine]), engine.from_numpy(labels[mine])
    reduction = StepReduction(comm, model, sharding.shards)
    steps, reduces = [], []
    for index in range(args.warmup + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        reduction.begin()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        (loss * (len(mine) / args.batch)).backward()
        reduction.add(loss.item(), 0, len(mine))
        middle = time.perf_counter()
        reduction.reduce(args.batch, False)
        end = time.perf_counter()
        optimizer.step()
        if index >= args.warmup:
            steps.append((time.perf_counter() - start) * 1e3)
            reduces.append((end - middle) * 1e3)
    alone = []
    for _ in range(ALLREDUCE_REPEATS if comm.size > 1 else 0):
        comm.allgather(np.zeros(1))  # a barrier
        start = time.perf_counter()
        comm.allreduce(reduction.buffer)
        alone.append((time.perf_counter() - start) * 1e3)
    return {
        "ms": steps,
        "reduce_ms": reduces,
        "allreduce_ms": alone,
        "buffer_mb": reduction.buffer.nbytes / 1e6,
        "threads": os.environ.get("OMP_NUM_THREADS", "all"),
        "rank": comm.rank,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Time the steps (under mpiexec: this process's part of them) and print rank 0's line."""
    limit_blas_threads()  # under mpiexec: this process's share of the cores, before NumPy
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, required=True, help="the global batch")
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    result = _measure(parser.parse_args(argv))
    if result["rank"] == 0:
        print(json.dumps(result), flush=True)


def _run(args: list[str], what: str) -> dict[str, Any]:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise FinetuneError(f"{what} failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_ranks(
    ranks: int, sizes: list[tuple[int, int]], settings: Settings, console: Console | None = None
) -> list[dict[str, Any]]:
    """Time the train step at each (batch, pixels) in one process and over `ranks` processes;
    print the table and return its rows."""
    mpiexec = shutil.which("mpiexec") or shutil.which(
        "mpiexec", path=str(Path(sys.executable).parent)
    )
    if mpiexec is None:
        raise FinetuneError("--ranks needs mpiexec: pip install 'finetune[mpi]'")
    rows = []
    for batch, pixels in sizes:
        worker = [sys.executable, "-m", "cli.bench.ranks", "--batch", str(batch)]
        worker += ["--size", str(pixels), "--warmup", str(settings.warmup)]
        worker += ["--steps", str(settings.steps)]
        single, parallel = [], []
        for _ in range(settings.rounds):
            single.append(_run(worker, "the one-process worker"))
            parallel.append(_run([mpiexec, "-n", str(ranks), *worker], f"mpiexec -n {ranks}"))
        rows.append(_row(batch, pixels, ranks, single, parallel))
    _show(console or Console(), rows)
    return rows


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(statistics.median(run[key]) for run in runs if run[key])


def _row(
    batch: int, pixels: int, ranks: int, single: list[dict], parallel: list[dict]
) -> dict[str, Any]:
    one, many = _median(single, "ms"), _median(parallel, "ms")
    reduce = _median(parallel, "reduce_ms")
    return {
        "batch": batch,
        "size": pixels,
        "ranks": ranks,
        "threads": parallel[0]["threads"],
        "one_process_ms": one,
        "ms_per_step": many,
        "reduce_ms": reduce,
        "reduce_share": reduce / many,
        "allreduce_alone_ms": _median(parallel, "allreduce_ms"),
        "buffer_mb": parallel[0]["buffer_mb"],
        "efficiency": one / many,
    }


def _show(console: Console, rows: list[dict[str, Any]]) -> None:
    table = Table(
        title="ResNet18 train step: N MPI processes vs 1 process with every core",
        caption="reduce: pack, allreduce and unpack, waiting included (share of the step); "
        "allreduce: alone, after a barrier; eff.: 1 process's step time over N's",
    )
    for name in ("case", "1 proc ms", "N procs ms", "reduce ms", "allreduce", "MB", "eff."):
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(
            f"{row['batch']}x{row['size']} {row['ranks']}x{row['threads']}t",
            f"{row['one_process_ms']:.0f}",
            f"{row['ms_per_step']:.0f}",
            f"{row['reduce_ms']:.1f} ({row['reduce_share']:.1%})",
            f"{row['allreduce_alone_ms']:.1f}",
            f"{row['buffer_mb']:.1f}",
            f"{row['efficiency']:.2f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
