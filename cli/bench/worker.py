"""One `finetune bench` measurement, run in a fresh process and printed as one JSON line.

`python -m cli.bench.worker --workload train --batch 32 --size 64` times the engine;
`python -m cli.bench.torch_worker` times torch with the same arguments, output and `make_step`,
which is written once against the API the engine shares with torch. The line holds the
milliseconds of each timed step after the warm-up steps (for the loader, a step is a pass
over its folder, reported per `--batch` images), the process's peak RSS and the backend's
version. numpy and the engine are imported inside the engine's functions only, so that the
torch worker, which imports this module, never loads them.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

MODEL_WORKLOADS = ("train", "frozen", "eval")
WORKLOADS = (*MODEL_WORKLOADS, "loader")
NUM_CLASSES = 10
LR, MOMENTUM = 0.01, 0.9
LOADER_IMAGES = 256  # the loader times passes over at most this many images of its folder

Step = Callable[[], object]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=WORKLOADS, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--profile", action="store_true", help="time the engine's kernels")
    parser.add_argument("--folder", type=Path, help="the loader's images (class folders)")
    args = parser.parse_args(argv)
    if args.workload == "loader" and args.folder is None:
        parser.error("the loader workload needs --folder")
    return args


def make_step(lib: ModuleType, model: Any, workload: str, batch: int, size: int) -> Step:
    """One step of a model workload for `lib` (`engine` or `torch`) on a ResNet18 `model`.

    train: forward, cross-entropy, backward, SGD with momentum over every parameter.
    frozen: every parameter frozen, a new fc trained, BatchNorm in eval mode.
    eval: forward without grad in eval mode.
    """
    if workload not in MODEL_WORKLOADS:
        raise ValueError(f"not a model workload: {workload!r}")
    lib.manual_seed(0)
    images = lib.randn(batch, 3, size, size)
    labels = lib.tensor([i % NUM_CLASSES for i in range(batch)])
    if workload == "eval":
        model.eval()

        def infer() -> None:
            with lib.no_grad():
                model(images)

        return infer
    if workload == "frozen":
        model.requires_grad_(False)
        model.fc = lib.nn.Linear(model.fc.in_features, NUM_CLASSES)
        model.eval()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = lib.optim.SGD(trainable, lr=LR, momentum=MOMENTUM)
    criterion = lib.nn.CrossEntropyLoss()

    def train() -> None:
        optimizer.zero_grad()
        criterion(model(images), labels).backward()
        optimizer.step()

    return train


def time_steps(step: Step, count: int) -> list[float]:
    """Milliseconds of each of `count` calls of `step`."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def emit(ms: list[float], version: str, **extra: Any) -> None:
    """Print the result line: step times, peak RSS in MiB, the backend's version, `extra`."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (
        1024 if sys.platform == "darwin" else 1
    )
    print(json.dumps({"ms": ms, "peak_rss_mib": kib / 1024, "version": version, **extra}))


def loader_step(folder: Path, batch: int) -> tuple[Step, int]:
    """A pass of the DataLoader over the folder's first images (resize 256, center crop 224,
    normalise, as `finetune evaluate` reads them; DataConfig's worker threads), and their count."""
    from cli.config import DataConfig
    from cli.data import DataLoader, ImageDataset
    from cli.data.imagefolder import imagefolder_splits
    from cli.data.transforms import make_transform

    cfg = DataConfig(dataset="imagefolder", root=folder, batch_size=batch)
    samples, _, classes = imagefolder_splits(folder)
    samples = samples.take(slice(0, LOADER_IMAGES))
    dataset = ImageDataset(samples, classes, make_transform(cfg, train=False))
    loader = DataLoader(dataset, batch, num_workers=cfg.num_workers)

    def one_pass() -> None:
        for _ in loader:
            pass

    return one_pass, len(dataset)


def _measure(args: argparse.Namespace) -> None:
    import numpy as np

    version = f"numpy {np.__version__}"
    if args.workload == "loader":
        step, images = loader_step(args.folder, args.batch)
        time_steps(step, args.warmup)
        per_batch = args.batch / images
        emit([ms * per_batch for ms in time_steps(step, args.steps)], version, images=images)
        return
    import engine
    from cli.bench.floor import count_products, sgemm_gflops
    from cli.bench.profile import profile_ops
    from cli.launcher import prepare_engine
    from engine.models import resnet18

    prepare_engine()  # as the finetune command does at start-up
    model = resnet18(num_classes=NUM_CLASSES)
    step = make_step(engine, model, args.workload, args.batch, args.size)
    time_steps(step, args.warmup)
    if not args.profile:
        emit(time_steps(step, args.steps), version)
        return
    gflops = sgemm_gflops()
    with profile_ops() as profile, count_products() as products:
        ms = time_steps(step, args.steps)
    figures = {"gemm_gflop": products.flops / args.steps / 1e9, "sgemm_gflops": gflops}
    emit(ms, version, profile={**profile.per_step(args.steps), **figures})


def main(argv: Sequence[str] | None = None) -> None:
    """Measure the engine (or the data loader) as the arguments say; a data problem exits 1."""
    from cli.errors import FinetuneError

    try:
        _measure(parse_args(argv))
    except FinetuneError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
