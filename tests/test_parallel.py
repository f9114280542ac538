"""engine.parallel: pieces run once each, results in order, errors re-raised, nesting serial;
and the kernels that use it give the same bits on one thread as on several."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import engine
import engine.parallel as parallel_module
from engine.nn import functional as F
from engine.nn.kernels import conv as conv_kernels
from engine.nn.kernels import direct, layout
from engine.parallel import (
    in_piece,
    lane,
    parallel,
    parallel_add,
    side_by_side,
    thread_count,
)


@pytest.fixture
def two_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel_module, "THREADS", 2)


def test_results_come_back_in_piece_order_and_each_piece_runs_once(two_threads: None) -> None:
    calls: list[int] = []
    results = parallel(lambda i: calls.append(i) or i * i, 50)
    assert results == [i * i for i in range(50)]
    assert sorted(calls) == list(range(50))


def test_pieces_run_on_the_pool_with_their_own_lanes(two_threads: None) -> None:
    barrier = threading.Barrier(2, timeout=10)

    def piece(i: int) -> tuple[int, str]:
        barrier.wait()  # both threads must hold a piece at once: the pool is used
        return lane(), threading.current_thread().name

    seen = parallel(piece, 2)
    assert sorted(lane_ for lane_, _ in seen) == [0, 1]
    assert any(name.startswith("engine") for _, name in seen)
    assert lane() == 0


def test_the_first_pieces_error_is_raised_after_every_piece_has_run(two_threads: None) -> None:
    done: list[int] = []

    def piece(i: int) -> None:
        if i in (3, 5):
            raise ValueError(f"piece {i}")
        done.append(i)

    for _ in range(20):  # whichever thread fails first, piece 3's error is the one raised
        done.clear()
        with pytest.raises(ValueError, match="piece 3"):
            parallel(piece, 8)
        assert sorted(done) == [0, 1, 2, 4, 6, 7]


def test_a_parallel_call_inside_a_piece_runs_serially_in_that_thread(two_threads: None) -> None:
    def piece(i: int) -> list[str]:
        return parallel(lambda j: threading.current_thread().name, 3)

    for names in parallel(piece, 4):
        assert len(set(names)) == 1


def test_one_thread_means_no_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel_module, "THREADS", 1)
    names = parallel(lambda i: threading.current_thread().name, 4)
    assert names == [threading.current_thread().name] * 4


def test_the_thread_count_follows_the_blas_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in parallel_module.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert thread_count() == 3
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert thread_count() == 1


def test_side_by_side_runs_each_call_as_a_piece(two_threads: None) -> None:
    assert not in_piece()
    assert side_by_side(lambda: (1, in_piece()), lambda: (2, in_piece())) == [(1, True), (2, True)]


@pytest.mark.parametrize(
    ("dst_shape", "src_shape"),
    [((3, 700, 600), (3, 700, 600)), ((1, 1200, 900), (900,)), ((), ()), ((5, 4), (5, 4))],
    ids=["split", "broadcast", "0-d", "small"],
)
def test_parallel_add_adds_in_place_as_numpy(
    two_threads: None, dst_shape: tuple, src_shape: tuple, rng: np.random.Generator
) -> None:
    """``dst += src`` with NumPy's broadcasting and a cast to ``dst``'s dtype, whether the
    pass is split over the threads (a million elements or more) or not."""
    dst = rng.standard_normal(dst_shape).astype(np.float32)
    src = rng.standard_normal(src_shape)  # float64
    expected = dst.copy()
    np.add(expected, src, out=expected, casting="unsafe")
    parallel_add(dst, src)
    np.testing.assert_array_equal(dst, expected)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_makes_its_own_pool(two_threads: None) -> None:
    parallel(lambda i: i, 4)  # the parent's pool exists
    pid = os.fork()
    if pid == 0:
        ok = parallel(lambda i: i + 1, 6) == [1, 2, 3, 4, 5, 6]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _train_steps(threads: int, monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Two SGD steps of a conv + batch norm + ReLU + pooling net on a batch large enough for
    each element-wise pass to be split over threads: every parameter and running statistic
    after."""
    monkeypatch.setattr(parallel_module, "THREADS", threads)
    monkeypatch.setattr(parallel_module, "_splits_products", threads > 1)
    # the strided conv's gradients (8 x 16 x 48x48) side by side, the first conv's one by one
    monkeypatch.setattr(conv_kernels, "SIDE_BY_SIDE_ELEMENTS", 8 * 16 * 48 * 48)
    engine.manual_seed(0)
    conv = engine.nn.Conv2d(3, 16, 3, padding=1, bias=False)  # Winograd
    bn = engine.nn.BatchNorm2d(16)
    strided = engine.nn.Conv2d(16, 16, 3, stride=2, padding=1)  # im2col, col2im
    params = [*conv.parameters(), *bn.parameters(), *strided.parameters()]
    opt = engine.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = engine.randn(8, 3, 96, 96)
    for _ in range(2):
        opt.zero_grad()
        y = F.batch_norm(
            conv(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, True, relu=True
        )
        peaks, means = F.max_pool2d(y, 3, 2, 1), F.avg_pool2d(y, 3, 2, 1)
        ((peaks * peaks).mean() + (means * strided(y)).mean()).backward()
        opt.step()
    return [t.detach().numpy().copy() for t in (*params, bn.running_mean, bn.running_var)]


@pytest.mark.parametrize(
    "blocks", ["whole", "kept blocks", "rebuilt blocks", "direct by images", "direct by channels"]
)
def test_threaded_kernels_give_the_serial_bits(
    monkeypatch: pytest.MonkeyPatch, blocks: str
) -> None:
    """Whole arrays split op by op; or im2col in many pieces and Winograd in many blocks, kept
    for backward or rebuilt there (im2col weight gradients: a piece a thread, summed in piece
    order); or the
    strided conv as one product per kernel offset (blocks of images or ranges of channels a
    thread)."""
    if blocks == "whole" or blocks.startswith("direct"):
        monkeypatch.setattr(parallel_module, "MIN_SPLIT_FLOPS", 0)
        monkeypatch.setattr(direct, "MIN_CHANNELS", 1 if blocks != "whole" else 1 << 30)
        monkeypatch.setattr(
            direct, "MIN_BLOCK_OUTPUTS", 1 if blocks.endswith("images") else 1 << 30
        )
    else:  # tiny products are not split: OpenBLAS multiplies very small matrices differently
        monkeypatch.setattr(conv_kernels, "PIECE_BYTES", 16 << 10)
        monkeypatch.setattr(layout, "BLOCKING_THRESHOLD", 64 << 10)
        monkeypatch.setattr(layout, "BLOCK_BYTES", 32 << 10)
        monkeypatch.setattr(layout, "MIN_BLOCK_ROWS", 1)
        keep = 1 << 30 if blocks == "kept blocks" else 0
        monkeypatch.setattr(conv_kernels, "KEEP_BYTES", keep)
        monkeypatch.setattr(conv_kernels, "WINOGRAD_KEEP_BYTES", keep)
    serial = _train_steps(1, monkeypatch)
    threaded = _train_steps(2, monkeypatch)
    for a, b in zip(serial, threaded, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "a_shape, b_shape",
    [
        ((3000, 147), (147, 64)),  # im2col rows: split by rows
        ((64, 3000), (3000, 147)),  # weight gradient: split by columns
        ((36, 36), (36, 20000)),  # Winograd transform
        ((36, 448, 64), (36, 64, 64)),  # Winograd products: split by matrices
        ((5, 300, 70), (70, 90)),  # a stack times one matrix
        ((1, 300, 70), (6, 70, 90)),  # a broadcast stack
        ((300,), (300, 80)),  # a vector: never split
    ],
)
def test_split_products_give_the_whole_products_bits(
    two_threads: None, monkeypatch: pytest.MonkeyPatch, a_shape: tuple, b_shape: tuple
) -> None:
    monkeypatch.setattr(parallel_module, "_splits_products", True)
    monkeypatch.setattr(parallel_module, "MIN_SPLIT_FLOPS", 0)
    rng = np.random.default_rng(0)
    a = rng.standard_normal(a_shape, dtype=np.float32)
    b = rng.standard_normal(b_shape, dtype=np.float32)
    whole = np.matmul(a, b)
    split = parallel_module.matmul(a, b)
    assert split.shape == whole.shape and split.dtype == whole.dtype
    assert np.array_equal(split, whole)
    out = np.empty_like(whole)
    assert parallel_module.matmul(a, b, out=out) is out and np.array_equal(out, whole)


def test_set_num_threads_sizes_the_pool_and_puts_blas_on_one_thread() -> None:
    """In a fresh process (it changes BLAS for the whole process)."""
    code = (
        "import engine, engine.blas as blas, engine.parallel as p\n"
        "assert engine.get_num_threads() == p.thread_count()\n"
        "engine.set_num_threads(3)\n"
        "found = blas.blas_threads() is not None\n"
        "assert engine.get_num_threads() == 3 and p._splits_products == found\n"
        "assert not found or blas.blas_threads() == 1\n"
        "assert set(p.parallel(lambda i: p.lane(), 30)) <= {0, 1, 2}\n"
        "engine.set_num_threads(1)\n"
        "assert not p._splits_products and p.parallel(lambda i: p.lane(), 4) == [0] * 4\n"
        "try:\n    engine.set_num_threads(0)\nexcept RuntimeError as e:\n    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "set_num_threads expects a positive integer"
