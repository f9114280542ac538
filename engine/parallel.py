"""A small persistent thread pool for the element-wise NumPy work around the matrix products.

BLAS spreads matrix products over the cores, but an element-wise pass (BatchNorm, Winograd's
tile gathers, im2col copies, pooling, the optimizer's update) runs on the calling thread alone.
NumPy releases the GIL inside large ufunc and copy calls, so independent pieces of such a pass
run side by side from Python threads: two threads took a 13 MB scale-shift-ReLU pass from
4.5 ms to 2.6 ms on this project's 2-core machine, right after a matrix product.

``parallel(work, count)`` hands pieces out one at a time to whichever thread asks next, the
calling thread included, and returns when all are done, so a worker that the OS does not
schedule in time (a busy machine) costs nothing: the caller takes its pieces. Results come
back in piece order, so a reduction over them does not depend on which thread ran what, and
results are the same as a serial loop's. ``lane()`` tells a piece which thread runs it, for
per-thread scratch buffers. The pool has as many threads as BLAS (``OPENBLAS_NUM_THREADS``,
``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``, else the CPUs this process may use), the caller
counting as one: with one thread (as under ``mpiexec``, one per rank) everything is serial.
Nested calls run serially; a forked child starts without the parent's pool.

``set_num_threads`` (torch's name) goes further: it sets the pool's size and, where NumPy's
BLAS is OpenBLAS, puts OpenBLAS on one thread and splits large matrix products (``matmul``)
over the pool instead. One pool then serves products and element-wise passes alike; left to
itself, an idle OpenBLAS thread spins on a core for 0.1 s after each product, and the pool's
workers got little of that core.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from engine.blas import set_blas_threads

R = TypeVar("R")

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
MIN_ELEMENTS = 1 << 20  # smaller passes run on one thread: waking the pool costs more
MIN_SPLIT_FLOPS = 1 << 22  # smaller matrix products run whole


def thread_count() -> int:
    """The BLAS library's thread count: the first of ``THREAD_VARIABLES`` that is set, else
    the CPUs this process may run on."""
    for name in THREAD_VARIABLES:
        value = os.environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


THREADS = thread_count()
_splits_products = False  # set_num_threads put BLAS on one thread: ``matmul`` splits products

_state = threading.local()  # .lane: this thread's lane; .busy: inside a parallel piece
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_lanes = itertools.count(1)


def lane() -> int:
    """The lane of the calling thread: 0 for the thread that called ``parallel`` (or any
    thread outside it), 1 to ``THREADS - 1`` for the pool's workers."""
    return getattr(_state, "lane", 0)


def in_piece() -> bool:
    """True inside a piece of ``parallel`` (where nested calls run serially), on any thread."""
    return getattr(_state, "busy", False)


def _start_worker() -> None:
    _state.lane = next(_lanes)


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                THREADS - 1, thread_name_prefix="engine", initializer=_start_worker
            )
        return _pool


def _forget_pool() -> None:
    """In a forked child: the parent's worker threads do not exist here."""
    global _pool, _lock, _lanes
    _pool, _lock, _lanes = None, threading.Lock(), itertools.count(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


class _Job:
    """``work(i)`` for each ``i < count``, each piece claimed by the first thread to ask."""

    def __init__(self, work: Callable[[int], R], count: int) -> None:
        self.work, self.count = work, count
        self.results: list = [None] * count
        self.errors: dict[int, BaseException] = {}
        self.finished = threading.Event()
        self._claims = itertools.count()
        self._left = count
        self._lock = threading.Lock()

    def run(self) -> None:
        """Do pieces until none is left to claim."""
        _state.busy = True
        try:
            for i in self._claims:
                if i >= self.count:
                    return
                try:
                    self.results[i] = self.work(i)
                except BaseException as error:  # noqa: BLE001 - re-raised by the caller
                    self.errors[i] = error
                with self._lock:
                    self._left -= 1
                    if not self._left:
                        self.finished.set()
        finally:
            _state.busy = False


def parallel(work: Callable[[int], R], count: int) -> list[R]:
    """``[work(i) for i in range(count)]``, the pieces spread over the pool and the calling
    thread; serial with one thread, one piece, or inside another ``parallel`` piece. The
    error of the lowest-numbered piece that failed is raised here, once every piece has
    finished (as a serial loop would have raised it first)."""
    if THREADS == 1 or count < 2 or in_piece():
        return [work(i) for i in range(count)]
    job = _Job(work, count)
    pool = _get_pool()
    for _ in range(min(THREADS, count) - 1):
        pool.submit(job.run)
    job.run()
    job.finished.wait()
    if job.errors:
        raise job.errors[min(job.errors)]
    return job.results


def side_by_side(*calls: Callable[[], R]) -> list[R]:
    """``[call() for call in calls]``, each call a piece of ``parallel``: side by side on the
    threads, each running its own passes serially."""
    return parallel(lambda i: calls[i](), len(calls))


def parallel_ranges(length: int, work: Callable[[slice], R], elements: int) -> list[R]:
    """``work(s)`` for consecutive slices ``s`` that cover ``range(length)``, one a thread, for
    a pass over ``elements`` array elements; a pass under ``MIN_ELEMENTS`` is one
    ``work(slice(0, length))`` on the calling thread."""
    return in_ranges(length, work, elements >= MIN_ELEMENTS)


def ranges(length: int) -> list[slice]:
    """Consecutive slices covering ``range(length)``, one a thread (fewer for a short length)."""
    pieces = min(THREADS, length)
    return [slice(length * i // pieces, length * (i + 1) // pieces) for i in range(pieces)]


def in_ranges(length: int, work: Callable[[slice], R], split: bool = True) -> list[R]:
    """``work`` on each of ``ranges(length)`` (or, with ``split`` false, on one slice of it
    all on the calling thread)."""
    parts = ranges(length) if split else [slice(0, length)]
    return parallel(lambda i: work(parts[i]), len(parts))


def _in_parts(dst: np.ndarray, work: Callable[[tuple], None]) -> None:
    """``work(index)`` for indexes that cut ``dst`` in ranges of its first axis longer than one
    (``parallel_ranges``, for a pass over ``dst``); a 0-d ``dst`` is one part, ``...``."""
    if not dst.ndim:
        work((...,))
        return
    axis = next((i for i, size in enumerate(dst.shape) if size > 1), 0)
    parallel_ranges(dst.shape[axis], lambda part: work((slice(None),) * axis + (part,)), dst.size)


def parallel_copyto(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` for arrays of one shape, in parts on the threads (``_in_parts``): for
    the large strided copies of im2col and padding."""
    _in_parts(dst, lambda index: dst.__setitem__(index, src[index]))


def parallel_add(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst += src`` (``src`` broadcast to ``dst`` and cast to its dtype), in parts on the
    threads (``_in_parts``): for the gradients that meet where a tensor was used twice."""
    src = np.broadcast_to(src, dst.shape)
    _in_parts(dst, lambda index: np.add(dst[index], src[index], out=dst[index], casting="unsafe"))


def set_num_threads(count: int) -> None:
    """Use ``count`` threads (the caller's included) for the engine's work, as torch's
    ``set_num_threads``; where NumPy's BLAS is OpenBLAS, it is put on one thread for the
    whole process and ``matmul`` splits large products over the engine's threads."""
    global THREADS, _splits_products, _pool, _lanes
    if count < 1:
        raise RuntimeError("set_num_threads expects a positive integer")
    with _lock:
        if _pool is not None and count != THREADS:
            _pool.shutdown(wait=False)
            _pool, _lanes = None, itertools.count(1)
        THREADS = count
    found = set_blas_threads(1)
    _splits_products = found and count > 1


def get_num_threads() -> int:
    """The number of threads the engine uses (torch's ``get_num_threads``)."""
    return THREADS


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` of matrices or stacks of them. After ``set_num_threads``
    put BLAS on one thread, a large product is split over the engine's threads: a stack by
    matrices, a matrix product along the longer side of its result (never along the summed
    axis, so each element is summed as in one product)."""
    if a.ndim < 2 or b.ndim < 2:
        return np.matmul(a, b, out=out)
    if out is None:
        shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
        out = np.empty(shape, np.result_type(a, b))
    flops = 2 * out.size * a.shape[-1]
    if not _splits_products or THREADS == 1 or flops < MIN_SPLIT_FLOPS:
        return np.matmul(a, b, out=out)
    if out.ndim == 3 and len(out) >= THREADS:
        lead = (a.ndim == 3 and len(a) == len(out), b.ndim == 3 and len(b) == len(out))

        def stack(part: slice) -> None:
            np.matmul(a[part] if lead[0] else a, b[part] if lead[1] else b, out=out[part])

        in_ranges(len(out), stack)
    elif out.ndim == 2 and out.shape[0] >= out.shape[1]:
        in_ranges(out.shape[0], lambda rows: np.matmul(a[rows], b, out=out[rows]))
    elif out.ndim == 2:
        in_ranges(out.shape[1], lambda cols: np.matmul(a, b[:, cols], out=out[:, cols]))
    else:
        np.matmul(a, b, out=out)
    return out
