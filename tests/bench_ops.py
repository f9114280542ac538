"""Time conv2d forward and backward for every distinct ResNet18 conv shape, engine vs torch.

Run ``python tests/bench_ops.py [--batch 32] [--size 64] [--reps 10] [--rounds 2]``. Each
backend runs in its own subprocess (idle OpenBLAS threads spin after a call and would slow
the other one), on two threads, the two alternating for ``--rounds``. The table shows the
fastest of all repetitions in milliseconds (robust to other work on a shared machine) and
the ratio of the engine's forward + backward time to torch's. Activations and their
gradients are channels-last for the engine (as in its ResNet), contiguous NCHW for torch
(its default); conv1's input is the image, which needs no gradient.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

# name, in channels, out channels, kernel, stride, padding, input size as a fraction of the image
LAYERS = [
    ("conv1 7x7/2", 3, 64, 7, 2, 3, 1),
    ("layer1 3x3", 64, 64, 3, 1, 1, 4),
    ("layer2.0 3x3/2", 64, 128, 3, 2, 1, 4),
    ("layer2.0 down 1x1/2", 64, 128, 1, 2, 0, 4),
    ("layer2 3x3", 128, 128, 3, 1, 1, 8),
    ("layer3.0 3x3/2", 128, 256, 3, 2, 1, 8),
    ("layer3.0 down 1x1/2", 128, 256, 1, 2, 0, 8),
    ("layer3 3x3", 256, 256, 3, 1, 1, 16),
    ("layer4.0 3x3/2", 256, 512, 3, 2, 1, 16),
    ("layer4.0 down 1x1/2", 256, 512, 1, 2, 0, 16),
    ("layer4 3x3", 512, 512, 3, 1, 1, 32),
]


def _time(forward: Callable, backward: Callable, reset: Callable, reps: int) -> list[float]:
    """Fastest forward and backward times over ``reps`` calls after one warm-up."""
    fwd, bwd = [], []
    for _ in range(reps + 1):
        reset()
        t0 = time.perf_counter()
        y = forward()
        t1 = time.perf_counter()
        backward(y)
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
    return [min(fwd[1:]), min(bwd[1:])]


def _time_engine(layer: tuple, batch: int, size: int, reps: int) -> list[float]:
    import numpy as np

    import engine
    from engine.nn.kernels.conv import conv2d

    _, cin, cout, k, stride, pad, div = layer
    rng = np.random.default_rng(0)
    hw = size // div
    image = div == 1
    x = rng.standard_normal((batch, cin, hw, hw) if image else (batch, hw, hw, cin), np.float32)
    x = engine.from_numpy(x if image else x.transpose(0, 3, 1, 2)).requires_grad_(not image)
    w = engine.from_numpy(rng.standard_normal((cout, cin, k, k), np.float32)).requires_grad_()
    n, c, ho, wo = conv2d(x, w, None, stride, pad).shape
    gy = engine.from_numpy(rng.standard_normal((n, ho, wo, c), np.float32).transpose(0, 3, 1, 2))

    def reset() -> None:
        x.grad = w.grad = None

    return _time(lambda: conv2d(x, w, None, stride, pad), lambda y: y.backward(gy), reset, reps)


def _time_torch(layer: tuple, batch: int, size: int, reps: int) -> list[float]:
    import torch

    torch.set_num_threads(2)
    _, cin, cout, k, stride, pad, div = layer
    hw = size // div
    x = torch.randn(batch, cin, hw, hw, requires_grad=div != 1)
    w = torch.randn(cout, cin, k, k, requires_grad=True)
    gy = torch.randn_like(torch.nn.functional.conv2d(x, w, None, stride, pad))

    def reset() -> None:
        x.grad = w.grad = None

    conv = torch.nn.functional.conv2d
    return _time(lambda: conv(x, w, None, stride, pad), lambda y: y.backward(gy), reset, reps)


def _run_backend(backend: str, args: argparse.Namespace) -> None:
    timer = _time_engine if backend == "engine" else _time_torch
    results = [timer(layer, args.batch, args.size, args.reps) for layer in LAYERS]
    print(json.dumps(results))


def _measure(backend: str, args: argparse.Namespace) -> list:
    cmd = [sys.executable, __file__, "--backend", backend]
    cmd += ["--batch", str(args.batch), "--size", str(args.size), "--reps", str(args.reps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
    return json.loads(out)


def _best(rounds: list) -> list:
    """Per layer, the fastest forward and backward over rounds (the least disturbed ones)."""
    return [
        [min(times) for times in zip(*layer, strict=True)] for layer in zip(*rounds, strict=True)
    ]


def _table(engine_times: list, torch_times: list) -> str:
    lines = [
        f"{'layer':<22}{'eng fwd':>9}{'eng bwd':>9}{'torch fwd':>11}{'torch bwd':>11}{'ratio':>7}",
    ]
    total_e = total_t = 0.0
    for layer, (ef, eb), (tf, tb) in zip(LAYERS, engine_times, torch_times, strict=True):
        total_e, total_t = total_e + ef + eb, total_t + tf + tb
        lines.append(
            f"{layer[0]:<22}{ef * 1e3:9.2f}{eb * 1e3:9.2f}{tf * 1e3:11.2f}{tb * 1e3:11.2f}"
            f"{(ef + eb) / (tf + tb):7.2f}"
        )
    lines.append(f"{'total (fwd+bwd)':<22}{total_e * 1e3:18.2f}{total_t * 1e3:22.2f}")
    lines.append(f"{'':<22}{'':>18}{'':>22}{total_e / total_t:7.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["engine", "torch"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each backend")
    args = parser.parse_args()
    if args.backend:
        _run_backend(args.backend, args)
        return
    runs: dict[str, list] = {"engine": [], "torch": []}
    for _ in range(args.rounds):
        for backend, results in runs.items():
            results.append(_measure(backend, args))
            time.sleep(0.5)
    engine_times, torch_times = (_best(results) for results in runs.values())
    print(f"conv2d, batch {args.batch}, {args.size}x{args.size} images, best of runs, ms")
    print(_table(engine_times, torch_times))


if __name__ == "__main__":
    main()
