"""``Optimizer``: torch's optimizer base (param groups, state, state dicts), plus the array
helpers the update rules share.

Update rules work on the parameters' NumPy arrays in place with ``out=`` arguments, in the
parameters' dtype (Python-float hyper-parameters never promote float32 to float64).
``Optimizer._apply_updates`` walks each parameter and its state arrays in cache-sized chunks so
that a rule's chain of element-wise operations reads and writes each element while it is still
in cache (PERF-NOTES item 4), the chunks of all parameters spread over the engine's threads.
"""

from __future__ import annotations

import copy
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import Any

import numpy as np

from engine.autograd.grad_mode import enable_grad
from engine.parallel import lane, parallel
from engine.tensor import Tensor

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]]
Update = tuple[Callable[..., None], list[np.ndarray], dict[str, Any]]
"""An update rule, the arrays it updates (parameter, gradient, state) and its keywords."""

CHUNK_BYTES = 1 << 20
"""Size of one chunk of a parameter: the fastest measured for SGD over ResNet18's parameters."""


class Optimizer:
    """Base class of optimizers: subclasses give ``defaults`` and implement ``step``.

    ``params`` is an iterable of tensors (or of ``(name, tensor)`` pairs), or of dicts, each a
    param group with its own hyper-parameters; keys a group leaves out come from ``defaults``.
    """

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        if isinstance(params, Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or "
                f"dicts, but got {_typename(params)}"
            )
        self.defaults = defaults
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        self._scratch: dict[tuple[np.dtype, tuple[int, int]], np.ndarray] = {}
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def __getstate__(self) -> dict[str, Any]:
        return {"defaults": self.defaults, "state": self.state, "param_groups": self.param_groups}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._scratch = {}

    def __repr__(self) -> str:
        text = f"{type(self).__name__} ("
        for i, group in enumerate(self.param_groups):
            text += f"\nParameter Group {i}\n"
            text += "".join(
                f"    {key}: {group[key]}\n" for key in sorted(group) if key != "params"
            )
        return text + ")"

    # ----------------------------------------------------------------- param groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters (with optional hyper-parameters of its own)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but the "
                "ordering of tensors in sets will change between runs. Please use a list instead."
            )
        params = list(params)
        names = [p[0] for p in params if isinstance(p, tuple)]
        param_group["params"] = [p[1] if isinstance(p, tuple) else p for p in params]
        if names:
            if len(names) != len(params):
                raise ValueError(
                    "all optimizer params should be with/without names. Some param names are "
                    "missing"
                )
            param_group["param_names"] = names

        for param in param_group["params"]:
            if not isinstance(param, Tensor):
                raise TypeError(
                    "optimizer can only optimize Tensors, but one of the params is "
                    + _typename(param)
                )
            if not (param.is_leaf or param.retains_grad):
                raise ValueError("can't optimize a non-leaf Tensor")
        for name, default in self.defaults.items():
            param_group.setdefault(name, default)

        ids = [id(p) for p in param_group["params"]]
        if len(ids) != len(set(ids)):
            warnings.warn(
                "optimizer contains a parameter group with duplicate parameters; in future, this "
                "will cause an error; see github.com/pytorch/pytorch/issues/40967 for more "
                "information",
                stacklevel=3,
            )
        for group in self.param_groups:
            if ("param_names" in param_group) != ("param_names" in group):
                which = "with names" if "param_names" in param_group else "without names"
                raise ValueError(
                    "all optimizer param groups should be with/without names. "
                    f"cannot add param group {which} to the optimizer"
                )
        seen = {id(p) for group in self.param_groups for p in group["params"]}
        if not seen.isdisjoint(ids):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the parameters' gradients (or, with ``set_to_none=False``, fill them with 0)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                    continue
                grad = p.grad
                if grad.grad_fn is not None:
                    grad.detach_()
                else:
                    grad.requires_grad_(False)
                grad.zero_()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update the parameters once; ``closure`` re-evaluates the model and returns the loss."""
        raise NotImplementedError

    @staticmethod
    def _evaluate(closure: Callable[[], Any] | None) -> Any:
        if closure is None:
            return None
        with enable_grad():
            return closure()

    # ----------------------------------------------------------------- state dicts
    def state_dict(self) -> dict[str, Any]:
        """``{'state': {index: {...}}, 'param_groups': [{..., 'params': [index, ...]}]}``.

        Parameters are numbered in group order; the state's tensors are the live ones, as in
        torch (copy them, or save them, before stepping again if a snapshot is needed).
        """
        index: dict[int, int] = {}
        start = 0
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for i, p in enumerate(group["params"], start):
                index.setdefault(id(p), i)
            packed["params"] = [index[id(p)] for p in group["params"]]
            start += len(packed["params"])
            groups.append(packed)
        state = {(index[id(k)] if isinstance(k, Tensor) else k): v for k, v in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a ``state_dict()``: hyper-parameters and (copied) per-parameter state."""
        groups = self.param_groups
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(
            len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups, strict=True)
        ):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of "
                "optimizer's group"
            )
        by_index = dict(
            zip(
                chain.from_iterable(s["params"] for s in saved_groups),
                chain.from_iterable(g["params"] for g in groups),
                strict=True,
            )
        )
        state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        for key, value in state_dict["state"].items():
            if key in by_index:
                state[by_index[key]] = _copy_state(by_index[key], value)
            else:
                state[key] = value
        for group, saved in zip(groups, saved_groups, strict=True):
            saved["params"] = group["params"]
            if "param_names" in group and "param_names" not in saved:
                saved["param_names"] = group["param_names"]
        self.state = state
        self.param_groups = saved_groups

    # ----------------------------------------------------------------- array helpers
    def _apply_updates(self, updates: Sequence[Update], scratch: int) -> None:
        """Run each ``rule(*work, *arrays, **keywords)`` of ``updates`` on matching pieces of its
        same-shaped arrays, after ``scratch`` work arrays; the pieces of all updates are
        spread over the engine's threads.

        Arrays that share one dense memory layout are cut into chunks of ``CHUNK_BYTES`` in
        memory order, with work arrays (one set per thread) reused from one step to the next;
        any other mix of layouts comes whole, with fresh work arrays.
        """
        pieces = []
        for rule, arrays, keywords in updates:
            flat = _flat_views(arrays)
            if flat is None:
                pieces.append((rule, arrays, keywords, False))
                continue
            chunk = max(1, CHUNK_BYTES // flat[0].dtype.itemsize)
            for start in range(0, flat[0].size, chunk):
                part = [a[start : start + chunk] for a in flat]
                pieces.append((rule, part, keywords, True))

        def run(i: int) -> None:
            rule, arrays, keywords, reuse = pieces[i]
            first = arrays[0]
            work = [
                self._work_array(first.dtype, (lane(), k), first.size)
                if reuse
                else np.empty_like(first)
                for k in range(scratch)
            ]
            rule(*work, *arrays, **keywords)

        parallel(run, len(pieces))

    def _work_array(self, dtype: np.dtype, slot: tuple[int, int], size: int) -> np.ndarray:
        array = self._scratch.get((dtype, slot))
        if array is None or array.size < size:
            array = self._scratch[dtype, slot] = np.empty(size, dtype)
        return array[:size]


def gradient_direction(
    grad: np.ndarray, param: np.ndarray, out: np.ndarray, weight_decay: float, maximize: bool
) -> np.ndarray:
    """The gradient to descend: ``grad``, negated if ``maximize``, plus ``weight_decay * param``.

    Never writes ``grad``; returns ``grad`` itself when there is nothing to do, else ``out``.
    """
    if weight_decay:
        np.multiply(param, weight_decay, out=out)
        return (np.subtract if maximize else np.add)(out, grad, out=out)
    if maximize:
        return np.negative(grad, out=out)
    return grad


def _flat_views(arrays: Sequence[np.ndarray]) -> list[np.ndarray] | None:
    """1-D views, in memory order, of arrays with one dense layout (None if there is none)."""
    first = arrays[0]
    if any(a.strides != first.strides or a.dtype != first.dtype for a in arrays[1:]):
        return None
    order = sorted(range(first.ndim), key=lambda axis: -first.strides[axis])
    views = [a.transpose(order) for a in arrays]
    if not views[0].flags.c_contiguous:
        return None
    return [v.reshape(-1) for v in views]


def _copy_state(param: Tensor, value: Any, key: str | None = None) -> Any:
    """A deep copy of one parameter's saved state; floating tensors take the parameter's dtype
    (except ``step``, which keeps its own)."""
    if isinstance(value, Tensor):
        array = value._data
        if key != "step" and param.is_floating_point() and array.dtype.kind == "f":
            return Tensor._make(array.astype(param._data.dtype, order="K"))
        return Tensor._make(array.copy(order="K"))
    if isinstance(value, dict):
        return {k: _copy_state(param, v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_copy_state(param, v) for v in value)
    return value


def _typename(obj: object) -> str:
    cls = type(obj)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
