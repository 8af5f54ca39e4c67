"""The torchrun environment in one small object, and process-group set-up (gloo on CPU, NCCL on GPU).

torch is imported inside the functions that need it: the logger reads :class:`DistInfo`, and commands that never
touch a model (``microgpt tokenizer ...``, ``microgpt data ...``) should not pay torch's ~1 s import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from microgpt.common.errors import MicrogptError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly) distributed run.

    Attributes:
        rank: Global rank, 0 … world_size-1.
        local_rank: Rank on this node (the GPU index).
        world_size: Number of processes in the run.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes (rank 0)."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when torchrun started more than one process."""
        return self.world_size > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DistInfo:
        """Read ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` as torchrun sets them (defaults: one process).

        Raises:
            MicrogptError: When a variable is not an integer or the values are inconsistent.
        """
        env = os.environ if env is None else env
        values = {}
        for name, default in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)):
            raw = env.get(name)
            try:
                values[name] = default if raw in (None, "") else int(raw)
            except ValueError:
                raise MicrogptError(f"environment variable {name}={raw!r} is not an integer") from None
        info = cls(rank=values["RANK"], local_rank=values["LOCAL_RANK"], world_size=values["WORLD_SIZE"])
        if info.world_size < 1 or not 0 <= info.rank < info.world_size or info.local_rank < 0:
            raise MicrogptError(
                f"inconsistent torchrun environment: RANK={info.rank}, LOCAL_RANK={info.local_rank}, "
                f"WORLD_SIZE={info.world_size}"
            )
        return info


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group when running under torchrun with more than one process (no-op otherwise).

    The backend is NCCL for CUDA devices and gloo for everything else.
    """
    import torch
    import torch.distributed as torch_dist

    if not info.is_distributed or torch_dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch_dist.init_process_group(backend=backend, timeout=timedelta(minutes=10))


def destroy_distributed() -> None:
    """Leave the process group if one was joined."""
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
