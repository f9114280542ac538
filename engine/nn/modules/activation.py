"""``ReLU``."""

from __future__ import annotations

from engine.nn import functional as F
from engine.nn.modules.module import Module
from engine.tensor import Tensor


class ReLU(Module):
    """``max(x, 0)``. ``inplace`` is kept for torch's signature and repr; the engine always
    computes out of place, which gives the same values and gradients."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, input: Tensor) -> Tensor:
        return F.relu(input)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""
