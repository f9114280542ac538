"""The torch side of `finetune bench --vs-torch`: one workload in torch, as one JSON line.

`python -m cli.bench.torch_worker --workload train --batch 32 --size 64` takes the arguments
and gives the output of `python -m cli.bench.worker`: the same `make_step`, on torchvision's
ResNet18 rebuilt from torch.nn layers (cli.bench.torch_resnet), two threads. The only module
of the project that imports torch, in a process of its own, and only for --vs-torch.
"""

from __future__ import annotations

import torch

from cli.bench.torch_resnet import torch_resnet
from cli.bench.worker import NUM_CLASSES, emit, make_step, parse_args, time_steps

THREADS = 2


def main() -> None:
    args = parse_args()
    torch.set_num_threads(THREADS)
    model = torch_resnet(torch, "resnet18", NUM_CLASSES)
    step = make_step(torch, model, args.workload, args.batch, args.size)
    time_steps(step, args.warmup)
    emit(time_steps(step, args.steps), f"torch {torch.__version__}, {THREADS} threads")


if __name__ == "__main__":
    main()
