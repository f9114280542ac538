"""The learning-rate range test (Smith 2015, as fastai's `lr_find`): raise the learning rate
exponentially batch after batch, follow the smoothed loss, stop when it explodes, and suggest
the rate where it falls fastest."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Sweep:
    """Learning rates from `start` to `end` over `steps` batches, and the losses they gave.

    The loss is smoothed as fastai's Recorder does (an exponential moving average with
    `beta`, debiased); the sweep stops once it exceeds `explode` times its lowest value.
    """

    start: float = 1e-7
    end: float = 10.0
    steps: int = 100
    beta: float = 0.98
    explode: float = 4.0
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # smoothed
    _average: float = 0.0

    def lr(self, step: int) -> float:
        """The learning rate of batch `step` (from 0)."""
        return self.start * (self.end / self.start) ** (step / max(self.steps - 1, 1))

    def record(self, lr: float, loss: float) -> bool:
        """Add a batch's loss at `lr`; False once the sweep should stop."""
        self._average = self.beta * self._average + (1 - self.beta) * loss
        smoothed = self._average / (1 - self.beta ** (len(self.losses) + 1))
        self.lrs.append(lr)
        self.losses.append(smoothed)
        exploded = not math.isfinite(smoothed) or smoothed > self.explode * min(self.losses)
        return not exploded and len(self.losses) < self.steps

    def suggestion(self) -> float | None:
        """The learning rate where the smoothed loss falls fastest against log(lr) (fastai's
        "steep"), leaving out the first tenth of the steps and the last five, as fastai does."""
        first, last = self.steps // 10, len(self.losses) - 5
        if last - first < 2:
            first, last = 0, len(self.losses)
        lrs, losses = self.lrs[first:last], self.losses[first:last]
        slopes = [
            (losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i]))
            for i in range(len(lrs) - 1)
            if math.isfinite(losses[i + 1])
        ]
        if not slopes:
            return None
        return lrs[min(range(len(slopes)), key=slopes.__getitem__)]
