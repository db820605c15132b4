"""The few collective operations the trainer needs, for one process and for torch.distributed.

Backends inherit one of the two classes, so the loop calls ``backend.all_reduce`` and friends the
same way whether it runs alone or on N ranks (where every rank must make the same calls in the
same order).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


class LocalCollectives:
    """One process: every collective is the identity."""

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        return [float(v) for v in values]

    def all_gather_object(self, obj) -> list:
        return [obj]

    def broadcast_object(self, obj):
        return obj

    def barrier(self) -> None:
        return None

    def close(self) -> None:
        return None


class TorchCollectives(LocalCollectives):
    """Ranks of an initialised ``torch.distributed`` world (gloo on CPU, NCCL on GPU)."""

    device: torch.device

    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX,
               "min": torch.distributed.ReduceOp.MIN}
        torch.distributed.all_reduce(t, op=ops[op])
        return t.tolist()

    def all_gather_object(self, obj) -> list:
        out: list = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        torch.distributed.barrier()

    def close(self) -> None:
        """Leave the process group: a process that exits with gloo's threads still running can
        abort in C++ ("terminate called without an active exception") after its work is done.
        Also removes this rank's shared-memory buffer of DeepSpeed's CPU all-reduce, which
        DeepSpeed never unlinks (69 MB per rank and master port, left in /dev/shm otherwise)."""
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if os.environ.get("DS_ACCELERATOR") == "cpu" and "MASTER_PORT" in os.environ:
            name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '127.0.0.1')}_"
                    f"{os.environ['MASTER_PORT']}_{self.rank}")
            Path("/dev/shm", name).unlink(missing_ok=True)
