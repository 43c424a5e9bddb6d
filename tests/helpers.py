"""Plain values several test modules build on at import time (fixtures cannot serve module-level constants)."""

from __future__ import annotations

import torch

_FC1 = [[0.1, -0.2], [0.3, -0.4], [0.5, -0.6], [0.7, -0.8], [0.9, -1.0]]
_FC2 = [[1.0, -2.0, 3.0, -4.0, 5.0]]


def xor_weights(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-set weights of XOR's net: fc1 (5x2, |w| = 0.1 ... 1.0, signs alternating) and fc2 (1x5, 1 ... 5)."""
    return torch.tensor(_FC1, dtype=dtype), torch.tensor(_FC2, dtype=dtype)
