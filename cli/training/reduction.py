"""One training step's sums over its shards and processes, in one preallocated float32 buffer.

The buffer holds, in order: the gradients of the trainable parameters; the running
statistics of the BatchNorm layers that train, each shard's times its image count; the
step's loss sum, correct predictions, image count and stop flag. Each process fills it from
its shards (their gradients already summed in `.grad` by backward, each shard's loss
weighted by its share of the global batch), then one in-place allreduce leaves the same
sums on every process. So gradients are those of the whole batch's mean loss, running
statistics the image-weighted mean of the shards' (every process ends the step with the
same weights and buffers), and the metrics those of the whole batch.

Gradients are packed in their parameters' memory order (a plain copy each way, not a
transposing one). The arithmetic does not depend on how the shards are spread over processes
when it is one addition per number (2 shards): 2 processes and 1 process with 2 micro-batches
give the same bits. A step of one shard in all (1 process, 1 micro-batch) is the seed's step,
untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import engine
from cli.training.distributed import Communicator
from engine import nn

SCALARS = 4  # loss sum, correct, images, stop


@dataclass
class Totals:
    """A step's numbers over the whole job: mean loss per image, correct, images, stop."""

    loss: float
    correct: int
    images: int
    stop: bool


class StepReduction:
    """Sums one step's shards on this process, then over the processes."""

    def __init__(self, comm: Communicator, model: nn.Module, shards: int) -> None:
        self.comm, self.model, self.shards = comm, model, shards
        self.layout: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def begin(self) -> None:
        """Before a step's first shard: lay the buffer out for what trains now, and keep the
        running statistics each shard starts from."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        norms = [
            m
            for m in self.model.modules()
            if isinstance(m, nn.BatchNorm2d) and m.training and m.track_running_stats
        ]
        if self.shards == 1:
            norms = []  # the seed's step: the only shard's statistics are the step's
        layout = (tuple(map(id, params)), tuple(map(id, norms)))
        if layout != self.layout:
            self._allocate(params, norms)
            self.layout = layout
        self.buffer[self.stats_start :] = 0
        self.saved = [stat.numpy().copy() for stat in self.stats]
        self.tracked = [m.num_batches_tracked.item() for m in self.norms]

    def add(self, loss: float, correct: int, images: int) -> None:
        """After a shard's backward: count its numbers and statistics, and set the running
        statistics back to where the step began, for the next shard."""
        # in float32, as the allreduce adds: the same bits however shards are spread
        self.scalars[:3] += np.array((loss * images, correct, images), np.float32)
        for view, stat in zip(self.stat_views, self.stats, strict=True):
            view += stat.numpy() * np.float32(images)
        self._restore()

    def reduce(self, size: int, stop: bool) -> Totals:
        """Sum over the processes in one allreduce; leave the gradients of the global batch
        of `size` sample indices in `.grad` and the averaged running statistics in place."""
        parallel = self.comm.size > 1
        if parallel:
            for view, param, order in zip(self.grad_views, self.params, self.orders, strict=True):
                view[...] = 0 if param.grad is None else param.grad.numpy().transpose(order).ravel()
        self.scalars[3] = stop
        self.comm.allreduce(self.buffer)
        loss, correct, images, stopped = self.scalars.tolist()
        if parallel:
            for view, param, order in zip(self.grad_views, self.params, self.orders, strict=True):
                if param.grad is None:
                    param.grad = engine.from_numpy(np.empty_like(param.detach().numpy()))
                grad = param.grad.numpy().transpose(order)
                np.copyto(grad, view.reshape(grad.shape))
        with engine.no_grad():
            if images and images != size:  # unreadable images skipped: rescale to those read
                for param in self.params:
                    if param.grad is not None:
                        param.grad.mul_(size / images)
        if images and self.norms:
            self.saved = [(view / np.float32(images)) for view in self.stat_views]
            self.tracked = [count + 1 for count in self.tracked]
            self._restore()
        return Totals(loss / max(images, 1), int(correct), int(images), stopped > 0)

    def _restore(self) -> None:
        with engine.no_grad():
            for stat, saved in zip(self.stats, self.saved, strict=True):
                stat.copy_(engine.from_numpy(saved.reshape(stat.shape)))
            for norm, count in zip(self.norms, self.tracked, strict=True):
                norm.num_batches_tracked.fill_(count)

    def _allocate(self, params: list[nn.Parameter], norms: list[nn.Module]) -> None:
        self.params, self.norms = params, norms
        self.orders = [_memory_order(p.detach().numpy()) for p in params]
        self.stats = [stat for m in norms for stat in (m.running_mean, m.running_var)]
        grads = sum(p.numel() for p in params) if self.comm.size > 1 else 0
        stats = sum(stat.numel() for stat in self.stats)
        self.buffer = np.zeros(grads + stats + SCALARS, np.float32)
        self.grad_views = _views(self.buffer, [p.numel() for p in params] if grads else [])
        self.stats_start = grads
        self.stat_views = _views(self.buffer[grads:], [stat.numel() for stat in self.stats])
        self.scalars = self.buffer[grads + stats :]


def _memory_order(array: np.ndarray) -> tuple[int, ...]:
    """The axes of `array` from the largest stride to the smallest: so transposed, an array in
    any contiguous layout (a channels-last convolution weight too) is C-contiguous, and packs
    into the buffer, and back, as one plain copy. Every process lays its parameters out alike."""
    return tuple(sorted(range(array.ndim), key=lambda axis: -array.strides[axis]))


def _views(buffer: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Consecutive views of `sizes` elements at the start of `buffer`."""
    bounds = np.cumsum([0, *sizes])
    return [buffer[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
