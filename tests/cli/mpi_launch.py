"""`finetune` as one process of an MPI job, with a fault injected on rank 1 (for the tests).

FINETUNE_TEST_FAULT=raise makes rank 1 fail at its second training step, =hang makes it stop
answering there; anything else runs `finetune` unchanged.
"""

from __future__ import annotations

import os
import time

from cli.errors import FinetuneError
from cli.launcher import launched_rank
from cli.main import app
from cli.training.reduction import StepReduction

FAULT = os.environ.get("FINETUNE_TEST_FAULT")


def inject() -> None:
    reduce, calls = StepReduction.reduce, []

    def faulty(self: StepReduction, size: int, stop: bool) -> object:
        calls.append(size)
        if len(calls) == 2 and FAULT == "hang":
            time.sleep(3600)
        if len(calls) == 2:
            raise FinetuneError("injected fault at the second step")
        return reduce(self, size, stop)

    StepReduction.reduce = faulty  # type: ignore[method-assign]


if __name__ == "__main__":
    if FAULT and launched_rank() == 1:
        inject()
    app()
