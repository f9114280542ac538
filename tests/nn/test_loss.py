"""Losses: cross_entropy (class indices and probabilities, every option), nll_loss, mse_loss and
l1_loss against torch in float32, finite differences in float64, edge cases and errors."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import engine
from engine.autograd import gradcheck, gradgradcheck
from engine.nn import functional as F

REDUCTIONS = ["mean", "sum", "none"]
N, C = 6, 4
TARGETS = np.array([0, 3, 2, 3, -100, 1])  # one row ignored with the default ignore_index


def class_targets(ignore_index: int) -> np.ndarray:
    """``TARGETS`` with the ignored row marked by ``ignore_index`` (in range or not)."""
    return np.where(TARGETS == -100, ignore_index, TARGETS)


def tensors(lib, *arrays, requires_grad=()):
    """Tensors of ``lib`` (engine or torch) for arrays (None stays None)."""
    out = []
    for i, a in enumerate(arrays):
        t = None if a is None else lib.from_numpy(np.array(a))
        out.append(t.requires_grad_() if i in requires_grad and t is not None else t)
    return out


def both(torch, fn_name, arrays, grad_rng, requires_grad=(0,), **kwargs):
    """Call ``fn_name`` in engine and torch on the same arrays; backward a random gradient.

    Returns ``(loss, grads)`` of each, the grads of the inputs listed in ``requires_grad``.
    """
    results = []
    grad = None
    for lib, functional in ((engine, F), (torch, torch.nn.functional)):
        inputs = tensors(lib, *arrays, requires_grad=requires_grad)
        loss = getattr(functional, fn_name)(*inputs[:2], **kwargs, **extra(inputs))
        if grad is None:
            grad = grad_rng.standard_normal(tuple(loss.shape)).astype(np.float32)
        loss.backward(lib.from_numpy(grad.copy()))
        results.append((loss, [inputs[i].grad for i in requires_grad]))
    return results


def extra(inputs):
    return {} if len(inputs) < 3 else {"weight": inputs[2]}


def check_pair(ours, theirs, rtol=1e-5, atol=1e-6):
    (loss, grads), (tloss, tgrads) = ours, theirs
    assert loss.shape == tuple(tloss.shape) and loss.dtype is engine.float32
    assert loss.grad_fn.name() == type(tloss.grad_fn).__name__
    np.testing.assert_allclose(loss.detach().numpy(), tloss.detach().numpy(), rtol, atol)
    for g, tg in zip(grads, tgrads, strict=True):
        np.testing.assert_allclose(g.numpy(), tg.numpy(), rtol, atol)


@pytest.mark.torch
@pytest.mark.parametrize(
    ("reduction", "weighted", "ignore_index", "smoothing"),
    list(itertools.product(REDUCTIONS, [False, True], [-100, 2], [0.0, 0.25])),
)
def test_cross_entropy_class_indices_match_torch(
    torch, rng, reduction, weighted, ignore_index, smoothing
):
    x = rng.standard_normal((N, C)).astype(np.float32) * 3
    weight = rng.random(C).astype(np.float32) + 0.5 if weighted else None
    ours, theirs = both(
        torch,
        "cross_entropy",
        (x, class_targets(ignore_index), weight),
        rng,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=smoothing,
    )
    check_pair(ours, theirs)


@pytest.mark.torch
@pytest.mark.parametrize(
    ("reduction", "weighted", "smoothing"),
    list(itertools.product(REDUCTIONS, [False, True], [0.0, 0.25])),
)
def test_cross_entropy_probabilities_match_torch(torch, rng, reduction, weighted, smoothing):
    """Soft targets: gradients flow to the logits, the target and the class weight."""
    x = rng.standard_normal((N, C)).astype(np.float32)
    target = rng.dirichlet(np.ones(C), N).astype(np.float32)
    weight = rng.random(C).astype(np.float32) + 0.5 if weighted else None
    ours, theirs = both(
        torch,
        "cross_entropy",
        (x, target, weight),
        rng,
        requires_grad=(0, 1, 2) if weighted else (0, 1),
        reduction=reduction,
        label_smoothing=smoothing,
    )
    check_pair(ours, theirs)


@pytest.mark.torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["indices", "probabilities"])
def test_cross_entropy_spatial_matches_torch(torch, rng, reduction, kind):
    """(N, C, d1, d2) scores with (N, d1, d2) indices or (N, C, d1, d2) probabilities."""
    x = rng.standard_normal((2, C, 3, 5)).astype(np.float32)
    if kind == "indices":
        target = rng.integers(0, C, (2, 3, 5))
    else:
        target = rng.dirichlet(np.ones(C), (2, 3, 5)).transpose(0, 3, 1, 2).astype(np.float32)
    weight = rng.random(C).astype(np.float32)
    kwargs = {"reduction": reduction, "label_smoothing": 0.1}
    check_pair(*both(torch, "cross_entropy", (x, target, weight), rng, **kwargs))


@pytest.mark.torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_unbatched_matches_torch(torch, rng, reduction):
    x = rng.standard_normal(C).astype(np.float32)
    check_pair(*both(torch, "cross_entropy", (x, np.array(2)), rng, reduction=reduction))


@pytest.mark.torch
@pytest.mark.parametrize(
    ("reduction", "weighted", "ignore_index"),
    list(itertools.product(REDUCTIONS, [False, True], [-100, 2])),
)
def test_nll_loss_matches_torch(torch, rng, reduction, weighted, ignore_index):
    logp = np.log(rng.dirichlet(np.ones(C), N)).astype(np.float32)
    weight = rng.random(C).astype(np.float32) if weighted else None
    ours, theirs = both(
        torch,
        "nll_loss",
        (logp, class_targets(ignore_index), weight),
        rng,
        reduction=reduction,
        ignore_index=ignore_index,
    )
    check_pair(ours, theirs)


@pytest.mark.torch
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
@pytest.mark.parametrize("target_shape", [(N, C), (N, 1)], ids=["same", "broadcast"])
def test_pointwise_losses_match_torch(torch, rng, reduction, name, target_shape):
    """Both libraries warn (once each) when the target broadcasts against the input."""
    x = rng.standard_normal((N, C)).astype(np.float32)
    target = rng.standard_normal(target_shape).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours, theirs = both(torch, name, (x, target), rng, (0, 1), reduction=reduction)
    warned = [w for w in caught if "is different to the input size" in str(w.message)]
    assert len(warned) == (0 if target_shape == (N, C) else 2)
    check_pair(ours, theirs)


def float64(rng, *shape, requires_grad=True):
    return engine.from_numpy(rng.standard_normal(shape)).requires_grad_(requires_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", ["plain", "weight-ignore-smoothing"])
def test_gradcheck_cross_entropy_class_indices(rng, reduction, options):
    x = float64(rng, N, C)
    target = engine.from_numpy(TARGETS)
    kwargs = {"reduction": reduction}
    if options != "plain":
        kwargs.update(weight=engine.from_numpy(rng.random(C) + 0.5), label_smoothing=0.3)
    assert gradcheck(lambda x: F.cross_entropy(x, target, **kwargs), (x,))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_cross_entropy_probabilities(rng, reduction):
    x, target, weight = float64(rng, 3, C), float64(rng, 3, C), float64(rng, C)

    def fn(x, target, weight):
        return F.cross_entropy(x, target, weight, reduction=reduction, label_smoothing=0.2)

    assert gradcheck(fn, (x, target, weight))


def test_gradcheck_cross_entropy_spatial(rng):
    x = float64(rng, 2, 3, 2, 2)
    target = engine.from_numpy(rng.integers(0, 3, (2, 2, 2)))
    assert gradcheck(lambda x: F.cross_entropy(x, target, reduction="none"), (x,))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_and_gradgradcheck_nll_loss(rng, reduction):
    x = float64(rng, N, C)
    target, weight = engine.from_numpy(TARGETS), engine.from_numpy(rng.random(C))

    def fn(x):
        return F.nll_loss(x.log_softmax(1), target, weight, reduction=reduction)

    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_and_gradgradcheck_mse_loss(rng, reduction):
    x, target = float64(rng, 3, 4), float64(rng, 1, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert gradcheck(lambda x, t: F.mse_loss(x, t, reduction=reduction), (x, target))
        assert gradgradcheck(lambda x, t: F.mse_loss(x, t, reduction=reduction), (x, target))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_l1_loss(rng, reduction):
    x = float64(rng, 3, 4)
    target = engine.from_numpy(x.detach().numpy() + rng.choice([-1.0, 1.0], (3, 4)))
    assert gradcheck(lambda x: F.l1_loss(x, target, reduction=reduction), (x,))


@pytest.mark.torch
def test_cross_entropy_is_stable_for_huge_logits(torch, rng):
    x = (rng.standard_normal((N, C)) * 1e4).astype(np.float32)
    ours, theirs = both(torch, "cross_entropy", (x, class_targets(0)), rng, label_smoothing=0.1)
    assert np.isfinite(ours[0].item()) and np.isfinite(ours[1][0].numpy()).all()
    check_pair(ours, theirs, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("fn", [F.cross_entropy, F.nll_loss])
def test_mean_over_no_kept_row_is_nan_with_zero_gradient(fn):
    """As torch: every target ignored makes 0 / 0, and no gradient at all."""
    x = engine.zeros(3, C, requires_grad=True)
    loss = fn(x, engine.full((3,), -100, dtype=engine.int64))
    assert np.isnan(loss.item())
    loss.backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((3, C)))
    assert fn(x, engine.full((3,), -100, dtype=engine.int64), reduction="sum").item() == 0


def test_byte_targets_are_class_indices(rng):
    x = float64(rng, N, C, requires_grad=False)
    labels = class_targets(0)
    expected = F.cross_entropy(x, engine.from_numpy(labels)).item()
    assert F.cross_entropy(x, engine.from_numpy(labels.astype(np.uint8))).item() == expected


def test_cross_entropy_is_differentiable_once(rng):
    x = float64(rng, N, C)
    (grad,) = engine.autograd.grad(
        F.cross_entropy(x, engine.from_numpy(class_targets(0))), x, create_graph=True
    )
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()


def _scores():
    return engine.zeros(4, 3)


ERRORS = {
    "target out of range": (
        lambda: F.cross_entropy(_scores(), engine.tensor([0, 1, 3, 1])),
        IndexError,
        "Target 3 is out of bounds.",
    ),
    "negative target": (
        lambda: F.nll_loss(_scores(), engine.tensor([0, -1, 2, 1])),
        IndexError,
        "Target -1 is out of bounds.",
    ),
    "batch mismatch": (
        lambda: F.cross_entropy(_scores(), engine.tensor([0, 1, 2])),
        ValueError,
        r"Expected input batch_size \(4\) to match target batch_size \(3\)\.",
    ),
    "multi-target": (
        lambda: F.cross_entropy(_scores(), engine.zeros(4, 2)),
        RuntimeError,
        "0D or 1D target tensor expected, multi-target not supported",
    ),
    "spatial mismatch": (
        lambda: F.cross_entropy(engine.zeros(2, 3, 4), engine.zeros(2, 5, dtype=engine.int64)),
        RuntimeError,
        r"Expected target size \[2, 4\], got \[2, 5\]",
    ),
    "float indices": (
        lambda: F.cross_entropy(_scores(), engine.zeros(4)),
        RuntimeError,
        "expected target dtype to be Long or Byte, but got Float",
    ),
    "weight size": (
        lambda: F.cross_entropy(_scores(), engine.tensor([0, 1, 2, 1]), engine.ones(4)),
        RuntimeError,
        r"weight tensor should be defined either for all 3 classes or no classes but got "
        r"weight tensor of shape: \[4\]",
    ),
    "trainable weight": (
        lambda: F.nll_loss(_scores(), engine.tensor([0, 1, 2, 1]), engine.ones(3).requires_grad_()),
        RuntimeError,
        "not differentiable with respect to argument 'weight'",
    ),
    "smoothing range": (
        lambda: F.cross_entropy(_scores(), engine.tensor([0, 1, 2, 1]), label_smoothing=1.1),
        RuntimeError,
        "label_smoothing must be between 0.0 and 1.0. Got: 1.1",
    ),
    "reduction": (
        lambda: F.mse_loss(_scores(), _scores(), reduction="average"),
        ValueError,
        "average is not a valid value for reduction",
    ),
    "ignore_index with probabilities": (
        lambda: F.cross_entropy(_scores(), _scores(), ignore_index=1),
        RuntimeError,
        "ignore_index is not supported for floating point target",
    ),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_follow_torch(case):
    fn, kind, message = ERRORS[case]
    with pytest.raises(kind, match=message):
        fn()
