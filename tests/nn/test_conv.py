"""conv2d: finite-difference gradients, torch parity, memory layout, blocking and errors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import engine
from engine.autograd import gradcheck
from engine.nn.kernels import conv, direct, layout, winograd
from engine.nn.kernels.conv import conv2d
from engine.testing import CASES as OP_CASES

# (batch, in channels, out channels, kernel, stride, padding, dilation, groups, bias, (H, W))
CASES = {
    "3x3": (2, 2, 3, 3, 1, 1, 1, 1, True, (7, 5)),
    "3x3-s2-nopad": (1, 2, 3, 3, 2, 0, 1, 1, False, (7, 5)),
    "3x3-pad2-dil2-g2": (2, 4, 4, 3, 1, 2, 2, 2, True, (7, 5)),
    "depthwise-s2": (1, 4, 4, 3, 2, 1, 1, 4, True, (7, 5)),
    "g2-s2-more-out": (1, 4, 6, 3, 2, 1, 1, 2, False, (6, 7)),
    "1x1": (2, 4, 5, 1, 1, 0, 1, 1, True, (5, 4)),
    "1x1-pad1": (1, 3, 2, 1, 1, 1, 1, 1, False, (4, 3)),
    "1x1-s2": (2, 3, 4, 1, 2, 0, 1, 1, False, (7, 5)),
    "7x7-s2-pad3": (1, 2, 2, 7, 2, 3, 1, 1, True, (9, 8)),
    "same-dil2-g2": (1, 2, 4, 3, 1, "same", 2, 2, True, (7, 5)),
    "same-even-kernel": (1, 2, 2, 2, 1, "same", 1, 1, False, (6, 5)),
    "valid": (2, 2, 2, 3, 1, "valid", 1, 1, True, (5, 5)),
    "s2-pad2-dil2": (2, 2, 2, 3, 2, 2, 2, 1, False, (7, 6)),
    "pairs": (1, 2, 3, 3, (1, 2), (0, 1), (2, 1), 1, True, (7, 5)),
    "3x3-winograd": (2, 3, 4, 3, 1, 1, 1, 1, True, (6, 8)),
    "same-winograd": (1, 2, 3, 3, 1, "same", 1, 1, False, (6, 6)),
}

# Every distinct conv of ResNet18 on a 32x32 image: (in, out, kernel, stride, padding, H)
RESNET18 = {
    "conv1": (3, 64, 7, 2, 3, 32),
    "layer1": (64, 64, 3, 1, 1, 8),
    "layer2.0.conv1": (64, 128, 3, 2, 1, 8),
    "layer2.0.downsample": (64, 128, 1, 2, 0, 8),
    "layer2": (128, 128, 3, 1, 1, 4),
    "layer3.0.conv1": (128, 256, 3, 2, 1, 4),
    "layer3.0.downsample": (128, 256, 1, 2, 0, 4),
    "layer3": (256, 256, 3, 1, 1, 2),
    "layer4.0.conv1": (256, 512, 3, 2, 1, 2),
    "layer4.0.downsample": (256, 512, 1, 2, 0, 2),
    "layer4": (512, 512, 3, 1, 1, 1),
}


def _tensor(array: np.ndarray, channels_last: bool = False) -> engine.Tensor:
    """An engine tensor over ``array`` (NCHW-shaped), optionally with NHWC memory."""
    if channels_last:
        array = np.ascontiguousarray(array.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    return engine.from_numpy(array).requires_grad_()


def _inputs(
    case: tuple,
    rng: np.random.Generator,
    dtype: type,
    channels_last: bool = False,
    weight_channels_last: bool = False,
):
    n, cin, cout, k, _, _, _, groups, bias, (h, w) = case
    x = _tensor(rng.standard_normal((n, cin, h, w)).astype(dtype), channels_last)
    weight = rng.standard_normal((cout, cin // groups, k, k)).astype(dtype)
    weight = _tensor(weight, weight_channels_last)
    b = _tensor(rng.standard_normal(cout).astype(dtype)) if bias else None
    return x, weight, b


def _call(case: tuple) -> Callable[..., engine.Tensor]:
    """conv2d with the case's hyper-parameters, as a function of (x, weight, bias)."""
    _, _, _, _, stride, padding, dilation, groups, _, _ = case
    return lambda x, w, b: conv2d(x, w, b, stride, padding, dilation, groups)


@pytest.fixture(params=["flipped", "col2im", "direct"])
def algorithm(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with each algorithm for what Winograd does not take: im2col with either
    stride-1 input gradient, or one product per kernel offset (``direct``, for one group)."""
    threshold = 1 << 30 if request.param == "flipped" else 0
    monkeypatch.setattr(conv, "FLIPPED_MAX_CHANNELS", threshold)
    monkeypatch.setattr(direct, "MIN_CHANNELS", 1 if request.param == "direct" else 1 << 30)
    return request.param


def use_tiny_blocks(monkeypatch: pytest.MonkeyPatch, keep: bool) -> None:
    """im2col rows copied and multiplied a few at a time, and Winograd's tiles in blocks and
    chunks smaller than one image; either kept for backward or not."""
    monkeypatch.setattr(conv, "PIECE_BYTES", 200)
    monkeypatch.setattr(layout, "BLOCKING_THRESHOLD", 256)
    monkeypatch.setattr(layout, "BLOCK_BYTES", 200)
    monkeypatch.setattr(layout, "MIN_BLOCK_ROWS", 1)
    monkeypatch.setattr(conv, "KEEP_BYTES", 1 << 30 if keep else 0)
    monkeypatch.setattr(conv, "WINOGRAD_KEEP_BYTES", 1 << 30 if keep else 0)


@pytest.fixture(params=["kept", "rebuilt"])
def tiny_blocks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    use_tiny_blocks(monkeypatch, request.param == "kept")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_gradcheck(
    case: tuple, channels_last: bool, algorithm: str, rng: np.random.Generator
) -> None:
    x, weight, bias = _inputs(case, rng, np.float64, channels_last)
    assert gradcheck(_call(case), (x, weight, bias))


@pytest.mark.parametrize(
    "case", [CASES["3x3-pad2-dil2-g2"], CASES["depthwise-s2"], CASES["3x3-winograd"]]
)
def test_gradcheck_blocked(case: tuple, tiny_blocks: None, rng: np.random.Generator) -> None:
    x, weight, bias = _inputs(case, rng, np.float64)
    assert gradcheck(_call(case), (x, weight, bias))


def _grads(y: engine.Tensor, gy: np.ndarray, tensors: tuple) -> list[np.ndarray]:
    y.backward(engine.from_numpy(gy))
    return [t.grad.numpy() for t in tensors if t is not None]


def _torch_run(torch, case: tuple, tensors: tuple, gy: np.ndarray) -> list[np.ndarray]:
    _, _, _, _, stride, padding, dilation, groups, _, _ = case
    x, w, b = (
        None if t is None else torch.tensor(t.detach().numpy()).requires_grad_() for t in tensors
    )
    y = torch.nn.functional.conv2d(x, w, b, stride, padding, dilation, groups)
    y.backward(torch.tensor(gy))
    return [y.detach().numpy()] + [t.grad.numpy() for t in (x, w, b) if t is not None]


def _assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    """Equal to float32 round-off, relative to the size of the values."""
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    scale = max(1.0, np.abs(ref).max(initial=0.0))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5 * scale)


def _check_parity(
    torch,
    case: tuple,
    channels_last: bool,
    rng: np.random.Generator,
    weight_channels_last: bool = False,
) -> None:
    tensors = _inputs(case, rng, np.float32, channels_last, weight_channels_last)
    y = _call(case)(*tensors)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    ours = [y.detach().numpy()] + _grads(y, gy, tensors)
    for mine, ref in zip(ours, _torch_run(torch, case, tensors, gy), strict=True):
        _assert_close(mine, ref)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_torch_parity(
    torch, case: tuple, channels_last: bool, algorithm: str, rng: np.random.Generator
) -> None:
    _check_parity(torch, case, channels_last, rng)


@pytest.mark.torch
@pytest.mark.parametrize("shape", RESNET18.values(), ids=RESNET18.keys())
def test_torch_parity_resnet18_shapes(torch, shape: tuple, rng: np.random.Generator) -> None:
    cin, cout, k, stride, padding, h = shape
    case = (2, cin, cout, k, stride, padding, 1, 1, False, (h, h))
    _check_parity(torch, case, channels_last=cin > 3, rng=rng)


@pytest.mark.torch
@pytest.mark.parametrize("case", ["3x3-winograd", "3x3-s2-nopad", "1x1", "7x7-s2-pad3"])
def test_torch_parity_empty_batch(torch, case: str, rng: np.random.Generator) -> None:
    """No images: an empty output, and zero weight and bias gradients, as torch's."""
    _check_parity(torch, (0, *CASES[case][1:]), channels_last=False, rng=rng)


@pytest.mark.torch
def test_torch_parity_blocked(torch, tiny_blocks: None, rng: np.random.Generator) -> None:
    """A conv built block by block, images split into row blocks."""
    case = (3, 16, 32, 3, 1, 1, 1, 1, True, (40, 48))
    _check_parity(torch, case, channels_last=True, rng=rng)


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "rebuilt"])
def test_blocked_equals_whole(
    monkeypatch: pytest.MonkeyPatch, keep: bool, rng: np.random.Generator
) -> None:
    case = CASES["3x3-pad2-dil2-g2"]
    tensors = _inputs(case, rng, np.float64)
    y = _call(case)(*tensors)
    gy = rng.standard_normal(y.shape)
    whole = [y.detach().numpy()] + _grads(y, gy, tensors)
    use_tiny_blocks(monkeypatch, keep)
    for t in tensors:
        t.grad = None
    y = _call(case)(*tensors)
    blocked = [y.detach().numpy()] + _grads(y, gy, tensors)
    for a, b in zip(whole, blocked, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["3x3-winograd", "same-winograd"])
def test_winograd_takes_even_3x3_stride_1_and_agrees_with_im2col(
    monkeypatch: pytest.MonkeyPatch, case: str, rng: np.random.Generator
) -> None:
    tensors = _inputs(CASES[case], rng, np.float64)
    y = _call(CASES[case])(*tensors)
    assert y.grad_fn.winograd
    gy = rng.standard_normal(y.shape)
    fast = [y.detach().numpy()] + _grads(y, gy, tensors)
    monkeypatch.setattr(winograd, "MIN_SIZE", 1 << 30)
    for t in tensors:
        if t is not None:
            t.grad = None
    y = _call(CASES[case])(*tensors)
    assert not y.grad_fn.winograd
    direct = [y.detach().numpy()] + _grads(y, gy, tensors)
    for a, b in zip(fast, direct, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["3x3-winograd", "3x3-pad2-dil2-g2", "depthwise-s2"])
def test_gradients_side_by_side_or_one_after_the_other_give_the_same_bits(
    monkeypatch: pytest.MonkeyPatch, case: str, rng: np.random.Generator
) -> None:
    tensors = _inputs(CASES[case], rng, np.float32)
    gy = None
    results = []
    for elements in (0, 1 << 30):  # never side by side, always
        monkeypatch.setattr(conv, "SIDE_BY_SIDE_ELEMENTS", elements)
        for t in tensors:
            if t is not None:
                t.grad = None
        y = _call(CASES[case])(*tensors)
        gy = rng.standard_normal(y.shape).astype(np.float32) if gy is None else gy
        results.append(_grads(y, gy, tensors))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


def test_winograd_only_where_it_pays() -> None:
    square = layout.Window((3, 3), (1, 1), (1, 1))
    assert winograd.fits(square, (1, 1, 1, 1), 1, (8, 6), 1)
    assert not winograd.fits(square, (1, 1, 1, 1), 1, (7, 6), 1)  # odd
    assert not winograd.fits(square, (1, 1, 1, 1), 1, (2, 2), 1)  # too few tiles
    assert not winograd.fits(square, (0, 0, 0, 0), 1, (8, 8), 1)
    assert not winograd.fits(square, (1, 1, 1, 1), 1, (8, 8), 2)
    assert not winograd.fits(layout.Window((3, 3), (2, 2), (1, 1)), (1, 1, 1, 1), 1, (8, 8), 1)
    assert winograd.fits(square, (1, 1, 1, 1), 1, (8, 12), 1, np.float32) is winograd.F4
    assert winograd.fits(square, (1, 1, 1, 1), 1, (8, 12), 1, np.float64) is winograd.F2
    assert winograd.fits(square, (1, 1, 1, 1), 1, (8, 6), 1, np.float32) is winograd.F2
    assert winograd.fits(square, (1, 1, 1, 1), 1, (6, 6), 1, np.float32) is winograd.F2
    assert not winograd.fits(square, (1, 1, 1, 1), 1, (4, 4), 1, np.float32)  # too few tiles
    assert winograd.fits(square, (1, 1, 1, 1), 1, (14, 14), 1, np.float32) is winograd.F4  # cropped
    assert winograd.fits(square, (1, 1, 1, 1), 1, (15, 16), 1, np.float32) is winograd.F4
    assert winograd.fits(square, (1, 1, 1, 1), 1, (14, 14), 1, np.float64) is winograd.F2
    assert not winograd.fits(square, (1, 1, 1, 1), 1, (15, 16), 1, np.float64)  # odd
    assert winograd.fits(square, (1, 1, 1, 1), 1, (10, 10), 1, np.float32) is winograd.F2  # 12/10
    assert not winograd.fits(square, (1, 1, 1, 1), 1, (7, 7), 1, np.float32)  # odd, under 8
    many = winograd.MIN_TILES_F4  # images of one tile (4x4), or 4 tiles (7x7)
    assert winograd.fits(square, (1, 1, 1, 1), many, (4, 4), 1, np.float32) is winograd.F4
    assert not winograd.fits(square, (1, 1, 1, 1), many - 1, (4, 4), 1, np.float32)
    assert winograd.fits(square, (1, 1, 1, 1), many // 4, (7, 7), 1, np.float32) is winograd.F4
    assert not winograd.fits(square, (1, 1, 1, 1), many // 4 - 1, (7, 7), 1, np.float32)
    assert not winograd.fits(square, (1, 1, 1, 1), many, (7, 7), 1, np.float64)
    assert not winograd.fits(square, (1, 1, 1, 1), many, (5, 5), 1, np.float32)  # 8/5 cover


def test_direct_only_where_it_pays() -> None:
    """One product per kernel offset for wide inputs of one group, never for 1x1 windows."""
    wide = direct.MIN_CHANNELS
    for stride, dilation in [(1, 1), (2, 1), (1, 2)]:
        win = layout.Window((3, 3), (stride, stride), (dilation, dilation))
        assert direct.fits(win, 1, wide)
        assert not direct.fits(win, 1, wide - 1)
        assert not direct.fits(win, 2, 2 * wide)
    assert not direct.fits(layout.Window((1, 1), (2, 2), (1, 1)), 1, wide)
    assert direct.fits(layout.Window((1, 3), (1, 1), (1, 1)), 1, wide)


def _results(case: tuple, tensors: tuple, gy: np.ndarray | None, rng: np.random.Generator):
    """Output and gradients of the case's conv on ``tensors`` (fresh gradients), with the
    algorithm it took, and the output gradient used (``gy``, or drawn when None)."""
    for t in tensors:
        if t is not None:
            t.grad = None
    y = _call(case)(*tensors)
    gy = rng.standard_normal(y.shape) if gy is None else gy
    return y.grad_fn.direct, [y.detach().numpy()] + _grads(y, gy, tensors), gy


@pytest.fixture(params=["images", "channels"])
def direct_split(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the offsets' products split over the threads by blocks of images, and
    by ranges of channels."""
    monkeypatch.setattr(direct, "MIN_BLOCK_OUTPUTS", 1 if request.param == "images" else 1 << 30)
    return request.param


@pytest.mark.parametrize(
    "case", ["3x3", "3x3-s2-nopad", "7x7-s2-pad3", "s2-pad2-dil2", "pairs", "same-even-kernel"]
)
def test_direct_agrees_with_im2col(
    monkeypatch: pytest.MonkeyPatch, case: str, direct_split: str, rng: np.random.Generator
) -> None:
    """Strides, dilations, paddings that leave offsets out, and none: the same sums as im2col
    (float64, to round-off)."""
    tensors = _inputs(CASES[case], rng, np.float64, channels_last=True)
    monkeypatch.setattr(direct, "MIN_CHANNELS", 1)
    taken, offsets, gy = _results(CASES[case], tensors, None, rng)
    monkeypatch.setattr(direct, "MIN_CHANNELS", 1 << 30)
    not_taken, im2col, _ = _results(CASES[case], tensors, gy, rng)
    assert taken and not not_taken
    for a, b in zip(offsets, im2col, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_direct_in_blocks_of_images(
    monkeypatch: pytest.MonkeyPatch, direct_split: str, rng: np.random.Generator
) -> None:
    """A batch taken an image at a time gives what it gives whole; gradients check out."""
    case = (3, 4, 5, 3, 2, 1, 1, 1, True, (7, 6))
    tensors = _inputs(case, rng, np.float64)
    monkeypatch.setattr(direct, "MIN_CHANNELS", 1)
    _, whole, gy = _results(case, tensors, None, rng)
    monkeypatch.setattr(direct, "BLOCK_BYTES", 1)
    _, blocked, _ = _results(case, tensors, gy, rng)
    for a, b in zip(whole, blocked, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert gradcheck(_call(case), tensors)


def test_the_op_catalogue_takes_the_offsets_products(rng: np.random.Generator) -> None:
    """``finetune gradcheck`` and the catalogue's tests check this algorithm too."""
    wide = OP_CASES["conv2d[wide]"]
    assert wide.fn(engine, *wide.leaves(engine, rng)).grad_fn.direct


@pytest.mark.torch
@pytest.mark.parametrize(
    "shape",
    [(256, 256, 1, 4), (256, 512, 2, 4), (512, 512, 1, 2), (512, 512, 1, 7), (256, 512, 2, 14)],
    ids=["256@4x4", "256-512-s2@4x4", "512@2x2", "512@7x7", "256-512-s2@14x14"],
)
def test_torch_parity_direct_resnet18_layers(torch, shape: tuple, rng: np.random.Generator) -> None:
    """ResNet18's wide layers at 64x64 and 224x224 images, which take the offsets' products;
    weights channels-last, as the models keep them."""
    cin, cout, stride, h = shape
    case = (2, cin, cout, 3, stride, 1, 1, 1, False, (h, h))
    tensors = _inputs(case, rng, np.float32, channels_last=True)
    assert _call(case)(*tensors).grad_fn.direct
    _check_parity(torch, case, channels_last=True, rng=rng, weight_channels_last=True)


@pytest.mark.parametrize("blocks", ["one", "tile-rows"])
@pytest.mark.parametrize("scheme", ["F2", "F4"])
@pytest.mark.parametrize("out_hw", [(12, 8), (11, 6), (7, 9)], ids=["whole", "cropped", "odd"])
def test_winograd_schemes_compute_the_correlation_and_its_gradients(
    scheme: str,
    out_hw: tuple,
    blocks: str,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each scheme's transforms, in float64, against direct sums over the 9 kernel offsets:
    output, input gradient and weight gradient; sides that are no multiple of m are computed
    further and cropped. Tiles are gathered from the unpadded input, in one block or a row of
    tiles at a time (only the first and last reach into the padding)."""
    if blocks == "tile-rows":
        use_tiny_blocks(monkeypatch, keep=True)
    sch = getattr(winograd, scheme)
    x = rng.standard_normal((2, *out_hw, 3))
    weight = rng.standard_normal((4, 3, 3, 3))
    gy = rng.standard_normal((2, *out_hw, 4))
    out, kept = winograd.conv(sch, x, winograd.weights(weight), keep=True)
    x1 = layout.pad_nhwc(x, (1, 1, 1, 1))
    taps = [(i, j, x1[:, i : i + out_hw[0], j : j + out_hw[1]]) for i in range(3) for j in range(3)]
    direct = sum(tap @ weight[:, :, i, j].T for i, j, tap in taps)
    np.testing.assert_allclose(out, direct, rtol=1e-12, atol=1e-12)
    gw = winograd.weight_grad(sch, kept, gy, 3)  # (9, Cout, Cin)
    gw_direct = [np.einsum("nhwo,nhwc->oc", gy, tap) for _, _, tap in taps]
    np.testing.assert_allclose(gw, np.stack(gw_direct), rtol=1e-12, atol=1e-12)
    rebuilt = winograd.weight_grad(sch, winograd.tiles(sch, x), gy, 3)
    np.testing.assert_array_equal(rebuilt, gw)
    gx = winograd.input_grad(sch, gy, weight)
    gy1 = layout.pad_nhwc(gy, (1, 1, 1, 1))
    gx_direct = sum(
        gy1[:, 2 - i : 2 - i + out_hw[0], 2 - j : 2 - j + out_hw[1]] @ weight[:, :, i, j]
        for i in range(3)
        for j in range(3)
    )
    np.testing.assert_allclose(gx, gx_direct, rtol=1e-12, atol=1e-12)


@pytest.mark.torch
@pytest.mark.parametrize(
    ("n", "hw"), [(2, (16, 12)), (2, (14, 15)), (24, (7, 7))], ids=["whole", "cropped", "7x7"]
)
def test_torch_parity_winograd_f4(
    torch, tiny_blocks: None, n: int, hw: tuple, rng: np.random.Generator
) -> None:
    """F(4x4, 3x3) in float32, block by block, on 64 channels: within float32 parity; sides
    that are no multiple of 4 computed further and cropped (7x7: a side under 8, taken for a
    batch of many tiles)."""
    case = (n, 64, 64, 3, 1, 1, 1, 1, False, hw)
    tensors = _inputs(case, rng, np.float32, channels_last=True)
    assert _call(case)(*tensors).grad_fn.winograd is winograd.F4
    _check_parity(torch, case, channels_last=True, rng=rng)


@pytest.mark.torch
def test_torch_parity_winograd_blocked(torch, tiny_blocks: None, rng: np.random.Generator) -> None:
    """Winograd tiles taken block by block (images split into rows of tiles), their
    transforms kept for the weight gradient or not."""
    case = (3, 16, 8, 3, 1, 1, 1, 1, False, (12, 10))
    _check_parity(torch, case, channels_last=True, rng=rng)


def test_row_blocks_cover_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "MIN_BLOCK_ROWS", 2)
    for n, ho, wo, row_bytes in [(3, 5, 4, 10), (2, 7, 3, 1 << 20), (4, 4, 4, 1 << 16)]:
        blocks = list(layout.row_blocks(n, ho, wo, row_bytes))
        assert blocks[0].r0 == 0 and blocks[-1].r1 == n * ho * wo
        for a, b in zip(blocks, blocks[1:], strict=False):
            assert a.r1 == b.r0
        for blk in blocks:
            assert blk.r1 - blk.r0 == (blk.n1 - blk.n0) * (blk.h1 - blk.h0) * wo


@pytest.mark.parametrize("weight_channels_last", [False, True])
def test_layouts(weight_channels_last: bool, rng: np.random.Generator) -> None:
    """NCHW-shaped output over NHWC memory; the weight's gradient in the weight's layout."""
    x = _tensor(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    weight = _tensor(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), weight_channels_last)
    y = conv2d(x, weight, padding=1)
    assert y.shape == (2, 4, 6, 6) and y.dtype == engine.float32
    assert y._data.transpose(0, 2, 3, 1).flags.c_contiguous
    y.sum().backward()
    assert x.grad._data.transpose(0, 2, 3, 1).flags.c_contiguous
    assert weight.grad.dtype == engine.float32
    grad = weight.grad._data
    layout_of_grad = grad.transpose(0, 2, 3, 1) if weight_channels_last else grad
    assert layout_of_grad.flags.c_contiguous


def test_grad_fn_and_no_grad(rng: np.random.Generator) -> None:
    x, weight, bias = _inputs(CASES["3x3"], rng, np.float32)
    y = conv2d(x, weight, bias, padding=1)
    assert y.grad_fn.name() == "ConvolutionBackward0"
    with engine.no_grad():
        z = conv2d(x, weight, bias, padding=1)
    assert z.grad_fn is None and not z.requires_grad
    np.testing.assert_array_equal(z.numpy(), y.detach().numpy())


def test_backward_leaves_incoming_gradient_alone(rng: np.random.Generator) -> None:
    x, weight, bias = _inputs(CASES["1x1"], rng, np.float64)
    y = conv2d(x, weight, bias)
    gy = rng.standard_normal(y.shape)
    before = gy.copy()
    grads = _grads(y, gy, (x, weight, bias))
    np.testing.assert_array_equal(gy, before)
    assert not any(np.shares_memory(g, gy) for g in grads)


def test_only_requested_gradients(rng: np.random.Generator) -> None:
    x, weight, bias = _inputs(CASES["3x3"], rng, np.float64)
    x.requires_grad_(False)
    conv2d(x, weight, bias, padding=1).sum().backward()
    assert x.grad is None and weight.grad is not None and bias.grad is not None


def test_double_backward_raises(rng: np.random.Generator) -> None:
    x, weight, _ = _inputs(CASES["3x3"], rng, np.float64)
    (gx,) = engine.autograd.grad(conv2d(x, weight).sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        gx.sum().backward()


def test_unbatched_input(rng: np.random.Generator) -> None:
    x, weight, bias = _inputs(CASES["3x3"], rng, np.float64)
    batched = conv2d(x, weight, bias, padding=1)
    single = conv2d(x[0], weight, bias, padding=1)
    assert single.shape == batched.shape[1:]
    np.testing.assert_allclose(single.detach().numpy(), batched.detach().numpy()[0])


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "kwargs", "message"),
    [
        ((2, 3, 5, 5), (4, 2, 3, 3), {}, r"expected input\[2, 3, 5, 5\] to have 2 channels"),
        ((2, 3, 5, 5), (4, 3, 7, 7), {}, r"Kernel size can't be greater than actual input size"),
        ((2, 4, 5, 5), (3, 2, 3, 3), {"groups": 2}, "expected weight to be divisible by 2"),
        ((2, 3, 5, 5), (4, 3, 3, 3), {"stride": 2, "padding": "same"}, "strided convolutions"),
        ((2, 3, 5, 5), (4, 3, 3, 3), {"padding": "full"}, "Invalid padding string: 'full'"),
        ((2, 3, 5, 5), (4, 3, 3, 3), {"padding": -1}, "negative padding is not supported"),
        ((2, 3, 5, 5), (4, 3, 3, 3), {"stride": 0}, "non-positive stride is not supported"),
        ((2, 3, 5, 5), (4, 3, 3, 3), {"dilation": 0}, "non-positive dilation is not supported"),
        ((2, 3, 5, 5), (4, 3, 3, 3), {"groups": 0}, "non-positive groups is not supported"),
        ((2, 3, 5, 5), (4, 3, 3, 3), {"stride": (1, 1, 1)}, "a list of 2 values"),
        ((3, 5), (4, 3, 3, 3), {}, r"Expected 3D \(unbatched\) or 4D \(batched\) input"),
    ],
)
def test_errors(x_shape: tuple, w_shape: tuple, kwargs: dict, message: str) -> None:
    x, weight = engine.zeros(*x_shape), engine.zeros(*w_shape)
    with pytest.raises(RuntimeError, match=message):
        conv2d(x, weight, **kwargs)


def test_bias_and_dtype_errors() -> None:
    x, weight = engine.zeros(1, 3, 5, 5), engine.zeros(4, 3, 3, 3)
    with pytest.raises(RuntimeError, match="expected bias to be 1-dimensional with 4 elements"):
        conv2d(x, weight, engine.zeros(3))
    with pytest.raises(RuntimeError, match="expected scalar type Double but found Float"):
        conv2d(x.double(), weight)
    with pytest.raises(RuntimeError, match=r"Input type \(float\) and bias type \(double\)"):
        conv2d(x, weight, engine.zeros(4).double())
