"""The Adam optimisers every stage trains with, on torch's fused kernel where the device has one.

torch picks the one-tensor-at-a-time loop on CPU by default; the fused kernel takes the same steps
(to float rounding) in a quarter of the time: 1.5 ms against 5.4 ms a step for the chunk policy's
1.3M parameters on one core, about 6% of an imitation step (docs/RESULTS.md, session 23).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

FUSED_DEVICES = ("cpu", "cuda")


def adam(params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]], lr: float, *, weight_decay: float = 0.0, decoupled: bool = False) -> torch.optim.Optimizer:
    """Adam (``decoupled``: AdamW) over ``params`` (tensors or parameter groups), fused when every tensor is a
    floating-point one on a device with the fused kernel."""
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in tensors)
    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    return kind(params, lr=lr, weight_decay=weight_decay, **({"fused": True} if fused else {}))
