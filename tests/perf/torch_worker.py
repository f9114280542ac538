"""The torch side of `finetune bench --vs-torch`: one workload in torch, as one JSON line.

cli/bench.py runs `python tests/perf/torch_worker.py --workload train --batch 32 --size 64`
with the arguments and output of `python -m cli.bench_worker`: the same `make_step`, on
torchvision's ResNet18 rebuilt from torch.nn layers (tests/_torch_resnet.py), two threads.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
THREADS = 2


def main() -> None:
    sys.path[:0] = [str(TESTS), str(TESTS.parent)]  # _torch_resnet; cli from a source checkout
    import torch
    from _torch_resnet import torch_resnet

    from cli.bench_worker import NUM_CLASSES, emit, make_step, parse_args, time_steps

    args = parse_args()
    torch.set_num_threads(THREADS)
    model = torch_resnet(torch, "resnet18", NUM_CLASSES)
    step = make_step(torch, model, args.workload, args.batch, args.size)
    time_steps(step, args.warmup)
    emit(time_steps(step, args.steps), f"torch {torch.__version__}, {THREADS} threads")


if __name__ == "__main__":
    main()
