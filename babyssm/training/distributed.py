"""The ranks of a run: every collective the training loop makes, in one place.

Symbols: W world size (DDP processes), P trainable entries of a stage.

DDP: launched by torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment), gloo on
CPU, NCCL on CUDA. Each rank draws its own windows; after backward ``sync_grads``
averages the gradients of the trainable parameters with one all-reduce of a flat
buffer. The models are small, and the DDP wrapper would only hook ``forward``, while
training calls ``stage_loss`` and the trainable set changes per stage. Rank 0
(``lead``) evaluates and writes every file.

A decision that stops or ends a run must be the same on every rank: a rank that went on
alone would wait forever in its next collective. So the non-finite check of a step is
an all-reduce (``any_rank``), a verdict made on one rank reaches all (``agree``), and a
time budget runs on rank 0's clock (``lead_clock``).

Outside torchrun the world is one process, every method returns its input and nothing
touches ``torch.distributed``:

    >>> ranks = Ranks("cpu")
    >>> ranks.world, ranks.rank, ranks.lead
    (1, 0, True)
    >>> ranks.agree("loss is nan")
    'loss is nan'

tests/test_ddp.py runs the collectives with two gloo processes.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from babyssm.errors import check_device


class Ranks:
    """Rank, world size and device of this process, and the collectives between ranks."""

    def __init__(self, device: str):
        self.owns_group = not dist.is_initialized()  # a caller may have set up the group itself
        self.world = int(os.environ.get("WORLD_SIZE", "1")) if self.owns_group else dist.get_world_size()
        self.rank = int(os.environ.get("RANK", "0")) if self.owns_group else dist.get_rank()
        self.lead = self.rank == 0
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        check_device(device)
        if device.startswith("cuda") and self.world > 1:
            device = f"cuda:{local_rank}"
        self.device = torch.device(device)
        self.owns_group = self.owns_group and self.world > 1
        if self.owns_group:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a checkpoint holds each rank's RNG state)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_weights(self, model: torch.nn.Module) -> None:
        """Rank 0's weights on every rank, so that a fresh run starts from one model."""
        if self.world > 1:
            for t in model.state_dict().values():
                dist.broadcast(t, 0)

    def sync_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Average gradients over ranks with one all-reduce (an unused parameter counts as 0)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])  # (P,): all trainable entries
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p)  # (P,) slice -> parameter shape
            offset += p.numel()

    def total(self, count: int) -> int:
        """``count`` summed over ranks (words per step: the budget counts all ranks')."""
        if self.world == 1:
            return count
        t = torch.tensor([count], dtype=torch.int64, device=self.device)
        dist.all_reduce(t)
        return int(t)

    def mean(self, value: torch.Tensor) -> float:
        """``value`` averaged over ranks (the loss, for the log)."""
        value = value.float()
        if self.world > 1:
            dist.all_reduce(value)
            value /= self.world
        return float(value)

    def any_rank(self, flags: torch.Tensor) -> torch.Tensor:
        """Element-wise maximum over ranks of 0/1 ``flags``: set where any rank set it."""
        if self.world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return flags

    def agree(self, bad: str | None) -> str | None:
        """Every rank's verdict (None: all is well) -> the first rank's problem, on every rank.

        A check that fails on one rank only (rank 0's dev evaluation, a local weight) must
        stop them all.
        """
        if self.world == 1:
            return bad
        return next((b for b in self.all_gather(bad) if b is not None), None)

    def lead_clock(self, seconds: float) -> float:
        """Rank 0's ``seconds`` on every rank, so that all stop at the same step on a time budget."""
        if self.world == 1:
            return seconds
        t = torch.tensor([seconds], dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return float(t)
