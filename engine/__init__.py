"""A NumPy automatic-differentiation engine with torch's names and semantics.

``import engine`` gives the tensor API (``engine.tensor``, ``engine.zeros``, ``engine.no_grad``,
``engine.float32``, ...); ``engine.autograd``, ``engine.nn``, ``engine.optim``,
``engine.models`` and ``engine.io`` hold the rest, as in torch.
"""

import builtins

from engine._dtype import (
    bool_,
    double,
    dtype,
    float,
    float16,
    float32,
    float64,
    get_default_dtype,
    half,
    int8,
    int16,
    int32,
    int64,
    long,
    set_default_dtype,
    short,
    uint8,
)
from engine._dtype import int as int  # noqa: PLC0414
from engine.autograd.grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled

from engine.tensor import Tensor  # isort: skip  (defines the class the ops below build on)
from engine import autograd  # noqa: E402
from engine.allocator import keep_freed_memory
from engine.creation import (
    arange,
    as_tensor,
    cat,
    empty,
    empty_like,
    eye,
    from_numpy,
    full,
    full_like,
    linspace,
    ones,
    ones_like,
    rand,
    rand_like,
    randint,
    randn,
    randn_like,
    randperm,
    stack,
    tensor,
    where,
    zeros,
    zeros_like,
)
from engine.parallel import get_num_threads, set_num_threads
from engine.random import get_rng_state, manual_seed, seed, set_rng_state

bool = bool_  # noqa: A001 - torch.bool

__version__ = "0.1.0"


def _function(name: str):  # noqa: ANN202
    """Expose a Tensor method as a module function (``engine.exp(x)`` == ``x.exp()``)."""

    def fn(input: Tensor, *args, **kwargs):  # noqa: A002, ANN002, ANN003, ANN202
        return getattr(input, name)(*args, **kwargs)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"``engine.{name}(x, ...)`` is ``x.{name}(...)``."
    return fn


for _name in (
    "exp",
    "log",
    "sqrt",
    "abs",
    "clamp",
    "relu",
    "sigmoid",
    "tanh",
    "softmax",
    "log_softmax",
    "sum",
    "mean",
    "amax",
    "amin",
    "max",
    "min",
    "argmax",
    "argmin",
    "matmul",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "squeeze",
    "unsqueeze",
    "var",
    "std",
    "t",
    "clone",
    "allclose",
    "equal",
    "square",
    "sign",
    "chunk",
    "split",
    "mm",
    "norm",
):
    globals()[_name] = _function(_name)
del _name


def is_tensor(obj: object) -> builtins.bool:
    return isinstance(obj, Tensor)


def numel(x: Tensor) -> int:
    return x.numel()


# the subpackages, reachable after `import engine` as torch's are (`engine.nn`, `engine.optim`)
from engine import io, models, nn, optim  # noqa: E402
