"""Distributed set-up for `torchrun ... -m sagan train`: process group, ranks, synchronised BN.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them this is a single process and every
helper here is a no-op. nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

#: Set to `gloo` to run several processes on one GPU (nccl refuses two ranks on one device).
BACKEND_ENV = "SAGAN_DIST_BACKEND"
#: Rank 0 evaluates alone (--eval-every) while the others wait at the next collective: allow for it.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job, and the device its collectives' tensors live on."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun describes (if any); pins each rank to its GPU.

    On CUDA the group has a backend for both devices ("cpu:gloo,cuda:nccl"), so a collective on
    a CPU tensor works too; sagan's own collectives use tensors on the run's device.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = os.environ.get(BACKEND_ENV) or ("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            store, _, _ = next(dist.rendezvous("env://", rank, world_size))
            store = fresh_namespace(store, rank, world_size)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)
        else:
            dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return Distributed(rank, local_rank, world_size, device)


def fresh_namespace(
    store: dist.Store, rank: int, world_size: int, timeout: timedelta = timedelta(minutes=10), poll_s: float = 0.05
) -> dist.Store:
    """A prefix of `store` that no earlier generation of this job has written to.

    torchrun's agent keeps one TCPStore for the whole job and gives it to the workers of every
    restart (TORCHELASTIC_USE_AGENT_STORE; pytorch/pytorch#135712), so the addresses gloo/nccl
    published before a restart are still there, and a restarted rank can read a dead peer's
    address and fail or hang in connect. TORCHELASTIC_RESTART_COUNT is no cure: it is per agent,
    so nodes disagree after a restart. Instead rank 0 names the round with a fresh token, and
    each other rank learns it is not reading a stale token when rank 0 acknowledges a fresh
    token of its own, filed under the round's name.
    """
    me = uuid.uuid4().hex
    deadline = time.monotonic() + timeout.total_seconds()
    if rank == 0:
        store.set("sagan/round", me)
        pending = set(range(1, world_size))
        while True:
            for r in sorted(pending):
                if store.check([f"sagan/{me}/rank{r}"]):
                    store.set(f"sagan/ack/{store.get(f'sagan/{me}/rank{r}').decode()}", me)
                    pending.discard(r)
            if not pending:
                return dist.PrefixStore(f"sagan/{me}/", store)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"ranks {sorted(pending)} did not join within {timeout}; check that every node started"
                )
            time.sleep(poll_s)
    joined = None
    while True:
        if store.check(["sagan/round"]):
            round_name = store.get("sagan/round").decode()
            if round_name != joined:  # first look, or a newer rank 0 replaced a stale round
                store.set(f"sagan/{round_name}/rank{rank}", me)
                joined = round_name
            if store.check([f"sagan/ack/{me}"]):
                return dist.PrefixStore(f"sagan/{store.get(f'sagan/ack/{me}').decode()}/", store)
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank 0 did not start within {timeout}; check that every node started")
        time.sleep(poll_s)


@contextmanager
def process_group(device: torch.device) -> Iterator[Distributed]:
    """init_distributed for the span of a with-block, then destroy the group if this block made it.

    A process that exits with a live gloo group can abort in its destructor ("terminate called
    without an active exception") while its worker threads still hold tensors, so the owner of
    the group destroys it on every way out: return, exception, or a stop signal.
    """
    owned = not (dist.is_available() and dist.is_initialized())
    ctx = init_distributed(device)
    try:
        yield ctx
    finally:
        if owned and ctx.enabled and dist.is_initialized():
            dist.destroy_process_group()


def restart_count() -> int:
    """How many times torchrun's elastic agent has restarted this job (0 outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def any_rank(flag: bool | torch.Tensor, ctx: Distributed) -> bool:
    """True on every rank if it is True on any rank (a stop request that reached one process, a NaN).

    A collective: every rank must call it at the same point. The tensor lives on the run's device,
    which is what a GPU backend (nccl) requires.
    """
    t = torch.as_tensor(flag, device=ctx.device).to(torch.int32).reshape(1)
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose batch statistics span every rank, for CPU (gloo) runs.

    torch.nn.SyncBatchNorm refuses CPU tensors; this computes the same statistics with an
    autograd-aware all-reduce of per-channel [sum, sum of squares, count]. Outside training or a
    process group it is plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        count = torch.tensor([x.numel() / c], dtype=torch.float32, device=x.device)
        stats = dist_fn.all_reduce(torch.cat([xf.sum((0, 2, 3)), xf.square().sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean.square()).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_((var * n / (n - 1).clamp_min(1)).detach(), self.momentum)
        out = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(x.dtype)


def synchronise_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Make every BatchNorm2d below module compute its statistics over all ranks.

    torch's SyncBatchNorm where it runs (CUDA tensors over nccl); elsewhere (CPU, or gloo over CUDA
    tensors) an all-reduce BN that computes the same statistics.
    """
    if device_type == "cuda" and "nccl" in str(dist.get_backend()):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = CrossRankBatchNorm2d(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
                device=child.running_mean.device,
            )  # where the module already lives
            synced.load_state_dict(child.state_dict())
            setattr(module, name, synced)
        else:
            synchronise_batchnorm(child, device_type)
    return module
