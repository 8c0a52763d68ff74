"""Scale-out on PyTorch's own engine: a stage started by ``torchrun`` trains with DistributedDataParallel.

    torchrun --standalone --nproc_per_node 2 -m robot.cli train imitation --data D --out R

Each process is one rank. Every rank draws the same global batch (and the same
diffusion noise) from identically seeded generators and trains on its own
contiguous slice of it; DDP averages the gradients, so N ranks take the step
one process would take on the whole batch (up to float summation order).
Only rank 0 writes the run directory. Backend: gloo on CPU, nccl on CUDA
(each rank on ``cuda:LOCAL_RANK``). Without torchrun's environment
(``WORLD_SIZE`` unset or 1) everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, checkpoints and reports."""
        return self.rank == 0

    def local_slice(self, batch_size: int) -> slice:
        """This rank's rows of a global batch; the batch must split evenly."""
        if batch_size % self.world_size:
            raise ValueError(f"batch_size {batch_size} does not split evenly over {self.world_size} processes; use a multiple of {self.world_size}")
        n = batch_size // self.world_size
        return slice(self.rank * n, (self.rank + 1) * n)

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` under DDP when distributed (gradients averaged in backward), else as is."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device = next(module.parameters()).device
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    def mean(self, value: float) -> float:
        """The mean of a scalar over ranks (a loss to log)."""
        if not self.enabled:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the torchrun job this process belongs to (if any) and pick its device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=rank, world_size=world, local_rank=local_rank), device


def require_single_process(stage: str) -> None:
    """Stages not yet data-parallel refuse torchrun instead of running N copies into one run directory."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            f"the {stage} stage does not run under torchrun yet (imitation and distillation do); "
            f"start it as one process, or run its imitation retraining with torchrun separately"
        )
