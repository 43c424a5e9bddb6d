"""One run on several processes: DistributedDataParallel under `torchrun` (DESIGN.md, processes per run).

`torchrun --nproc_per_node N -m prunebench run ...` starts N processes with RANK, WORLD_SIZE and
LOCAL_RANK set; `from_environment` joins them into one process group (NCCL on CUDA, each rank on its
own GPU; gloo on CPU). What stays the same as a one-process run:

- the protocol's batch size is the global batch: each rank trains on its own contiguous slice of the
  very batch a single process would draw (resident data: by index; streamed data: the epoch sampler
  shards each global batch), and random augmentations are drawn for the whole global batch, each rank
  using its slice, so the data seen per step is the one-process run's exactly;
- DDP averages the gradients, so each step is the one-process step up to float summation order; a
  method's penalty depends on parameters only, is the same on every rank and survives the average;
- every pruning decision is made from state that is identical on every rank (the weights after the
  all-reduced step, the method's own state, the global generator seeded alike), and the harness
  checks it: at every evaluation each rank hashes its deployed network's mask and the run fails if
  the hashes differ (`MaskDriftError`), rather than storing a network no rank trained.

Rank 0 alone writes the store and the checkpoints; every rank evaluates (the same network, so the same
numbers) and the others keep their points in memory only.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class MaskDriftError(RuntimeError):
    """The ranks' deployed networks have different masks: a method made a rank-local decision."""


@dataclass(frozen=True)
class Context:
    """This process's place in the run: rank, world size, the backend of the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes the store and checkpoints."""
        return self.rank == 0

    def local_batch(self, batch_size: int) -> int:
        """The slice of the global batch this rank trains on."""
        if batch_size % self.world_size:
            raise ValueError(f"the batch size {batch_size} does not split evenly across {self.world_size} "
                             f"processes; use --batch-size with a multiple of {self.world_size}")
        return batch_size // self.world_size

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over ranks (in place), on every rank."""
        if self.active:
            dist.all_reduce(tensor)
            tensor /= self.world_size
        return tensor

    def maximum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend}


SINGLE = Context()


def from_environment(device: str | None = None) -> tuple[Context, str | None]:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE > 1), or the
    single-process context. Returns the context and the device this rank trains on: on CUDA, the
    GPU of its local rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise ValueError("--device cuda under torchrun, but CUDA is not available here")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Context(rank, world, local_rank, backend), device if cuda else (device or "cpu")


def close(context: Context) -> None:
    if context.active and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, context: Context, device: torch.device) -> nn.Module:
    """The module to call for the training forward pass: `model` itself, or DDP around it."""
    if not context.active:
        return model
    ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def mask_hash(network: nn.Module) -> str:
    """The hash of which weights of `network` are non-zero (names, shapes and the zero pattern)."""
    h = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        if tensor.is_floating_point():
            h.update(name.encode())
            h.update(str(tuple(tensor.shape)).encode())
            h.update((tensor != 0).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def check_masks_agree(context: Context, network: nn.Module) -> str:
    """The deployed mask's hash, the same on every rank, or `MaskDriftError`."""
    mine = mask_hash(network)
    hashes = context.gather(mine)
    if len(set(hashes)) > 1:
        raise MaskDriftError(f"the ranks' masks differ ({', '.join(hashes)}): this method made a decision "
                             "from rank-local state")
    return mine
