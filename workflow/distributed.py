"""Scale-out on PyTorch's own engine: a stage started by ``torchrun`` trains with DistributedDataParallel.

    torchrun --standalone --nproc_per_node 2 -m robot.cli train imitation --data D --out R
    torchrun --standalone --nproc_per_node 4 -m robot.cli pipeline --task push

Each process is one rank. Every rank draws the same global batch (and the same
diffusion noise) from identically seeded generators and trains on its own
contiguous slice of it; DDP averages the gradients, so N ranks take the step
one process would take on the whole batch (up to float summation order).
The RL stages split their sim episodes too: each rank rolls out its share in its own
sim (parallel rollout workers), and every episode draws its noise from its own seed,
so the episodes are the ones one process would collect. Only rank 0 writes the run
directory. Backend: gloo on CPU, nccl on CUDA
(each rank on ``cuda:LOCAL_RANK``). Without torchrun's environment
(``WORLD_SIZE`` unset or 1) everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

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

    def even_batch(self, batch_size: int, available: int) -> int:
        """The largest global batch of at most ``batch_size`` and ``available`` rows (at least one a rank) that splits
        evenly over the ranks: one process keeps ``min(batch_size, available)``."""
        return max(min(batch_size, available) // self.world_size, 1) * self.world_size

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

    def shard(self, n: int) -> range:
        """This rank's share of ``n`` work items (episodes): every ``world_size``-th from ``rank``."""
        return range(self.rank, n, self.world_size)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank 0 (None on the others): data only rank 0 writes."""
        if not self.enabled:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Average ``.grad`` over ranks in one flat all-reduce (parameters without a gradient are skipped).

        For losses that are means over each rank's rows of a global minibatch; a rank whose
        rows are fewer than the others' must scale its loss (``Distributed.rows``).
        """
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def rows(self, minibatch: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's rows of a global minibatch of indices, and the weight that turns the mean
        loss over them into its share of the global mean once gradients are averaged over ranks."""
        local = minibatch[self.rank :: self.world_size]
        return local, len(local) * self.world_size / max(1, len(minibatch))

    def interleave(self, local: torch.Tensor) -> torch.Tensor:
        """The whole batch from every rank's :meth:`rows` of it (``local``: this rank's values, one per row), in the batch's order."""
        if not self.enabled:
            return local
        parts = [torch.as_tensor(p) for p in self.gather(local.cpu())]
        whole = torch.empty((sum(len(p) for p in parts), *local.shape[1:]), dtype=local.dtype)
        for rank, part in enumerate(parts):
            whole[rank :: self.world_size] = part
        return whole.to(local.device)


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
