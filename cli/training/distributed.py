"""The processes of one training job, and how they talk: one process, or many over MPI.

`mpiexec -n 4 finetune train cfg.yaml` starts four processes of one job. A `Communicator`
is the job as the training loop sees it: `Single` for a lone process (no MPI at all), `Mpi`
over mpi4py. The loop has one code path for both: per step, one in-place sum over the
processes of one float32 buffer (cli.training.reduction). Start-up state goes out from
rank 0 once (pickled broadcasts are fine there); per step only mpi4py's buffer methods run.

A fault on any process aborts the whole job (`abort_job` in cli.launcher, from the error
reporter); a `Watchdog` aborts it when a process stops answering for `dist.timeout_s`.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from cli.config import DistConfig
from cli.errors import ConfigError, FinetuneError
from cli.launcher import abort_job, launched_size
from cli.training.run_folder import RunFolder
from cli.training.sharding import Batch, Sharding
from engine.nn.kernels.norm import synced_batch_stats

T = TypeVar("T")


class Communicator:
    """One process alone: every collective is the identity. `Mpi` is the real thing."""

    rank = 0
    size = 1

    def allreduce(self, buffer: np.ndarray) -> None:
        """Sum `buffer` over the processes, in place."""

    def broadcast(self, value: T) -> T:
        """Rank 0's `value`, on every process (start-up only: it is pickled)."""
        return value

    def allgather(self, array: np.ndarray) -> np.ndarray:
        """Every process's `array`, stacked in rank order: shape (size, *array.shape)."""
        return array[None]

    def gather(self, value: T) -> list[T]:
        """Every process's `value` in rank order, on rank 0 (elsewhere: empty; pickled)."""
        return [value]

    def subset(self, members: tuple[bool, ...]) -> Communicator:
        """The processes whose entry in `members` is true, as a communicator of their own; a
        call every process makes, and only the members may use the result."""
        return self

    def watchdog(self, timeout: float) -> Watchdog | None:
        """A watchdog over this job's collectives (none for a lone process)."""
        return None


class Mpi(Communicator):
    """The processes of an MPI communicator (mpi4py), with a cache of the sub-communicators
    that sync BatchNorm uses when only some processes have images."""

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.subsets: dict[tuple[bool, ...], Mpi] = {}
        self.clock: Watchdog | None = None

    def allreduce(self, buffer: np.ndarray) -> None:
        from mpi4py import MPI

        self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        self.tick()

    def broadcast(self, value: T) -> T:
        value = self.comm.bcast(value, root=0)
        self.tick()
        return value

    def allgather(self, array: np.ndarray) -> np.ndarray:
        out = np.empty((self.size, *array.shape), array.dtype)
        self.comm.Allgather(np.ascontiguousarray(array), out)
        self.tick()
        return out

    def gather(self, value: T) -> list[T]:
        every = self.comm.gather(value, root=0)
        self.tick()
        return every or []

    def subset(self, members: tuple[bool, ...]) -> Communicator:
        if all(members):
            return self
        if members not in self.subsets:
            from mpi4py import MPI

            part = self.comm.Split(0 if members[self.rank] else MPI.UNDEFINED, self.rank)
            self.subsets[members] = Mpi(part) if part != MPI.COMM_NULL else self
            self.subsets[members].clock = self.clock
        return self.subsets[members]

    def watchdog(self, timeout: float) -> Watchdog:
        self.clock = Watchdog(self.rank, timeout)
        for subset in self.subsets.values():
            subset.clock = self.clock
        return self.clock

    def tick(self) -> None:
        if self.clock is not None:
            self.clock.tick()


class Watchdog:
    """Aborts the job when no collective completes for `timeout` seconds while armed (a
    process stuck, or gone without MPI noticing): a stuck job never hangs forever."""

    def __init__(self, rank: int, timeout: float) -> None:
        self.rank, self.timeout = rank, timeout
        self.last = time.monotonic()
        self.done = threading.Event()

    def __enter__(self) -> Watchdog:
        self.tick()
        threading.Thread(target=self._watch, name="finetune-watchdog", daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done.set()

    def tick(self) -> None:
        self.last = time.monotonic()

    def _watch(self) -> None:
        while not self.done.wait(min(1.0, self.timeout / 4)):
            silent = time.monotonic() - self.last
            if silent > self.timeout:
                print(
                    f"[rank {self.rank}] error: no word from the other processes for "
                    f"{silent:.0f} s (dist.timeout_s={self.timeout:g}); aborting the job",
                    file=sys.stderr,
                )
                abort_job(1)


def connect(backend: str = "auto") -> Communicator:
    """The job this process belongs to: MPI when a launcher started several processes (or
    `backend` is "mpi"), else a lone process. Imports mpi4py only then."""
    if launched_size() <= 1 and backend != "mpi":
        return Communicator()
    try:
        from mpi4py import MPI
    except ImportError:
        raise FinetuneError(
            "training over several processes needs mpi4py: pip install 'finetune[mpi]' "
            "(or pip install mpi4py against your cluster's MPI)"
        ) from None
    return Mpi(MPI.COMM_WORLD)


def check_backend(config: DistConfig, comm: Communicator) -> Communicator:
    """`comm`, or MPI if the config asks for it; refuses dist.backend none under a launcher
    of several processes (each would train the whole run and write the same folder)."""
    size = launched_size()
    if config.backend == "none" and size > 1:
        raise ConfigError(
            [
                f"dist.backend: is 'none', but an MPI launcher started {size} processes, which "
                "would each train the whole run; set dist.backend=auto, or start one process"
            ]
        )
    if config.backend == "mpi" and not isinstance(comm, Mpi):
        return connect("mpi")
    return comm


def checksum(arrays: list[np.ndarray]) -> np.ndarray:
    """A digest of `arrays`' bytes, as 4 float64 numbers (to compare across processes)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return np.frombuffer(digest.digest(), np.uint16)[:4].astype(np.float64)


def agree(comm: Communicator, arrays: list[np.ndarray], what: str) -> None:
    """Check that every process holds the same `arrays`."""
    if comm.size == 1:
        return
    every = comm.allgather(checksum(arrays))
    if not (every == every[0]).all():
        differ = [r for r in range(comm.size) if not (every[r] == every[0]).all()]
        raise FinetuneError(f"{what} differ between processes (ranks 0 and {differ}) after start")


class Bystander(RunFolder):
    """The run folder as processes other than rank 0 see it: they write nothing there."""

    def start(self, *args: Any, **kwargs: Any) -> None:
        """Rank 0 creates the folder."""

    def save_config(self, *args: Any, **kwargs: Any) -> None:
        """Rank 0 writes the config."""

    def append_metrics(self, *args: Any, **kwargs: Any) -> None:
        """Rank 0 writes the metrics."""

    def save_weights(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Rank 0 writes the weights."""
        return self.path / name

    def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        """Rank 0 writes the trainer state."""


class BatchStats:
    """Sync BatchNorm over the processes that have images in this step (the engine's
    `StatsSync`, see engine.nn.kernels.norm): each layer's per-channel mean and variance
    over the whole global batch in forward, and the sums of its backward."""

    def __init__(self, comm: Communicator) -> None:
        self.comm = comm

    def moments(
        self, count: int, mean: np.ndarray, var: np.ndarray
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """Combine every process's (count, mean, biased variance), in rank order (Chan et
        al.'s pairwise update: no cancellation, the same numbers on every process)."""
        every = self.comm.allgather(np.concatenate([[count], mean, var]))
        channels = len(mean)
        total, mean, m2 = 0.0, np.zeros(channels), np.zeros(channels)
        for row in every:
            n, m, v = row[0], row[1 : channels + 1], row[channels + 1 :]
            delta = m - mean
            merged = total + n
            mean = mean + delta * (n / merged)
            m2 = m2 + v * n + delta * delta * (total * n / merged)
            total = merged
        return int(total), mean, m2 / total

    def sums(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        """Each per-channel sum over the processes."""
        buffer = np.concatenate(arrays)
        self.comm.allreduce(buffer)
        return tuple(np.split(buffer, np.cumsum([len(a) for a in arrays])[:-1]))


@dataclass
class Job:
    """This process's place in the job: whom it talks to, which shards it trains, and whether
    BatchNorm normalises over the whole global batch (dist.batchnorm sync)."""

    comm: Communicator = field(default_factory=Communicator)
    sharding: Sharding = field(default_factory=Sharding)
    sync_batchnorm: bool = False

    def synced(self, shards: list[Batch]) -> AbstractContextManager[None]:
        """The context of a training step's forward on this process's `shards`: sync
        BatchNorm over the processes that have images in this step, when asked for."""
        if not self.sync_batchnorm or self.comm.size == 1:
            return contextlib.nullcontext()
        members = self.comm.allgather(np.array([len(shards)], np.int64))[:, 0] > 0
        comm = self.comm.subset(tuple(members.tolist()))  # a call every process makes
        if not shards:
            return contextlib.nullcontext()
        return synced_batch_stats(BatchStats(comm))

    def describe(self) -> str:
        """How the batches are split, in words (empty for one process without micro-batches)."""
        parts = []
        if self.comm.size > 1:
            parts.append(f"{self.comm.size} processes")
        if self.sharding.micro_batches > 1:
            parts.append(f"{self.sharding.micro_batches} micro-batches each")
        if self.sync_batchnorm and self.comm.size > 1:
            parts.append("sync BatchNorm")
        return f" ({', '.join(parts)})" if parts else ""
