"""The torchrun environment in one small object, and process-group set-up (gloo on CPU, NCCL on GPU).

Collectives time out after ``MICROGPT_DIST_TIMEOUT`` seconds (default 600). Work only rank 0 does — preparing a
corpus of gigabytes can take an hour — runs through :func:`run_on_main`: the other ranks wait on the process
group's key-value store with no timeout instead of sitting in a barrier that would expire (the NCCL watchdog only
watches collectives). :func:`check_shared_dir` refuses a multi-node run whose ranks do not share ``out_dir``.

torch is imported inside the functions that need it: the logger reads :class:`DistInfo`, and commands that never
touch a model (``microgpt tokenizer ...``, ``microgpt data ...``) should not pay torch's ~1 s import.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from microgpt.common.errors import MicrogptError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

TIMEOUT_ENV = "MICROGPT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
# How long ranks wait for rank 0's own work: "no timeout" in practice (store waits need a finite duration).
# If rank 0 fails with an exception it tells them at once; if its process dies, torchrun stops the job.
MAIN_WORK_WAIT = timedelta(days=7)
_SHARED_MARKER = ".microgpt-rank0"
_calls = 0  # run_on_main calls so far; every rank makes the same calls in the same order, so keys match


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


def collective_timeout(env: Mapping[str, str] | None = None) -> timedelta:
    """The process group's timeout for collectives: ``MICROGPT_DIST_TIMEOUT`` seconds, default 600.

    Raises:
        MicrogptError: When the variable is not a positive number.
    """
    env = os.environ if env is None else env
    raw = env.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise MicrogptError(f"environment variable {TIMEOUT_ENV}={raw!r} must be a positive number of seconds")
    return timedelta(seconds=seconds)


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group when running under torchrun with more than one process (no-op otherwise).

    The backend is NCCL for CUDA devices (bound to this rank's GPU with ``device_id``, which lets NCCL set up its
    communicator eagerly and skips a guess from the rank) and gloo for everything else.
    """
    import torch
    import torch.distributed as torch_dist

    if not info.is_distributed or torch_dist.is_initialized():
        return
    timeout = collective_timeout()
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch_dist.init_process_group(backend="nccl", timeout=timeout, device_id=device)
    else:
        torch_dist.init_process_group(backend="gloo", timeout=timeout)


@contextmanager
def process_group(info: DistInfo, device: torch.device) -> Iterator[None]:
    """Join the process group for the block (:func:`init_distributed`) and leave it after, if this block joined it.

    A caller inside another's process group (the pipeline's steps, a trainer under ``run_pretraining``) leaves it
    to the outermost one.
    """
    import torch.distributed as torch_dist

    joined = info.is_distributed and not torch_dist.is_initialized()
    init_distributed(info, device)
    try:
        yield
    finally:
        if joined:
            destroy_distributed()


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


def _store() -> Any:
    """The default process group's key-value store (the TCPStore torchrun's rendezvous made)."""
    import torch.distributed as torch_dist

    return torch_dist.distributed_c10d._get_default_store()


def run_on_main(what: str, work: Callable[[], T]) -> T | None:
    """Run ``work`` on rank 0 while the other ranks wait for it without a collective timeout.

    A barrier would kill the job when rank 0's work (tokenizing a large corpus, say) outlasts the process group's
    timeout. Here the waiting ranks block on a key of the process group's store instead, which rank 0 sets when
    ``work`` returns — or sets to its error message when it raises, so every rank stops with the same one line.
    In a single process this is just ``work()``. Every rank must call it, in the same order, after
    :func:`init_distributed`.

    Args:
        what: What rank 0 is doing, for the error message (``"preparing the data"``).
        work: The work; its result stays on rank 0 (share it through the file system).

    Returns:
        ``work()``'s result on rank 0; None on the other ranks.

    Raises:
        MicrogptError: On the waiting ranks, when rank 0's work failed. Rank 0 re-raises its own error.

    >>> tokenizer = run_on_main("preparing the data", lambda: prepare(config))  # doctest: +SKIP
    """
    import torch.distributed as torch_dist

    global _calls
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        # Under torchrun without a process group every rank would do rank 0's work (and race on its files).
        assert not DistInfo.from_env().is_distributed, "run_on_main needs init_distributed first under torchrun"
        return work()
    if torch_dist.get_world_size() == 1:
        return work()
    _calls += 1
    key = f"microgpt/run_on_main/{_calls}"
    store = _store()
    if torch_dist.get_rank() == 0:
        try:
            result = work()
        except BaseException as error:
            text = str(error).splitlines()[0] if str(error) else type(error).__name__
            store.set(key, f"error:{text}")
            raise
        store.set(key, "ok")
        return result
    store.wait([key], MAIN_WORK_WAIT)
    answer = store.get(key).decode()
    if answer.startswith("error:"):
        raise MicrogptError(f"rank 0 failed while {what}: {answer.removeprefix('error:')}")
    return None


def spread_over_ranks(what: str, works: Sequence[Callable[[], object]]) -> None:
    """Run independent ``works`` spread over the ranks (work ``i`` on rank ``i mod world size``), then wait for all.

    As in :func:`run_on_main`, the ranks wait on the process group's store, not in a collective, so uneven work does
    not hit the collective timeout; a failure on any rank stops every rank with its one line. Results travel through
    the file system. In a single process the works simply run in order. Every rank must call it with the same list.

    Raises:
        MicrogptError: On every rank but the failing one, when a work failed; that rank re-raises its own error.
    """
    import torch.distributed as torch_dist

    global _calls
    if not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_world_size() == 1:
        for work in works:
            work()
        return
    _calls += 1
    base, store = f"microgpt/spread/{_calls}", _store()
    rank, world = torch_dist.get_rank(), torch_dist.get_world_size()
    mine = list(range(rank, len(works), world))
    for position, index in enumerate(mine):
        try:
            works[index]()
        except BaseException as error:
            text = str(error).splitlines()[0] if str(error) else type(error).__name__
            for left in mine[position:]:  # nobody waits forever for the works this rank will not do
                store.set(f"{base}/{left}", f"error:{text}")
            raise
        store.set(f"{base}/{index}", "ok")
    keys = [f"{base}/{index}" for index in range(len(works))]
    if keys:
        store.wait(keys, MAIN_WORK_WAIT)
    for index, key in enumerate(keys):
        answer = store.get(key).decode()
        if answer.startswith("error:"):
            raise MicrogptError(f"rank {index % world} failed while {what}: {answer.removeprefix('error:')}")


def broadcast_object(value: T) -> T:
    """Return rank 0's ``value`` on every rank (unchanged in a single process); every rank must call it."""
    import torch.distributed as torch_dist

    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return value
    box: list[Any] = [value]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[no-any-return]  # rank 0 sent a T


def check_shared_dir(path: Path) -> None:
    """Refuse a run whose ranks do not see one shared ``path`` (every node must mount the same ``out_dir``).

    Rank 0 writes a random token into ``path``; each rank reads it back from its own ``path``. A rank on another
    node with a local disk (or given another ``out_dir``) would otherwise train on data and resume from
    checkpoints that rank 0 never wrote. No-op in a single process; every rank must call it.

    Raises:
        MicrogptError: On every rank, naming the ranks that do not see rank 0's folder.
    """
    import torch.distributed as torch_dist

    if not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_world_size() == 1:
        return
    from microgpt.common.atomic import atomic_write_text

    marker = Path(path) / _SHARED_MARKER
    token = ""
    if torch_dist.get_rank() == 0:
        token = secrets.token_hex(16)
        Path(path).mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, token)
    token, main_dir = broadcast_object((token, str(Path(path).resolve())))
    try:
        seen = marker.read_text(encoding="utf-8")
    except OSError:
        seen = ""
    mine = "" if seen == token else str(Path(path).resolve())
    everyone: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(everyone, mine)
    strangers = [(rank, where) for rank, where in enumerate(everyone) if where]
    if strangers:
        rank, where = strangers[0]
        others = f" (and {len(strangers) - 1} more rank(s))" if len(strangers) > 1 else ""
        raise MicrogptError(
            f"out_dir is not one folder shared by all ranks: rank {rank} sees {where}, which lacks rank 0's "
            f"{main_dir}{others}; on several nodes put out_dir on a shared file system"
        )
