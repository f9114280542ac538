"""Where an engine step's time goes, for `finetune bench --profile`.

While `profile_ops()` is active, the forward and backward of the engine's kernel ops, the
two halves of the convolution's backward (its module-level input-gradient and weight-gradient
helpers, or both at once for a small or wide layer) and the optimizer's step run under timers.
Times are exclusive: a timed call inside another timed call counts only for itself, so the
categories never add up to more than the step; what they leave out (autograd, loss, fc,
additions, copies) is the rest of the step. Calls inside the pieces of work the engine spreads
over its threads are not timed apart: they count for the timed call that started the pieces,
on the calling thread.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from engine.parallel import in_piece

WINOGRAD = "engine.nn.kernels.winograd"
CONV = "engine.nn.kernels.conv"
DIRECT = "engine.nn.kernels.direct"
POOL = "engine.nn.kernels.pool"
POOL_OPS = ("MaxPool2DWithIndices", "AvgPool2D", "AdaptiveAvgPool2D")
TARGETS: dict[str, tuple[str, ...]] = {
    "conv forward": (f"{CONV}:Convolution.forward",),
    "conv input-grad": (
        f"{CONV}:input_grad_flipped",
        f"{CONV}:input_grad_col2im",
        f"{WINOGRAD}:input_grad",
    ),
    "conv weight-grad": (f"{CONV}:weight_grad", f"{WINOGRAD}:weight_grad"),
    # small convolutions compute both gradients at once, one a thread, and those that take one
    # product per kernel offset in one spread of pieces over the threads: timed together
    "conv grads side by side": (f"{CONV}:gradients_side_by_side", f"{DIRECT}:gradients"),
    "conv backward, other": (f"{CONV}:Convolution.backward",),
    # ResNet's blocks fuse ReLU (and the residual add) into BatchNorm; standalone ReLUs remain.
    # Eval-mode BatchNorm that no gradient goes through runs in the conv's pieces: conv forward
    "BatchNorm+ReLU forward": ("engine.nn.kernels.norm:BatchNorm.forward",),
    "BatchNorm+ReLU backward": ("engine.nn.kernels.norm:BatchNorm.backward",),
    "ReLU forward (unfused)": ("engine.ops.elementwise:Relu.forward",),
    "ReLU backward (unfused)": ("engine.ops.elementwise:Relu.backward",),
    "pooling forward": tuple(f"{POOL}:{op}.forward" for op in POOL_OPS),
    "pooling backward": tuple(f"{POOL}:{op}.backward" for op in POOL_OPS),
    "optimizer step": ("engine.optim.sgd:SGD.step",),
}


class Profile:
    """Exclusive seconds per category, and the targets that were not found in the engine."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.missing: list[str] = []
        self._children: list[float] = []  # per open timed call: time spent in timed callees

    def timed(self, category: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """`function`, with its exclusive time added to `category`."""

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            if in_piece():  # on the engine's threads: part of the timed call that started them
                return function(*args, **kwargs)
            self._children.append(0.0)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self.seconds[category] += elapsed - self._children.pop()
                if self._children:
                    self._children[-1] += elapsed

        return run

    def per_step(self, steps: int) -> dict[str, Any]:
        """Milliseconds per step of each category (in TARGETS' order), and the missing targets."""
        ms = {category: self.seconds[category] * 1e3 / steps for category in TARGETS}
        return {"ms": ms, "missing": self.missing}


def _owner(target: str) -> tuple[Any, str] | None:
    """The object holding the target `module:Qualified.name`, and the attribute's name."""
    module_name, _, path = target.partition(":")
    *owners, name = path.split(".")
    try:
        owner: Any = importlib.import_module(module_name)
        for part in owners:
            owner = getattr(owner, part)
    except (ImportError, AttributeError):
        return None
    return (owner, name) if name in vars(owner) else None


@contextmanager
def profile_ops() -> Iterator[Profile]:
    """Time the TARGETS while active; a target the engine no longer has is listed as missing."""
    profile = Profile()
    patched = []
    for category, targets in TARGETS.items():
        for target in targets:
            found = _owner(target)
            if found is None:
                profile.missing.append(target)
                continue
            owner, name = found
            original = vars(owner)[name]
            setattr(owner, name, profile.timed(category, original))
            patched.append((owner, name, original))
    try:
        yield profile
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
