"""``Adam`` and ``AdamW``: one update rule, with weight decay coupled (L2) or decoupled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from engine import _dtype
from engine.optim.optimizer import Optimizer, ParamsT, Update, gradient_direction
from engine.tensor import Tensor


class Adam(Optimizer):
    """torch's Adam: moving averages of the gradient and its square with bias corrections,
    optionally AMSGrad's running maximum of the latter. ``weight_decay`` adds
    ``weight_decay * p`` to the gradient, or with ``decoupled_weight_decay`` (AdamW) scales
    the parameter by ``1 - lr * weight_decay`` before the update."""

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not eps >= 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {
            "lr": lr,
            "betas": (float(betas[0]), float(betas[1])),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = self._evaluate(closure)
        updates = [
            self._update(p, group)
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        self._apply_updates(updates, scratch=2)
        return loss

    def _update(self, p: Tensor, group: dict[str, Any]) -> Update:
        state = self.state[p]
        if not state:
            state["step"] = Tensor._make(np.zeros((), _dtype.get_default_dtype().numpy))
            state["exp_avg"] = Tensor._make(np.zeros_like(p._data))
            state["exp_avg_sq"] = Tensor._make(np.zeros_like(p._data))
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = Tensor._make(np.zeros_like(p._data))
        step_t = state["step"]._data
        np.add(step_t, 1, out=step_t)
        step = float(step_t)

        lr, weight_decay = float(group["lr"]), float(group["weight_decay"])
        beta1, beta2 = (float(b) for b in group["betas"])
        hyper = {
            "beta1": beta1,
            "beta2": beta2,
            "eps": float(group["eps"]),
            "weight_decay": 0.0 if group["decoupled_weight_decay"] else weight_decay,
            "decay_factor": 1 - lr * weight_decay if group["decoupled_weight_decay"] else 1,
            "maximize": bool(group["maximize"]),
            "step_size": lr / (1 - beta1**step),
            "bias_correction2_sqrt": (1 - beta2**step) ** 0.5,
        }
        arrays = [p._data, p.grad._data, state["exp_avg"]._data, state["exp_avg_sq"]._data]
        if group["amsgrad"]:
            arrays.append(state["max_exp_avg_sq"]._data)
        p._vc[0] += 1
        return _adam, arrays, hyper


class AdamW(Adam):
    """Adam with decoupled weight decay (default 1e-2), as torch's AdamW."""

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            decoupled_weight_decay=True,
        )


def _adam(
    work: np.ndarray,
    work2: np.ndarray,
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    max_exp_avg_sq: np.ndarray | None = None,
    *,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decay_factor: float,
    maximize: bool,
    step_size: float,
    bias_correction2_sqrt: float,
) -> None:
    """One Adam update of (a piece of) a parameter, in place, with torch's order of operations."""
    if decay_factor != 1:
        np.multiply(param, decay_factor, out=param)
    g = gradient_direction(grad, param, work, weight_decay, maximize)
    _lerp(exp_avg, g, 1 - beta1, work2)

    np.multiply(exp_avg_sq, beta2, out=exp_avg_sq)
    g2 = np.multiply(g, 1 - beta2, out=work2)
    np.add(exp_avg_sq, np.multiply(g2, g, out=g2), out=exp_avg_sq)
    if max_exp_avg_sq is not None:
        exp_avg_sq = np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)

    denom = np.sqrt(exp_avg_sq, out=work2)
    np.add(np.divide(denom, bias_correction2_sqrt, out=denom), eps, out=denom)
    update = np.multiply(exp_avg, -step_size, out=work)
    np.add(param, np.divide(update, denom, out=update), out=param)


def _lerp(start: np.ndarray, end: np.ndarray, weight: float, work: np.ndarray) -> None:
    """``start += weight * (end - start)`` in place, in torch's form for small or large weights."""
    diff = np.subtract(end, start, out=work)
    if abs(weight) < 0.5:
        np.add(start, np.multiply(diff, weight, out=work), out=start)
    else:
        np.add(end, np.multiply(diff, start.dtype.type(weight) - 1, out=work), out=start)
