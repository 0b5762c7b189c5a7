"""Sharding a run across processes and machines with torch.distributed.

Under `torchrun --nproc_per_node N -m minipss pss ...` every process takes the concepts i with
i % world == rank (coefficients, baseline and masked cells alike); what each computed is gathered, and
rank 0 writes the one result file a single process would write. gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


class Shard:
    def __init__(self, device: str = "cpu"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = device
        self.owns_group = False
        if self.world > 1:
            if device.startswith("cuda"):
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)
                self.device = f"cuda:{local}"
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
                self.owns_group = True

    def mine(self, i: int) -> bool:
        return i % self.world == self.rank

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """Wait for every rank, then end the process group this shard started (a process that exits with
        the group still open may abort in its teardown)."""
        if self.owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            self.owns_group = False

    @property
    def main(self) -> bool:
        return self.rank == 0
