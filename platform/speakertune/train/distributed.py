"""The few collectives the training loop needs, all no-ops for a single worker (or outside
``torch.distributed``, e.g. a benchmark calling ``run_epoch`` in one process)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Dist:
    """Collectives over the Ray Train worker group (gloo on CPU, NCCL on GPU)."""

    def __init__(self, device: torch.device) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.on = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.device = device

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank."""
        if not self.on:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MIN)
        return bool(t.item())

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (also a barrier)."""
        if not self.on:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.on:
            return [obj]
        out: list[Any] = [None] * self.dist.get_world_size()
        self.dist.all_gather_object(out, obj)
        return out

    def sync_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank. Each rank updates
        its own statistics with its own last batches, and DDP only re-syncs them at the next
        forward: without this, workers would validate with different encoders, none of them
        the one rank 0 checkpoints."""
        if self.on:
            for buf in module.buffers():
                self.dist.broadcast(buf.data, src=0)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.on:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]
