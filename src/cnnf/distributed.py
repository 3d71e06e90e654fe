"""Several processes, one per CPU group or GPU: `torchrun --nproc-per-node N -m cnnf train |
evaluate | test ...` (docs/SCALING.md).

`start` joins the process group that torchrun's environment describes (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT): gloo on the CPU, nccl on CUDA, each process on the GPU of
its local rank. Without torchrun, or with one process, nothing is started, and every function
here acts as for a single process (rank 0 of 1, gathers of one, no communication), so a
single-process run computes exactly what it computed before this module existed.

In a started group, `cnnf.train`, `cnnf.accuracy.trajectory_statistics` and
`cnnf.evaluate.run_sweep` split their batches over the processes; every process must call them.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from cnnf.device import check_device_name, resolve_device


def launched() -> bool:
    """True in a process that torchrun started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    """The number of processes in the group (1 without one)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's number in the group, 0..world_size() - 1."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """True in the process that writes run folders, results and output (rank 0)."""
    return rank() == 0


def part() -> tuple[int, int]:
    """(rank, world size): this process's part of work split over the group."""
    return rank(), world_size()


def process_device(setting: str) -> torch.device:
    """The device this process computes on. One process: `resolve_device(setting)`. Several:
    "cuda" (and "auto" where CUDA is there) is the GPU of the local rank, "cpu" the CPU."""
    if not launched():
        return resolve_device(setting)
    check_device_name(setting)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if setting.startswith("cuda:"):
        raise ValueError(f"device {setting!r} names one GPU for {processes} processes; use --device cuda "
                         "(each process takes the GPU of its local rank)")
    device = resolve_device(setting)
    if device.type == "cpu":
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"torchrun started {processes} processes on this node but it has only "
                         f"{torch.cuda.device_count()} CUDA GPU(s); use --nproc-per-node {torch.cuda.device_count()}"
                         " or --device cpu")
    return torch.device("cuda", local_rank)


def start(setting: str) -> torch.device:
    """This process's device (`process_device`), after joining torchrun's process group where
    torchrun started several processes (gloo for the CPU, nccl for CUDA)."""
    device = process_device(setting)
    if launched() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def stop() -> None:
    """Leave the process group, if one was started."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process has come here."""
    if dist.is_initialized():
        dist.barrier()


def all_gather(value: object) -> list:
    """`value` of every process, in rank order (picklable values; tensors on the CPU)."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def sum_values(values: list[float]) -> list[float]:
    """Each number summed over the processes (float64)."""
    if not dist.is_initialized():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=_communication_device())
    dist.all_reduce(total)
    return total.tolist()


def sum_gradients(parameters) -> None:
    """Replace every parameter's gradient by its sum over the processes (a missing gradient
    counts as zeros), in one all-reduce."""
    if not dist.is_initialized():
        return
    parameters = list(parameters)
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in parameters])
    dist.all_reduce(flat)
    offset = 0
    for p in parameters:
        p.grad.copy_(flat[offset : offset + p.numel()].view(p.shape))
        offset += p.numel()


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Give every process the main process's weights."""
    if dist.is_initialized():
        for p in model.parameters():
            dist.broadcast(p.data, src=0)


def _communication_device() -> torch.device:
    """Where collectives take tensors: the process's GPU with nccl, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
