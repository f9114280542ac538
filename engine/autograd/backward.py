"""The backward pass: an iterative walk of the graph in dependency order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from engine.autograd.function import AccumulateGrad, DelayedError, Node, Op
from engine.autograd.grad_mode import set_grad_enabled
from engine.parallel import parallel_add

if TYPE_CHECKING:
    from engine.tensor import Tensor


def _root_grads(
    outputs: Sequence[Tensor], grad_outputs: Sequence[Tensor | None]
) -> list[tuple[Node, int, Tensor]]:
    from engine.tensor import Tensor

    roots = []
    for i, (out, grad) in enumerate(zip(outputs, grad_outputs, strict=True)):
        if not out.requires_grad:
            raise RuntimeError(
                f"element {i} of tensors does not require grad and does not have a grad_fn"
            )
        if grad is None:
            if out.numel() != 1:
                raise RuntimeError("grad can be implicitly created only for scalar outputs")
            grad = Tensor._make(np.ones(out.shape, out._data.dtype))
        elif not isinstance(grad, Tensor):
            grad = Tensor._make(np.asarray(grad, out._data.dtype))
        elif grad._data.dtype != out._data.dtype:  # torch casts it to the output's dtype
            grad = grad.to(out.dtype)
        if grad.shape != out.shape:
            raise RuntimeError(
                f"Mismatch in shape: grad_output[{i}] has a shape of {grad.shape} and output[{i}] "
                f"has a shape of {out.shape}."
            )
        node = out.grad_fn if out.grad_fn is not None else out._grad_accumulator()
        roots.append((node, out._output_nr if out.grad_fn is not None else 0, grad))
    return roots


def _count_dependencies(roots: list[Node]) -> dict[Node, int]:
    deps: dict[Node, int] = {}
    seen = set(roots)
    stack = list(seen)
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_edges:
            if nxt is None:
                continue
            deps[nxt] = deps.get(nxt, 0) + 1
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return deps


def _leading_to(roots: list[Node], targets: set[Node]) -> set[Node]:
    """The nodes from which a target can be reached (targets included), by an iterative
    post-order walk: a node is decided after all of its next nodes."""
    leads: set[Node] = set()
    seen: set[Node] = set()
    stack = [(node, False) for node in roots]
    while stack:
        node, children_done = stack.pop()
        nexts = [nxt for nxt, _ in node.next_edges if nxt is not None]
        if children_done:
            if node in targets or any(nxt in leads for nxt in nexts):
                leads.add(node)
        elif node not in seen:
            seen.add(node)
            stack.append((node, True))
            stack.extend((nxt, False) for nxt in nexts if nxt not in seen)
    return leads


class _GradBuffer:
    """The gradients flowing into one node's outputs, summed as they arrive."""

    __slots__ = ("grads", "owned")

    def __init__(self, n: int) -> None:
        self.grads: list[Tensor | None] = [None] * n
        self.owned = [False] * n

    def add(self, nr: int, grad: Tensor, owned: bool, create_graph: bool) -> None:
        current = self.grads[nr]
        if current is None:
            self.grads[nr], self.owned[nr] = grad, owned
        elif self.owned[nr] and not create_graph:
            parallel_add(current._data, grad._data)
        else:
            self.grads[nr], self.owned[nr] = current + grad, not create_graph


def run_backward(
    outputs: Sequence[Tensor],
    grad_outputs: Sequence[Tensor | None],
    retain_graph: bool,
    create_graph: bool,
    inputs: Sequence[Tensor] | None = None,
) -> list[Tensor | None] | None:
    """Backpropagate from ``outputs``. Without ``inputs``, accumulate into the leaves' ``.grad``;
    with ``inputs``, return their gradients instead (``autograd.grad``) and touch no ``.grad``."""
    roots = _root_grads(outputs, grad_outputs)
    captures: dict[tuple[Node, int], int] = {}
    for i, x in enumerate(inputs or ()):
        node = x.grad_fn if x.grad_fn is not None else x._grad_accumulator()
        captures[(node, x._output_nr if x.grad_fn is not None else 0)] = i
    captured: list[Tensor | None] = [None] * len(inputs or ())

    root_nodes = list(dict.fromkeys(node for node, _, _ in roots))
    deps = _count_dependencies(root_nodes)
    buffers: dict[Node, _GradBuffer] = {}
    for node, nr, grad in roots:
        buffers.setdefault(node, _GradBuffer(node.num_outputs)).add(nr, grad, False, create_graph)
    # autograd.grad runs only the nodes on a path to an input, as torch: the rest of the graph
    # is neither computed nor freed
    needed = None if inputs is None else _leading_to(root_nodes, {node for node, _ in captures})
    ready = [node for node in root_nodes if deps.get(node, 0) == 0]

    with set_grad_enabled(create_graph):
        while ready:
            node = ready.pop()
            if needed is not None and node not in needed:
                continue
            nexts = [nxt for nxt, _ in node.next_edges if nxt is not None]
            if needed is not None:
                nexts = [nxt for nxt in nexts if nxt in needed]
            buffer = buffers.pop(node, None)
            if buffer is not None:
                execute = needed is None or bool(nexts)
                _visit(
                    node, buffer, create_graph, retain_graph, captures, captured, buffers, execute
                )
            for nxt in nexts:
                deps[nxt] -= 1
                if deps[nxt] == 0:
                    ready.append(nxt)
    return captured if inputs is not None else None


def _visit(
    node: Node,
    buffer: _GradBuffer,
    create_graph: bool,
    retain_graph: bool,
    captures: dict[tuple[Node, int], int],
    captured: list,
    buffers: dict[Node, _GradBuffer],
    execute: bool,
) -> None:
    """Hand a node its gradients: accumulate at leaves, capture, or run its backward (when
    ``execute``: not for an input of autograd.grad that leads to no other input)."""
    if isinstance(node, AccumulateGrad):
        if captures:
            if (node, 0) in captures:
                captured[captures[(node, 0)]] = node.run_hooks(buffer.grads[0], False)[0]
        else:
            node.accumulate(buffer.grads[0], buffer.owned[0])
        return
    if isinstance(node, DelayedError):
        raise RuntimeError(node.message)
    node.run_output_hooks(buffer.grads)
    for nr, grad in enumerate(buffer.grads):
        if (node, nr) in captures:
            captured[captures[(node, nr)]] = grad
    if not execute:
        return
    assert isinstance(node, Op)
    grads_in = node.apply_backward(buffer.grads, create_graph)
    if not retain_graph:
        node.release()
    owned = not node.differentiable
    for (nxt, nr), grad in zip(node.next_edges, grads_in, strict=False):
        if nxt is not None and grad is not None:
            buffers.setdefault(nxt, _GradBuffer(nxt.num_outputs)).add(nr, grad, owned, create_graph)
