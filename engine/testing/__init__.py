"""Testing helpers shared by the test suite and ``finetune gradcheck``: the op catalogue."""

from engine.testing.op_cases import CASES, TIES_THREE, OpCase

__all__ = ["CASES", "TIES_THREE", "OpCase"]
