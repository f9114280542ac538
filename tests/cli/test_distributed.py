"""Data-parallel training without MPI: sharding, the step's buffer, sync BatchNorm's
combination of moments, launcher detection and the `dist` config."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import engine
from cli.config import Config, DistConfig
from cli.data import DataLoader
from cli.errors import ConfigError, FinetuneError
from cli.launcher import launched_rank, launched_size, limit_blas_threads
from cli.training.distributed import BatchStats, Communicator, Job, check_backend, connect
from cli.training.reduction import StepReduction
from cli.training.sharding import ShardedLoader, Sharding, shard_sizes
from engine import nn
from tests.cli.test_data import counting_dataset


@given(
    size=st.integers(1, 200),
    processes=st.integers(1, 6),
    micro=st.integers(1, 4),
    min_size=st.sampled_from([1, 2]),
)
def test_shards_are_contiguous_disjoint_and_cover_the_batch(size, processes, micro, min_size):
    indices = np.random.default_rng(size).permutation(1000)[:size]
    parts = [
        shard
        for rank in range(processes)
        for shard in Sharding(rank, processes, micro).local(indices, min_size)
    ]
    assert len(parts) == processes * micro
    assert np.array_equal(np.concatenate(parts), indices)  # in order: disjoint, union = batch
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(s for s in sizes if s) <= 1
    if size >= min_size:
        assert all(s == 0 or s >= min_size for s in sizes)
    assert sizes == shard_sizes(size, processes * micro, min_size)


def test_no_lone_image_while_batchnorm_trains():
    assert shard_sizes(5, 4, min_size=2) == [3, 2, 0, 0]
    assert shard_sizes(5, 4, min_size=1) == [2, 1, 1, 1]
    assert shard_sizes(1, 2, min_size=2) == [1, 0]  # the loop skips a batch of one image


def samples_seen(loader: ShardedLoader) -> list[list[int]]:
    """The sample indices (counting_dataset's pixel values) of each step's shards, in order."""
    return [[int(v) for images, _ in step.shards for v in images[:, 0, 0, 0]] for step in loader]


@pytest.mark.parametrize("processes,micro", [(1, 1), (2, 1), (1, 3), (2, 2)])
def test_sharded_loader_splits_each_global_batch_exactly(processes, micro):
    dataset = counting_dataset(23)
    plain = DataLoader(dataset, batch_size=6, shuffle=True, seed=4)
    plain.set_epoch(1)
    expected = [[int(v) for v in images[:, 0, 0, 0]] for images, _ in plain]
    per_rank = []
    for rank in range(processes):
        loader = ShardedLoader(dataset, 6, Sharding(rank, processes, micro), shuffle=True, seed=4)
        loader.set_epoch(1)
        per_rank.append(samples_seen(loader))
        loader.set_epoch(1)
        assert samples_seen(loader) == per_rank[-1]  # deterministic from seed and epoch
        assert [step.size for step in loader] == [len(batch) for batch in expected]
    joined = [sum((seen[b] for seen in per_rank), []) for b in range(len(expected))]
    assert joined == expected


class Pretend(Communicator):
    """A second process whose contribution to every sum is zero: pack, reduce and unpack
    must then leave each number where it was."""

    size = 2


def small_model() -> nn.Module:
    engine.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2))


def test_step_buffer_round_trip_keeps_gradients_and_statistics():
    model = small_model().train()
    reduction = StepReduction(Pretend(), model, shards=2)
    x = engine.from_numpy(np.random.default_rng(0).normal(size=(4, 3, 4, 4)).astype(np.float32))
    reduction.begin()
    model(x).sum().backward()
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    stats = [model[1].running_mean.numpy().copy(), model[1].running_var.numpy().copy()]
    reduction.add(loss=0.5, correct=3, images=4)
    totals = reduction.reduce(size=4, stop=True)
    assert (totals.loss, totals.correct, totals.images, totals.stop) == (0.5, 3, 4, True)
    for param, grad in zip(model.parameters(), grads, strict=True):
        assert np.array_equal(param.grad.numpy(), grad)
    np.testing.assert_allclose(model[1].running_mean.numpy(), stats[0], rtol=1e-6)
    np.testing.assert_allclose(model[1].running_var.numpy(), stats[1], rtol=1e-6)
    assert model[1].num_batches_tracked.item() == 1


def test_micro_batches_average_running_statistics_and_count_one_step():
    model = small_model().train()
    reduction = StepReduction(Communicator(), model, shards=2)
    rng = np.random.default_rng(0)
    shards = [rng.normal(size=(n, 3, 4, 4)).astype(np.float32) for n in (3, 2)]
    reduction.begin()
    means = []
    for shard in shards:
        model(engine.from_numpy(shard)).sum().backward()
        means.append(model[1].running_mean.numpy().copy())
        reduction.add(loss=1.0, correct=0, images=len(shard))
        assert np.array_equal(model[1].running_mean.numpy(), np.zeros(4, np.float32))
    totals = reduction.reduce(size=5, stop=False)
    np.testing.assert_allclose(
        model[1].running_mean.numpy(), (3 * means[0] + 2 * means[1]) / 5, rtol=1e-6
    )
    assert model[1].num_batches_tracked.item() == 1
    assert (totals.images, totals.stop) == (5, False)


class Rows(Communicator):
    """Two pretend processes whose rows `allgather` returns."""

    def __init__(self, other: np.ndarray) -> None:
        self.other = other

    def allgather(self, array: np.ndarray) -> np.ndarray:
        return np.stack([array, self.other])


def test_sync_batchnorm_combines_moments_of_shards_as_of_the_whole():
    x = np.random.default_rng(2).normal(50.0, 0.5, (7, 3))
    a, b = x[:4], x[4:]
    other = np.concatenate([[len(b)], b.mean(0), b.var(0)])
    count, mean, var = BatchStats(Rows(other)).moments(len(a), a.mean(0), a.var(0))
    assert count == 7
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(var, x.var(0), rtol=1e-10)


def test_launcher_environment(monkeypatch):
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS", "PMI_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (launched_size(), launched_rank()) == (1, 0)
    monkeypatch.setenv("PMI_SIZE", "4")
    monkeypatch.setenv("PMI_RANK", "3")
    assert (launched_size(), launched_rank()) == (4, 3)
    monkeypatch.setenv("MPI_LOCALNRANKS", "4")
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    limit_blas_threads()
    import os

    assert int(os.environ["OMP_NUM_THREADS"]) >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    limit_blas_threads()  # the user's choice stands
    assert os.environ["OMP_NUM_THREADS"] == "7" and "OPENBLAS_NUM_THREADS" not in os.environ


def test_dist_config_errors(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(ConfigError, match="dist.backend: is 'none', but an MPI launcher"):
        check_backend(DistConfig(backend="none"), Communicator())
    monkeypatch.setenv("PMI_SIZE", "1")
    assert isinstance(check_backend(DistConfig(backend="none"), Communicator()), Communicator)
    data = {"data": {"micro_batches": 2}, "dist": {"batchnorm": "sync"}}
    with pytest.raises(ConfigError, match="dist.batchnorm: sync needs"):
        Config.from_dict(data)


def test_mpi_without_mpi4py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if not installed
    with pytest.raises(FinetuneError, match=r"pip install 'finetune\[mpi\]'"):
        connect("mpi")


def test_one_process_job_has_no_collectives():
    job = Job()
    assert job.describe() == "" and job.comm.gather(3) == [3]
    with job.synced([]):
        assert job.comm.watchdog(1.0) is None
