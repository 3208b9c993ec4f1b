"""torch.distributed helpers: ``torchrun --nproc_per_node=N -m sfda_deploy adapt ...``.

Data parallelism is explicit: every process computes the recipe's losses on its own batches, then
one flat all-reduce averages the gradients before the optimiser step (the same update DDP makes).
Recipes call the student several times per step (ATP P: easy, mixed and hard images) and train
extra modules (projection heads); an explicit all-reduce stays correct for all of them without
DDP's one-forward-per-backward bookkeeping. As DDP does, parameters and buffers are broadcast from
rank 0 once when a stage starts, and afterwards only the buffers that training changes (BatchNorm
running statistics of modules in train mode), coalesced into one broadcast per dtype. Only rank 0
writes files.

Each process owns one device: on CUDA, process ``LOCAL_RANK`` runs on ``cuda:LOCAL_RANK`` (set
before the process group exists, and given to it as ``device_id``), with NCCL; on CPU, gloo (NCCL
cannot reduce CPU tensors).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from sfda_deploy.errors import SfdaError


def backend_for(device) -> str:
    """The process-group backend that can reduce tensors on ``device``: NCCL for CUDA, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def process_device(device, local_rank: int, gpu_count: int) -> torch.device:
    """The device of process ``local_rank`` on its node: ``cuda:local_rank`` for a CUDA job, else ``device``.

    Raises:
        SfdaError: a CUDA job with more processes on this node than GPUs (ranks would share a GPU,
            which NCCL refuses: "Duplicate GPU detected").
    """
    device = torch.device(device)
    if device.type != "cuda":
        return device
    if local_rank >= gpu_count:
        raise SfdaError(f"process {local_rank} of this node has no GPU of its own (only {gpu_count} visible): "
                        f"start at most {gpu_count} processes per node (torchrun --nproc_per_node={gpu_count})")
    return torch.device("cuda", local_rank)


def init(device="cpu") -> tuple[int, int, int]:
    """(rank, world, local_rank); under torchrun, pins this process to its device and joins the group.

    Args:
        device: the job's ``--device`` (``cpu``, ``cuda``, ``cuda:N``); under torchrun a CUDA job runs
            each process on ``cuda:LOCAL_RANK``, whatever N says.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return 0, 1, 0
    join_group(device, local)
    return dist.get_rank(), dist.get_world_size(), local


def join_group(device, local_rank: int, init_method: str | None = None) -> torch.device:
    """Pin this process to its device and join the process group; returns the device.

    Args:
        init_method: where the processes meet (default: torchrun's ``env://``); with another one, e.g.
            ``file://PATH``, the rank and world size come from ``RANK`` and ``WORLD_SIZE``.
    """
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SfdaError(f"--device {device} under torchrun but no CUDA GPU is visible to torch: "
                        "use --device cpu (gloo)")
    own = process_device(device, local_rank, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if dist.is_initialized():
        return own
    global _joined
    import_group_defaults()
    where = {} if init_method is None else {"init_method": init_method, "rank": int(os.environ["RANK"]),
                                             "world_size": int(os.environ["WORLD_SIZE"])}
    if own.type == "cuda":
        torch.cuda.set_device(own)  # before the group: NCCL binds each rank to its current device
        dist.init_process_group(backend=backend_for(own), device_id=own, **where)
    else:
        dist.init_process_group(backend=backend_for(own), **where)
    _joined = True
    return own


def import_group_defaults() -> None:
    """Import, before the group exists, the torch modules that take ``group.WORLD`` as a default argument.

    ``torch.distributed.nn.functional`` and ``torch.distributed._shard`` define functions such as
    ``all_reduce(tensor, op, group=group.WORLD)``: the default is evaluated when the module is imported. The
    first optimiser imports them (through ``torch._dynamo``); imported after ``init_process_group``, those
    defaults hold the process group itself, so ``destroy_process_group`` cannot free it: its gloo threads
    (``gloo_tcp_loop``, ``pt_gloo_runloop``) then outlive the group into interpreter shutdown, where a worker
    thread dropping its last finished work frees a tensor owned by Python, asks for the GIL, is ended by the
    finalising interpreter (``pthread_exit``) inside a ``noexcept`` destructor and aborts the process
    ("terminate called without an active exception", SIGABRT; caught in a core dump). Imported before, the
    defaults are ``None`` and leaving the group joins its threads while the interpreter is still whole.
    """
    import torch._dynamo  # noqa: F401  (what the first optimiser imports)
    import torch.distributed.nn  # noqa: F401


_joined = False  # this package started the process group (``join_group``), so it also ends it


def leave_group(finished: bool) -> None:
    """End the process group ``join_group`` started, once, as the command's process ends.

    Every rank finished: a barrier first, then ``destroy_process_group``, which frees the group and joins
    its threads (see ``import_group_defaults``). After an error there is no barrier: the other ranks may
    never reach it.
    """
    global _joined
    if not _joined or not dist.is_initialized():
        return
    _joined = False
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def average_gradients(params: list[torch.Tensor]) -> None:
    """Average ``.grad`` over processes with one flat all-reduce (missing grads count as 0).

    Run it on the still-scaled gradients of an fp16 step (``amp.apply_gradients``): a rank's inf then
    reaches every rank, so all of them skip the step together.
    """
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


def _broadcast_coalesced(tensors: list[torch.Tensor]) -> None:
    """Broadcast from rank 0 with one flat tensor per dtype (one collective each, not one per tensor)."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.broadcast(flat, 0)
        offset = 0
        for t in group:
            t.data.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def sync_module_states(*modules: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (DDP does this once, at construction)."""
    if active():
        _broadcast_coalesced([t for m in modules for t in (*m.parameters(), *m.buffers())])


def buffers_change_in_training(module: torch.nn.Module) -> bool:
    """True when a training forward updates buffers: a BatchNorm in train mode tracking running stats."""
    return any(isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats
               for m in module.modules())


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers on every rank, when training changes them (DDP's ``broadcast_buffers``)."""
    if active() and buffers_change_in_training(module):
        _broadcast_coalesced(list(module.buffers()))


def losses_to_host(losses: dict[str, torch.Tensor], total: torch.Tensor) -> tuple[dict[str, float], bool]:
    """The iteration's loss values and whether the total is non-finite on ANY rank, in one host sync.

    Args:
        losses: named scalar losses (device tensors).
        total: their sum.
    Returns:
        ({name: value}, non-finite somewhere): the flag is all-reduced on the device before the one
        ``.tolist()`` that brings everything to the host.
    """
    flag = (~torch.isfinite(total.detach().float())).float().reshape(1)
    if active():
        dist.all_reduce(flag)
    parts = [torch.stack([v.detach().float().reshape(()) for v in losses.values()])] if losses else []
    values = torch.cat([*parts, flag]).tolist()
    return dict(zip(losses, values[:-1])), values[-1] > 0


def broadcast_object(obj):
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()
