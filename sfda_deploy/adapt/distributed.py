"""torch.distributed helpers: ``torchrun --nproc_per_node=N -m sfda_deploy adapt ...``.

Data parallelism is explicit: every process computes the recipe's losses on its own batches, then
one flat all-reduce averages the gradients before the optimiser step (the same update DDP makes).
Recipes call the student several times per step (ATP P: easy, mixed and hard images) and train
extra modules (projection heads); an explicit all-reduce stays correct for all of them without
DDP's one-forward-per-backward bookkeeping. BN buffers are broadcast from rank 0 after each step
(DDP's ``broadcast_buffers``). Only rank 0 writes files.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init() -> tuple[int, int, int]:
    """(rank, world, local_rank); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("SFDA_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def average_gradients(params: list[torch.Tensor]) -> None:
    """Average ``.grad`` over processes with one flat all-reduce (missing grads count as 0)."""
    if not active():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).clone()
        offset += n


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum each tensor over processes, in place (no-op in a single process)."""
    if active():
        for t in tensors:
            dist.all_reduce(t)


def broadcast_buffers(module: torch.nn.Module) -> None:
    if active():
        for b in module.buffers():
            dist.broadcast(b, 0)


def any_true(flag: bool, device) -> bool:
    """True on every process if it is true on one (e.g. a non-finite loss)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def broadcast_object(obj):
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()
