"""``SGD``: stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from engine.optim.optimizer import Optimizer, ParamsT, Update, gradient_direction
from engine.tensor import Tensor


class SGD(Optimizer):
    """torch's SGD: ``g += weight_decay * p``; ``buf = momentum * buf + (1 - dampening) * g``
    (``buf = g`` on the first step); ``g = g + momentum * buf`` (Nesterov) or ``g = buf``;
    ``p -= lr * g``. Parameters whose ``.grad`` is None are skipped."""

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = self._evaluate(closure)
        updates = []
        for group in self.param_groups:
            hyper = {
                "lr": float(group["lr"]),
                "momentum": float(group["momentum"]),
                "dampening": float(group["dampening"]),
                "weight_decay": float(group["weight_decay"]),
                "nesterov": bool(group["nesterov"]),
                "maximize": bool(group["maximize"]),
            }
            updates += [self._update(p, hyper) for p in group["params"] if p.grad is not None]
        self._apply_updates(updates, scratch=2)
        return loss

    def _update(self, p: Tensor, hyper: dict[str, Any]) -> Update:
        arrays = [p._data, p.grad._data]
        first = False
        if hyper["momentum"]:
            state = self.state[p]
            first = state.get("momentum_buffer") is None
            if first:
                state["momentum_buffer"] = Tensor._make(np.empty_like(p._data))
            arrays.append(state["momentum_buffer"]._data)
        p._vc[0] += 1
        return _sgd, arrays, {**hyper, "first": first}


def _sgd(
    work: np.ndarray,
    work2: np.ndarray,
    param: np.ndarray,
    grad: np.ndarray,
    buf: np.ndarray | None = None,
    *,
    first: bool,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
) -> None:
    """One SGD update of (a piece of) a parameter, in place, with torch's order of operations."""
    d_p = gradient_direction(grad, param, work, weight_decay, maximize)
    if buf is not None:
        if first:
            np.copyto(buf, d_p)
        else:
            np.multiply(buf, momentum, out=buf)
            if dampening:
                np.add(buf, np.multiply(d_p, 1 - dampening, out=work2), out=buf)
            else:
                np.add(buf, d_p, out=buf)
        d_p = np.add(d_p, np.multiply(buf, momentum, out=work2), out=work) if nesterov else buf
    np.subtract(param, np.multiply(d_p, lr, out=work), out=param)
