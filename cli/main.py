"""The `finetune` command: one thin function per verb; the work lives in the verb's module.

Every verb is registered with `@verb(...)`, which adds its examples to `--help`
and turns the errors a user can cause into one message on stderr and an exit
code: 0 ok, 1 failure, 2 usage or config error, 130 interrupted. Set
FINETUNE_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from cli import __version__
from cli.errors import ConfigError
from cli.launcher import abort_job, launched_rank, limit_blas_threads, prepare_engine

app = typer.Typer(
    name="finetune",
    help="Fine-tune ResNet image classifiers on the CPU, with a NumPy engine that follows torch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Verb = TypeVar("Verb", bound=Callable[..., Any])


def verb(*examples: str, group: typer.Typer = app, **options: Any) -> Callable[[Verb], Verb]:
    """Register a command on `group` (the app itself by default, or a sub-command group such as
    `finetune weights`), with an examples block in its help and the user-facing error handling."""
    epilog = "\n".join(["[bold]Examples[/bold]", *examples])

    def register(function: Verb) -> Verb:
        group.command(epilog=epilog, **options)(_reporting_errors(function))
        return function

    return register


def _reporting_errors(function: Verb) -> Verb:
    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            if os.environ.get("FINETUNE_DEBUG"):
                abort_job_after(exc)
                raise
            code = _exit_code(exc)
            rank = launched_rank()
            if rank == 0 or not getattr(exc, "shared", False):
                _report(exc, code, f"[rank {rank}] " if rank else "")
            if not getattr(exc, "shared", False):
                abort_job(code)  # the other processes must not wait for this one
            raise typer.Exit(code) from None

    return run  # type: ignore[return-value]


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, ConfigError):
        return 2
    return getattr(exc, "exit_code", 1)


def abort_job_after(exc: BaseException) -> None:
    """With FINETUNE_DEBUG: the traceback first, then the job's end (as without it)."""
    if not getattr(exc, "shared", False):
        import traceback

        traceback.print_exception(exc)
        abort_job(1)


def _report(exc: BaseException, code: int, rank: str = "") -> None:
    from cli.errors import FinetuneError
    from engine.io import WeightsError

    if isinstance(exc, KeyboardInterrupt):
        prefix, message = "interrupted", "stopped by Ctrl-C"
    elif code == 130:
        prefix, message = "interrupted", str(exc)
    elif isinstance(exc, (FinetuneError, WeightsError, OSError)):
        prefix, message = "error", str(exc)
    else:
        prefix = "internal error"
        message = (
            f"{type(exc).__name__}: {exc}\n"
            "This is a bug in finetune; set FINETUNE_DEBUG=1 to see the traceback."
        )
    style = "yellow" if code == 130 else "bold red"
    Console(stderr=True, soft_wrap=True).print(
        Text(rank) + Text(f"{prefix}: ", style=style) + Text(message)
    )


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"finetune {__version__}")
        raise typer.Exit()


def config_overrides(example: str) -> Any:
    """The KEY=VALUE arguments that override a config's values."""
    return typer.Argument(
        metavar="[KEY=VALUE]...",
        help=f"Dotted config overrides, e.g. {example}.",
        show_default=False,
    )


def output_file(flag: str, help: str) -> Any:
    """An option naming a file to write, such as --json FILE."""
    return typer.Option(flag, metavar="FILE", dir_okay=False, help=help, show_default=False)


@app.callback()
def main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="Show the version and exit.", callback=_show_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Fine-tune ResNet image classifiers on the CPU, with a NumPy engine that follows torch."""
    limit_blas_threads()  # before any verb imports NumPy
    prepare_engine()


Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[KEY=VALUE]...",
        help="Dotted config overrides, e.g. optim.lr=0.001.",
        show_default=False,
    ),
]
ConfigFile = Annotated[
    Path,
    typer.Argument(
        metavar="CONFIG.yaml",
        help="A config file, or a bundled config's name (finetune config list).",
        show_default=False,
    ),
]


@verb(
    "finetune train quickstart                                # a bundled config, from any folder",
    "finetune train configs/quickstart.yaml                   # the bundled digits, offline",
    "finetune train configs/quickstart.yaml optim.lr=0.05 schedule.epochs=8",
    "finetune train my.yaml run.output_dir=runs/try1 --overwrite",
    "finetune train --resume runs/quickstart-20260101-120000  # continue where it stopped",
    "finetune train --resume runs/quickstart-20260101-120000 schedule.epochs=8  # train longer",
)
def train(
    config: Annotated[
        Path | None,
        typer.Argument(
            metavar="CONFIG.yaml",
            help="The run's YAML config, or a bundled config's name (finetune config list).",
            show_default=False,
        ),
    ] = None,
    overrides: Overrides = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            metavar="RUN_DIR",
            help="Continue the run in RUN_DIR exactly where it stopped, with its saved config.",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start over in a run folder that is not empty.")
    ] = False,
    progress: Annotated[
        Literal["auto", "bars", "plain"],
        typer.Option(
            "--progress",
            help="Live bars, or plain lines for logs; auto: bars only on a terminal.",
        ),
    ] = "auto",
) -> None:
    """Train a model from a YAML config, writing checkpoints and metrics to a run folder."""
    from cli.train import train as run_training

    overrides = overrides or []
    if resume is not None and config is not None:
        if "=" not in str(config):
            raise typer.BadParameter(
                "--resume continues RUN_DIR with the config saved there; drop CONFIG.yaml",
                param_hint="--resume",
            )
        config, overrides = None, [str(config), *overrides]
    if resume is not None and overwrite:
        raise typer.BadParameter(
            "--resume and --overwrite exclude each other", param_hint="--resume"
        )
    if resume is None and config is None:
        raise typer.BadParameter(
            "give a CONFIG.yaml, or --resume RUN_DIR", param_hint="CONFIG.yaml"
        )
    run_training(config, overrides, resume=resume, overwrite=overwrite, progress=progress)


@verb(
    "finetune lr-find quickstart            # prints the lr and the train command",
    "finetune lr-find configs/digits-transfer.yaml --out plots/",
    "finetune lr-find my.yaml data.batch_size=16 --end-lr 1",
)
def lr_find(
    config: ConfigFile,
    overrides: Overrides = None,
    out: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="Where to write lr_find.png.")
    ] = Path("."),
    start_lr: Annotated[float, typer.Option("--start-lr", min=0, help="The first rate.")] = 1e-7,
    end_lr: Annotated[float, typer.Option("--end-lr", min=0, help="The last rate.")] = 10.0,
    steps: Annotated[int, typer.Option("--steps", min=2, max=100, help="Batches at most.")] = 100,
) -> None:
    """Find a learning rate: train a fresh copy of the model at exponentially rising rates,
    stop when the loss explodes, and suggest the rate where it fell fastest. No run folder."""
    from cli.lr_find import lr_find as run_lr_find

    if not 0 < start_lr < end_lr:
        raise typer.BadParameter(
            f"needs 0 < --start-lr < --end-lr, got {start_lr:g} and {end_lr:g}",
            param_hint="--start-lr",
        )

    run_lr_find(config, overrides or [], out=out, start_lr=start_lr, end_lr=end_lr, steps=steps)


@verb(
    "finetune gradcheck                           # every op, layer and block",
    "finetune gradcheck --op conv2d --op batch_norm",
)
def gradcheck(
    op: Annotated[
        list[str] | None,
        typer.Option(
            "--op",
            metavar="NAME",
            help="Check only this op and its variants (conv2d: conv2d\\[groups], ...); repeatable.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random inputs.")] = 0,
) -> None:
    """Check the gradient of every differentiable op, layer and block by finite differences."""
    from cli.gradcheck import run

    run(op, seed)


@verb(
    "finetune inspect-model --arch resnet18 --num-classes 10",
    "finetune inspect-model configs/resnet18-linear-probe.yaml   # trainable vs frozen",
    "finetune inspect-model configs/quickstart.yaml --input-size 64",
)
def inspect_model(
    config: Annotated[
        Path | None,
        typer.Argument(
            metavar="CONFIG.yaml",
            help="Build the model as this config's model section says (weights, freeze rules).",
            show_default=False,
        ),
    ] = None,
    arch: Annotated[
        Literal["resnet18", "resnet34", "resnet50"] | None,
        typer.Option("--arch", help="The architecture (default: the config's, else resnet18)."),
    ] = None,
    num_classes: Annotated[
        int | None,
        typer.Option(
            "--num-classes", min=1, help="Outputs of the head (default: the config's, else 1000)."
        ),
    ] = None,
    input_size: Annotated[
        int | None,
        typer.Option(
            "--input-size",
            min=1,
            metavar="PIXELS",
            help="Side of the input image (default: the config's data.image_size, else 224).",
        ),
    ] = None,
) -> None:
    """Show a model: its tree as torch prints it, parameters (trainable or frozen), MACs."""
    from cli.inspect_model import inspect_model as show

    show(config, arch, num_classes, input_size)


weights_app = typer.Typer(
    help="Get pretrained weights: fetch torchvision's official files, or import a local .pth.",
    epilog="\n".join(
        [
            "[bold]Examples[/bold]",
            "finetune weights fetch resnet18",
            "finetune weights import ~/Downloads/resnet18-f37072fd.pth",
        ]
    ),
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")


@verb(
    "finetune weights fetch resnet18       # -> weights/resnet18-f37072fd.safetensors",
    "finetune weights fetch resnet50 --dir ~/models",
    group=weights_app,
    name="fetch",
)
def weights_fetch(
    arch: Annotated[
        Literal["resnet18", "resnet34", "resnet50"],
        typer.Argument(help="Which ImageNet weights to download.", show_default=False),
    ],
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to store the .pth and the .safetensors.")
    ] = Path("weights"),
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="Download from this URL (a mirror); its file name must carry the hash prefix.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Download torchvision's ImageNet weights, check their SHA-256, convert to safetensors."""
    from cli.weights import fetch

    fetch(arch, directory, url)


@verb(
    "finetune weights import ~/Downloads/resnet18-f37072fd.pth",
    "finetune weights import checkpoint.pth --out weights/mine.safetensors",
    group=weights_app,
    name="import",
)
def weights_import(
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE.pth", help="A torch.save state dict.", show_default=False),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", metavar="FILE", help="The safetensors file (default: FILE with .safetensors)."
        ),
    ] = None,
) -> None:
    """Convert a .pth you already have to safetensors (checking the hash its name carries)."""
    from cli.weights import import_file

    import_file(file, out)


@verb(
    "finetune evaluate runs/quickstart-20260101-120000          # a run's best weights, val split",
    "finetune evaluate runs/my-run --split test --json eval.json --csv per-class.csv",
    "finetune evaluate runs/my-run --data ~/new-photos          # every image of another folder",
    "finetune evaluate runs/my-run data.batch_size=64 data.num_workers=4",
    "finetune evaluate configs/quickstart.yaml --weights runs/q/last.safetensors",
)
def evaluate(
    target: Annotated[
        Path,
        typer.Argument(
            metavar="RUN_OR_CONFIG",
            help="A run folder (uses its config and best.safetensors) or a config.",
            show_default=False,
        ),
    ],
    overrides: Overrides = None,
    split: Annotated[
        Literal["val", "test", "train"],
        typer.Option("--split", help="Which images: validation, test (ImageFolder test/), train."),
    ] = "val",
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            metavar="DIR",
            exists=True,
            file_okay=False,
            help="An ImageFolder to evaluate on instead: DIR/<class>/... (every image) or "
            "DIR/train|val|test/<class>/... (the --split).",
            show_default=False,
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights",
            metavar="FILE",
            help="Weights to evaluate (default: the run's best, or the config's model.weights).",
        ),
    ] = None,
    json_file: Annotated[
        Path | None, output_file("--json", "Write every figure to FILE as JSON.")
    ] = None,
    csv_file: Annotated[
        Path | None, output_file("--csv", "Write the per-class table to FILE.")
    ] = None,
) -> None:
    """Loss, top-1/top-5 accuracy, per-class precision/recall/F1 and the confusion matrix."""
    from cli.evaluate import evaluate as run_evaluation

    run_evaluation(target, split, data, overrides or [], weights, json_file, csv_file)


@verb(
    "finetune predict runs/quickstart-20260101-120000 photo.jpg",
    "finetune predict runs/my-run images/ --top-k 3 --csv predictions.csv",
    "finetune predict runs/my-run inbox/ --json predictions.json --skip-bad",
)
def predict(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="A training run folder.", show_default=False)
    ],
    images: Annotated[
        list[Path],
        typer.Argument(
            metavar="IMAGE_OR_DIR...",
            help="Image files, and folders searched recursively for images.",
            show_default=False,
        ),
    ],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes shown per image.")] = 5,
    weights: Annotated[
        Path | None,
        typer.Option("--weights", metavar="FILE", help="Other weights (default: the run's best)."),
    ] = None,
    json_file: Annotated[
        Path | None, output_file("--json", "Write the predictions to FILE as JSON.")
    ] = None,
    csv_file: Annotated[
        Path | None, output_file("--csv", "Write one row per image to FILE.")
    ] = None,
    skip_bad: Annotated[
        bool,
        typer.Option("--skip-bad", help="Exit 0 even when some images cannot be read."),
    ] = False,
) -> None:
    """Classify images with a trained run's model: the top-k classes and their probabilities."""
    from cli.predict import predict as run_prediction

    run_prediction(run_dir, images, top_k, weights, json_file, csv_file, skip_bad)


@verb(
    "finetune report runs/quickstart-20260101-120000   # curves, confusion matrices, mistakes",
)
def report(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="A training run folder.", show_default=False)
    ],
) -> None:
    """Write a run's results.csv and pictures: curves.png, confusion matrices, mistakes.png."""
    from cli.report import report as write_report

    write_report(run_dir)


@verb(
    "finetune export runs/quickstart-20260101-120000       # -> runs/.../export/best.onnx",
    "finetune export runs/my-run --weights last --opset 13 --out model.onnx",
    "finetune export runs/my-run --format safetensors --out resnet18-pets.safetensors",
)
def export(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="A training run folder.", show_default=False)
    ],
    fmt: Annotated[
        Literal["onnx", "safetensors"],
        typer.Option(
            "--format",
            help="onnx: runs in onnxruntime without torch (needs the onnx extra); "
            "safetensors: the weights alone, with torchvision's key names.",
        ),
    ] = "onnx",
    weights: Annotated[
        Literal["best", "last"],
        typer.Option("--weights", help="The run's best or last weights."),
    ] = "best",
    opset: Annotated[
        int | None,
        typer.Option(
            "--opset", metavar="N", help="ONNX opset version (default 17).", show_default=False
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="FILE",
            dir_okay=False,
            help="Where to write (default: RUN_DIR/export/<weights>.<format>).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Export a run's model to a file, with its class names and preprocessing in the metadata."""
    from cli.export import export as run_export

    run_export(run_dir, fmt, weights, opset, out)


config_app = typer.Typer(
    help="The bundled configs: list them, copy one to edit, validate a config.",
    epilog="\n".join(
        [
            "[bold]Examples[/bold]",
            "finetune config list",
            "finetune config copy resnet18-finetune my.yaml",
            "finetune config validate my.yaml optim.lr=0.001",
        ]
    ),
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")


@verb("finetune config list", group=config_app, name="list")
def config_list() -> None:
    """The bundled configs, by name: `finetune train NAME` runs one from any folder."""
    from cli.bundled import show

    show()


@verb(
    "finetune config copy quickstart                  # -> ./quickstart.yaml",
    "finetune config copy resnet18-finetune my.yaml   # then edit my.yaml",
    group=config_app,
    name="copy",
)
def config_copy(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A bundled config's name.")],
    dest: Annotated[
        Path | None,
        typer.Argument(
            metavar="[DEST]",
            help="The file, or a folder for NAME.yaml (default: the current folder).",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace DEST if it exists.")
    ] = False,
) -> None:
    """Copy a bundled config, to edit it and train with it."""
    from cli.bundled import copy

    target = copy(name, dest, overwrite=overwrite)
    typer.echo(f"copied {name} to {target}; edit it, then: finetune train {target}")


@verb(
    "finetune config validate my.yaml",
    "finetune config validate quickstart data.image_size=64 > resolved.yaml",
    group=config_app,
    name="validate",
)
def config_validate(
    config: ConfigFile,
    overrides: Overrides = None,
) -> None:
    """Check a config as train would (every problem at once, exit 2); print it resolved."""
    from cli.validate import validate

    validate(config, overrides or [])


@verb(
    "finetune bench                        # train, frozen, eval at 32x64 and 16x224; the loader",
    "finetune bench --vs-torch --json bench.json     # engine/torch ratios, figures for tracking",
    "finetune bench --workload train --size 8x112 --profile    # where the engine's time goes",
    "finetune bench --workload loader --loader ~/pets/train    # your own folder of images",
    "finetune bench --ranks 2       # the train step over 2 MPI processes vs 1 (32x64)",
)
def bench(
    workload: Annotated[
        list[str] | None,
        typer.Option(
            "--workload",
            metavar="NAME",
            help="train, frozen, eval or loader; repeatable or comma-separated (default: all).",
            show_default=False,
        ),
    ] = None,
    size: Annotated[
        list[str] | None,
        typer.Option(
            "--size",
            metavar="BATCHxPIXELS",
            help="A batch and image side (32x64: 32 images of 64x64), or PIXELS at --batch; "
            "repeatable or comma-separated (default: 32x64,16x224).",
            show_default=False,
        ),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(
            "--batch",
            min=1,
            help="Batch of the sizes given as PIXELS (and of the defaults).",
            show_default=False,
        ),
    ] = None,
    rounds: Annotated[
        int, typer.Option("--rounds", min=1, help="Runs of each case per backend.")
    ] = 3,
    warmup: Annotated[
        int, typer.Option("--warmup", min=0, help="Untimed steps at the start of a run.")
    ] = 2,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Timed steps of a run.")] = 5,
    vs_torch: Annotated[
        bool,
        typer.Option("--vs-torch", help="Also time torch (needs torch installed)."),
    ] = False,
    profile: Annotated[
        bool, typer.Option("--profile", help="Break the engine's steps down by op.")
    ] = False,
    json_file: Annotated[
        Path | None, output_file("--json", "Write all figures to FILE as JSON.")
    ] = None,
    loader: Annotated[
        Path | None,
        typer.Option(
            "--loader",
            metavar="DIR",
            exists=True,
            file_okay=False,
            help="The loader's folder of class folders (default: 256 generated 224x224 JPEGs).",
            show_default=False,
        ),
    ] = None,
    ranks: Annotated[
        int | None,
        typer.Option(
            "--ranks",
            min=2,
            metavar="N",
            help=(
                "Time the train step under mpiexec -n N against one process "
                "(needs pip install 'finetune\\[mpi]')."
            ),
            show_default=False,
        ),
    ] = None,
) -> None:
    """Time ResNet18 training, frozen-backbone and eval steps, and the data loader alone."""
    from cli.bench.cases import Settings
    from cli.bench.runner import bench as run_bench

    settings = Settings(rounds, warmup, steps, profile, vs_torch)
    if ranks is not None:
        from cli.bench.cases import parse_sizes
        from cli.bench.ranks import bench_ranks

        bench_ranks(ranks, parse_sizes(size, batch) if size else [(batch or 32, 64)], settings)
        return
    run_bench(workload, size, batch, settings, json_file, loader)


if __name__ == "__main__":
    app()
