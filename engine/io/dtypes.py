"""Dtype helpers shared by the safetensors and torch readers."""

import numpy as np


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 values (given as uint16) to float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)
