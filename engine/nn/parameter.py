"""``Parameter``: a tensor that a ``Module`` registers as one of its learnable weights."""

from __future__ import annotations

import numpy as np

from engine import _dtype
from engine.tensor import Tensor


class Parameter(Tensor):
    """A leaf tensor that requires grad by default and shares storage with ``data``."""

    def __init__(self, data: Tensor | np.ndarray | None = None, requires_grad: bool = True) -> None:
        if isinstance(data, Tensor):
            self._init(data._data)
            self._vc = data._vc
        else:
            empty = np.empty(0, _dtype.get_default_dtype().numpy)
            self._init(empty if data is None else np.asarray(data))
        self.requires_grad = requires_grad

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()
