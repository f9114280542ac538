"""Sync BatchNorm in float64 under `mpiexec -n 2`: a global batch split over the processes
must give the forward, gradients and running statistics of the whole batch on one process.

Prints the largest relative difference and exits non-zero (aborting the job) above 1e-10.
"""

from __future__ import annotations

import sys

import numpy as np

import engine
from cli.training.distributed import BatchStats, connect
from engine import nn
from engine.nn.kernels.norm import synced_batch_stats

BATCH = 8


def network() -> nn.Module:
    engine.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 3),
    )
    return model.double()


def run(model: nn.Module, x: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
    """The gradients of the squared error over the global batch, and the running statistics."""
    out = model(engine.from_numpy(x))
    (((out - engine.from_numpy(target)) ** 2).sum() / BATCH).backward()
    arrays = [p.grad.numpy() for p in model.parameters()]
    arrays += [b.numpy() for b in model.buffers() if b.dtype == engine.float64]
    return [np.ascontiguousarray(a) for a in arrays]


def main() -> None:
    comm = connect("mpi")
    x = np.random.default_rng(0).normal(3.0, 2.0, (BATCH, 3, 5, 5))
    target = np.cos(np.arange(BATCH * 3.0)).reshape(BATCH, 3)
    mine = slice(comm.rank * BATCH // comm.size, (comm.rank + 1) * BATCH // comm.size)
    model = network().train()
    with synced_batch_stats(BatchStats(comm)):
        synced = run(model, x[mine], target[mine])
    grads = len(list(model.parameters()))
    for array in synced[:grads]:
        comm.allreduce(array)
    whole = run(network().train(), x, target)
    worst = max(
        float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(synced, whole, strict=True)
    )
    print(f"rank {comm.rank}: largest relative difference {worst:.3g}", flush=True)
    if not worst < 1e-10:
        sys.exit(1)


if __name__ == "__main__":
    main()
