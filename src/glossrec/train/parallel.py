"""Data parallelism: the processes of one training run and the sums across them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

@dataclass
class _Group:
    """The data-parallel processes of one training run (one process: rank 0 of 1).

    `accelerate launch --num_processes N -m glossrec.cli train ...`, torchrun, or `glossrec
    train --processes N` start N copies; each finds its rank in the environment (RANK,
    WORLD_SIZE). Every process builds the same global step (the same micro-batches, in the same
    order) and computes the gradient of its share of them (micro-batches rank, rank + N, ...);
    the shares are summed across processes (gloo on CPU, NCCL on GPUs), so a step equals the
    one-process step on the same global batch. Only rank 0 writes (checkpoints, log, adapter);
    every process reads the same checkpoint to resume.
    """

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum_grads(self, params: Sequence[Any]) -> None:
        import torch
        import torch.distributed as dist

        for p in params:
            if p.grad is None:  # this process had no micro-batch this step
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)

    def sum(self, value: float) -> float:
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item())

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()


def _process_group(device: str) -> tuple[_Group, str]:
    """This process's group, joined if the launcher started several; and its device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return _Group(), device
    import datetime

    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    else:  # the cores are shared: each process takes its part
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // size))
    if not dist.is_initialized():
        # On GPUs: NCCL for the gradients, gloo for the CPU scalars (_Group.sum) NCCL cannot take.
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo",
                                timeout=datetime.timedelta(minutes=10))
    return _Group(dist.get_rank(), dist.get_world_size()), device
