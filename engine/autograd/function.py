"""Graph nodes: the base class of every differentiable op, leaf accumulators, user Functions.

A node is the ``grad_fn`` of the tensors an op produced. It keeps edges to the nodes of its
inputs (never the input tensors themselves, so activations are freed as soon as nothing saved
them) and whatever its backward needs, which ``release`` drops after backward has run.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from engine._dtype import scalar_type_name
from engine.autograd.grad_mode import is_grad_enabled, no_grad

if TYPE_CHECKING:
    from engine.tensor import Tensor

FREED_GRAPH = (
    "Trying to backward through the graph a second time (or directly access saved tensors after "
    "they have already been freed). Saved intermediate values of the graph are freed when you "
    "call .backward() or autograd.grad(). Specify retain_graph=True if you need to backward "
    "through the graph a second time or if you need to access saved tensors after calling backward."
)

Edge = tuple["Node | None", int]
_hook_ids = itertools.count()
# torch's nodes written by hand in C++, whose name() carries the namespace
_CPP_NODES = frozenset({"AccumulateGrad", "CopySlices", "CopyBackwards", "DelayedError"})


def torch_name(class_name: str) -> str:
    """What torch's ``grad_fn.name()`` says for a node of this class."""
    return f"torch::autograd::{class_name}" if class_name in _CPP_NODES else class_name


@functools.cache
def node_class(op_class: type, name: str) -> type:
    """The subclass of ``op_class`` named as torch names the node (``MulBackward0``): a
    recorded op becomes an instance of it, so ``type(t.grad_fn).__name__`` reads as in torch
    while forward and backward stay in the op's own class."""
    namespace = {"backward_name": name, "__module__": op_class.__module__}
    return type(name, (op_class,), {**namespace, "__qualname__": name, "__doc__": op_class.__doc__})


class HookDict(dict):
    """A dict of hooks that a RemovableHandle can point to weakly."""


class RemovableHandle:
    """Returned by ``register_*hook``; ``remove()`` unregisters the hook."""

    def __init__(self, hooks: HookDict) -> None:
        self._hooks_ref = weakref.ref(hooks)
        self.id = next(_hook_ids)

    def remove(self) -> None:
        hooks = self._hooks_ref()
        if hooks is not None:
            hooks.pop(self.id, None)

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def add_hook(hooks: HookDict, fn: Callable) -> RemovableHandle:
    handle = RemovableHandle(hooks)
    hooks[handle.id] = fn
    return handle


class Node:
    """A vertex of the backward graph."""

    next_edges: tuple[Edge, ...] = ()
    num_outputs = 1
    _output_hooks: dict[int, HookDict] | None = None
    _retained: dict[int, weakref.ref] | None = None

    def name(self) -> str:
        return torch_name(type(self).__name__)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} object at {hex(id(self))}>"

    @property
    def next_functions(self) -> tuple[Edge, ...]:
        return self.next_edges

    def output_hooks(self, output_nr: int) -> HookDict:
        """Hooks run on the gradient of one output before this node's backward (non-leaf hooks)."""
        if self._output_hooks is None:
            self._output_hooks = {}
        return self._output_hooks.setdefault(output_nr, HookDict())

    def retain_grad(self, tensor: Tensor) -> None:
        """Store the gradient of this output into ``tensor.grad`` when backward reaches it."""
        if self._retained is None:
            self._retained = {}
        self._retained[tensor._output_nr] = weakref.ref(tensor)

    def run_output_hooks(self, grads: list) -> None:
        """Apply tensor hooks to the gradients of this node's outputs, then retain_grad."""
        for nr, hooks in (self._output_hooks or {}).items():
            for hook in list(hooks.values()):
                if grads[nr] is None:
                    break
                replaced = hook(grads[nr])
                if replaced is not None:
                    grads[nr] = replaced
        for nr, ref in (self._retained or {}).items():
            tensor = ref()
            if tensor is not None and grads[nr] is not None:
                grad = grads[nr] if is_grad_enabled() else grads[nr].detach()
                tensor.grad = grad if tensor.grad is None else tensor.grad + grad


class AccumulateGrad(Node):
    """The node behind a leaf tensor: runs its hooks, then adds the gradient into ``.grad``."""

    def __init__(self, variable: Tensor) -> None:
        self.variable = variable

    def run_hooks(self, grad: Tensor, owned: bool) -> tuple[Tensor, bool]:
        """The gradient after the leaf's tensor hooks, and whether the engine still owns it."""
        for hook in list(self.variable._backward_hooks.values()):
            replaced = hook(grad)
            if replaced is not None:
                grad, owned = replaced, False
        return grad, owned

    def accumulate(self, grad: Tensor, owned: bool) -> None:
        var = self.variable
        grad, owned = self.run_hooks(grad, owned)
        if var.grad is None:
            if is_grad_enabled():  # create_graph: a copy in the graph, never a shared gradient
                var.grad = grad.clone()
            else:
                var.grad = grad if owned else grad.detach().clone()
        elif is_grad_enabled():
            var.grad = var.grad + grad
        else:
            np.add(var.grad._data, grad._data, out=var.grad._data, casting="unsafe")
        for hook in list(var._post_accumulate_hooks.values()):
            hook(var)


class Op(Node):
    """Base of the built-in differentiable ops: ``forward`` on arrays, ``backward`` beside it.

    ``forward(*arrays)`` computes the outputs from NumPy arrays (``None`` for absent optional
    inputs) and saves what backward needs with ``save_inputs``/``save_outputs`` (as tensors,
    guarded by version counters) or ``save_arrays``. ``backward(*grads)`` returns one gradient
    per input (``None`` where an input needs none). With ``differentiable = True`` backward
    receives and returns Tensors and is written with differentiable ops, so ``create_graph``
    builds a graph of the backward pass; with ``False`` it works on arrays (a fused kernel) and
    can be differentiated once.
    """

    differentiable = True
    materialize_grads = True  # outputs that got no gradient get zeros (else None)
    backward_name: str | None = None
    view_of: int | None = None  # index of the input whose storage the output is a view of

    requires_grad = False
    needs_input_grad: tuple[bool, ...] = ()
    _released = False
    _saved_tensors: tuple | None = None
    _saved_arrays: tuple | None = None

    def name(self) -> str:
        return torch_name(self.class_name())

    def class_name(self) -> str:
        """The class of torch's node for this op: ``backward_name``, else ``<Op>Backward0``."""
        return self.backward_name or f"{type(self).__name__}Backward0"

    def forward(self, *arrays: Any) -> Any:
        raise NotImplementedError

    def backward(self, *grads: Any) -> Any:
        raise NotImplementedError

    def __call__(self, *inputs: Any) -> Any:
        from engine.tensor import Tensor

        self.needs_input_grad = tuple(isinstance(x, Tensor) and x.requires_grad for x in inputs)
        self.requires_grad = is_grad_enabled() and any(self.needs_input_grad)
        self._inputs = inputs
        self._save_out: tuple[int, ...] = ()
        try:
            with np.errstate(all="ignore"):  # inf and nan come out silently, as in torch
                outs = self.forward(*(x._data if isinstance(x, Tensor) else x for x in inputs))
        finally:
            del self._inputs
        single = not isinstance(outs, tuple)
        outputs = tuple(Tensor._make(o) for o in ((outs,) if single else outs))
        if self.view_of is not None:
            source = inputs[self.view_of]
            for out in outputs:
                out._vc = source._vc
                out._base = source if source._base is None else source._base
        if self.requires_grad:
            self.connect(inputs, outputs)
            if self._save_out:
                self._saved_tensors = (self._saved_tensors or ()) + tuple(
                    (outputs[i], outputs[i]._vc[0]) for i in self._save_out
                )
        return outputs[0] if single else outputs

    def connect(self, inputs: tuple, outputs: tuple[Tensor, ...]) -> None:
        """Make this node the grad_fn of the (floating-point) outputs, with edges to the inputs."""
        self.next_edges = tuple(_edge_of(x) for x in inputs)
        self.output_meta = tuple((o.shape, o._data.dtype) for o in outputs)
        self.num_outputs = len(outputs)
        name = self.class_name()
        if type(self).__name__ != name:
            self.__class__ = node_class(type(self), name)
        for nr, out in enumerate(outputs):
            if out._data.dtype.kind == "f":
                out.grad_fn, out._output_nr, out._requires_grad = self, nr, True

    def save_inputs(self, *indices: int | None) -> None:
        """Keep these inputs (as tensors) for backward; read them back with ``saved_tensors``
        (``None`` where an index is None: an input that this backward will not need)."""
        if self.requires_grad:
            self._saved_tensors = tuple(
                (None, 0) if i is None else (self._inputs[i], self._inputs[i]._vc[0])
                for i in indices
            )

    def save_outputs(self, *indices: int) -> None:
        """Keep these outputs for backward (after the saved inputs in ``saved_tensors``)."""
        self._save_out = indices

    def save_arrays(self, *arrays: Any) -> None:
        """Keep arrays (or any other values) for backward; read them back with ``saved_arrays``."""
        if self.requires_grad:
            self._saved_arrays = arrays

    @property
    def saved_tensors(self) -> tuple:
        if self._released:
            raise RuntimeError(FREED_GRAPH)
        for tensor, version in self._saved_tensors or ():
            if tensor is not None and tensor._vc[0] != version:
                raise RuntimeError(_modified_message(tensor, version))
        return tuple(t for t, _ in self._saved_tensors or ())

    @property
    def saved_arrays(self) -> tuple:
        if self._released:
            raise RuntimeError(FREED_GRAPH)
        return self._saved_arrays or ()

    def release(self) -> None:
        """Free what backward needed (called after backward unless retain_graph)."""
        if self._saved_tensors is not None or self._saved_arrays is not None:
            self._released = True
        self._saved_tensors = self._saved_arrays = None

    def apply_backward(self, grads: list, create_graph: bool) -> tuple:
        """Run backward with the gradients of the outputs; returns one gradient per input."""
        from engine.tensor import Tensor

        grads = [
            g
            if g is not None or not self.materialize_grads
            else Tensor._make(np.zeros(shape, dtype))
            for g, (shape, dtype) in zip(grads, self.output_meta, strict=True)
        ]
        if self.differentiable:
            from engine.autograd.grad_mode import set_grad_enabled

            with set_grad_enabled(create_graph):
                result = self.backward(*grads)
        else:
            with no_grad(), np.errstate(all="ignore"):
                result = self.backward(*(g._data for g in grads))
        if not isinstance(result, tuple):
            result = (result,)
        if not self.differentiable:
            result = tuple(None if r is None else Tensor._make(r) for r in result)
            if create_graph:
                result = tuple(_once_differentiable(r, self) for r in result)
        return result


def _edge_of(x: Any) -> Edge | tuple[None, int]:
    from engine.tensor import Tensor

    if not isinstance(x, Tensor) or not x._requires_grad:
        return (None, 0)
    if x.grad_fn is not None:
        return (x.grad_fn, x._output_nr)
    return (x._grad_accumulator(), 0)


def _modified_message(tensor: Tensor, version: int) -> str:
    kind = scalar_type_name(tensor._data.dtype)
    shape = list(tensor.shape)
    origin = (
        f", which is output {tensor._output_nr} of {tensor.grad_fn.name()},"
        if tensor.grad_fn
        else ""
    )
    return (
        "one of the variables needed for gradient computation has been modified by an inplace "
        f"operation: [torch.{kind}Tensor {shape}]{origin} is at version {tensor._vc[0]}; "
        f"expected version {version} instead. Hint: the backtrace further above can point to the "
        "operation that failed to compute its gradient."
    )


class DelayedError(Node):
    """Stands behind gradients of an op that can only be differentiated once."""

    def __init__(self, op: Op) -> None:
        self.message = (
            f"trying to differentiate twice a function that was marked with "
            f"@once_differentiable ({op.name()})"
        )


def _once_differentiable(grad: Tensor | None, op: Op) -> Tensor | None:
    if grad is None:
        return None
    node = DelayedError(op)
    grad.grad_fn, grad._output_nr, grad._requires_grad = node, 0, True
    return grad


class FunctionCtx(Op):
    """The ``ctx`` of a user-defined ``Function``: it is also that Function's grad_fn, an
    instance of ``<Function>Backward`` as in torch."""

    def __init__(self, fn_cls: type[Function]) -> None:
        self.fn_cls = fn_cls
        self.materialize_grads = True
        self.non_differentiable: set[int] = set()
        self.dirty: set[int] = set()

    def class_name(self) -> str:
        return f"{self.fn_cls.__name__}Backward"

    def save_for_backward(self, *tensors: Tensor | None) -> None:
        self._saved_tensors = tuple((t, t._vc[0] if t is not None else 0) for t in tensors)

    def mark_non_differentiable(self, *tensors: Tensor) -> None:
        self.non_differentiable.update(id(t) for t in tensors)

    def mark_dirty(self, *tensors: Tensor) -> None:
        for t in tensors:
            t._vc[0] += 1
        self.dirty.update(id(t) for t in tensors)

    def set_materialize_grads(self, value: bool) -> None:
        """With False, backward receives None for outputs that got no gradient, as in torch."""
        self.materialize_grads = value

    def backward(self, *grads: Any) -> Any:
        result = self.fn_cls.backward(self, *grads)
        return self._checked(result if isinstance(result, tuple) else (result,))

    def _checked(self, grads: tuple) -> tuple:
        """A user backward's gradients, checked as torch does: one per input (extra ones must be
        None), each of its input's shape or summable to it."""
        from engine.ops.elementwise import sum_to

        n = len(self.input_shapes)
        if len(grads) < n or any(g is not None for g in grads[n:]):
            raise RuntimeError(
                f"function {self.name()} returned an incorrect number of gradients "
                f"(expected {n}, got {len(grads)})"
            )
        checked = []
        for i, (g, shape) in enumerate(zip(grads[:n], self.input_shapes, strict=True)):
            if g is not None and shape is not None and g.shape != shape:
                if not _expandable(shape, g.shape):
                    raise RuntimeError(
                        f"Function {self.name()} returned an invalid gradient at index {i} - got "
                        f"{list(g.shape)} but expected shape compatible with {list(shape)}"
                    )
                g = sum_to(g, shape)
            checked.append(g)
        return tuple(checked)


class Function:
    """A user-defined differentiable op, as ``torch.autograd.Function``.

    Subclass with static ``forward(ctx, *args)`` and ``backward(ctx, *grad_outputs)``, then call
    ``MyFn.apply(*args)``. ``forward`` runs without recording a graph; ``backward`` returns one
    gradient per forward argument (``None`` for non-tensors).
    """

    @staticmethod
    def forward(ctx: FunctionCtx, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    @staticmethod
    def backward(ctx: FunctionCtx, *grad_outputs: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def apply(cls, *args: Any) -> Any:
        from engine.tensor import Tensor

        ctx = node_class(FunctionCtx, f"{cls.__name__}Backward")(cls)
        ctx.needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        ctx.input_shapes = tuple(a.shape if isinstance(a, Tensor) else None for a in args)
        ctx.requires_grad = is_grad_enabled() and any(ctx.needs_input_grad)
        with no_grad():
            outs = cls.forward(ctx, *args)
        single = not isinstance(outs, tuple)
        outputs = tuple(
            # an input returned as it is becomes a new tensor sharing its storage, as in torch
            out.detach() if _is_returned_input(out, args, ctx.dirty) else out
            for out in ((outs,) if single else outs)
        )
        if ctx.requires_grad:
            ctx.connect(args, outputs)
            for out in outputs:
                if id(out) in ctx.non_differentiable:
                    out.grad_fn, out._requires_grad = None, False
        return outputs[0] if single else outputs


def _is_returned_input(out: Any, args: tuple, dirty: set[int]) -> bool:
    from engine.tensor import Tensor

    return isinstance(out, Tensor) and id(out) not in dirty and any(out is a for a in args)


def _expandable(shape: tuple[int, ...], to: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(shape, to) == to
    except ValueError:
        return False
