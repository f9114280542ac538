"""What an MPI launcher (mpiexec, srun) tells a process through its environment, and the
BLAS settings that follow from it.

Read before mpi4py or NumPy is imported: whether this process is one of several, and how
many BLAS threads it should use so that the processes on one machine do not oversubscribe
its cores (two BLAS threads per rank on two cores made steps 5x slower).
"""

from __future__ import annotations

import os
import re
import sys
import time

# Variables holding the number of processes of the job, by launcher: Open MPI, MPICH and
# Intel MPI (Hydra, PMI), Slurm's srun (set inside a job step only, unlike SLURM_NTASKS).
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS")
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID")
# ... processes on this machine (Slurm's reads "2(x3)": 2 on each of 3 nodes).
LOCAL_SIZE_VARIABLES = (
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "MPI_LOCALNRANKS",
    "SLURM_STEP_TASKS_PER_NODE",
)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _first_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        number = re.match(r"\s*(\d+)", os.environ.get(name, ""))
        if number:
            return int(number.group(1))
    return default


def launched_size() -> int:
    """How many processes the launcher started for this job (1 without a launcher)."""
    return _first_int(SIZE_VARIABLES, 1)


def launched_rank() -> int:
    """This process's rank as the launcher numbered it (0 without a launcher)."""
    return _first_int(RANK_VARIABLES, 0)


def threads_per_process() -> int:
    """The cores this process may use: those the launcher bound it to, else the machine's
    cores shared by the job's processes on it (Slurm's cpus-per-task when given)."""
    if "SLURM_CPUS_PER_TASK" in os.environ:
        return max(1, _first_int(("SLURM_CPUS_PER_TASK",), 1))
    cores = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    if allowed < cores:
        return allowed
    local = _first_int(LOCAL_SIZE_VARIABLES, launched_size())
    return max(1, cores // max(1, local))


def limit_blas_threads() -> None:
    """Under a launcher of several processes, set the BLAS thread variables to this process's
    share of the cores, unless the user set any of them. Call before NumPy is imported."""
    if launched_size() <= 1 or any(name in os.environ for name in THREAD_VARIABLES):
        return
    threads = str(threads_per_process())
    for name in THREAD_VARIABLES:
        os.environ[name] = threads


def prepare_engine() -> None:
    """Set up the engine for a process that trains, once NumPy may load: large arrays reuse
    freed memory (``engine.keep_freed_memory``), and the engine's threads, as many as BLAS
    would use, run both the matrix products and the element-wise passes
    (``engine.set_num_threads``)."""
    import engine

    engine.keep_freed_memory()
    engine.set_num_threads(engine.get_num_threads())


ABORT_GRACE_S = 0.5  # for mpiexec to forward what this process printed before the teardown


def abort_job(code: int) -> None:
    """End every process of an MPI job of several processes now (a fault on this one must
    not leave the others waiting for it); nothing outside such a job.

    The launcher forwards each process's output asynchronously and an abort tears the job
    down at once, so the message printed just before would sometimes be lost: wait briefly.
    """
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return
    if mpi.COMM_WORLD.Get_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        mpi.COMM_WORLD.Abort(code)
