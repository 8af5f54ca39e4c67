"""Batches of ``(x, y)`` token windows from memory-mapped shards, for one rank of many, resumable exactly.

A split is one long token sequence (its shards end to end). Window ``i`` is tokens ``[i*T, i*T + T + 1)``: ``x`` is
the first ``T``, ``y`` the last ``T`` (shifted by one). Windows never overlap, so an epoch sees each token once
as a target; a window may span two shards but never another split (each split has its own shards).

Each epoch orders *all* the windows (a permutation seeded by ``(seed, epoch)``, or in order) — one global order,
whatever the number of ranks — and cuts it to a multiple of ``global_batch`` (the windows of one optimizer step
across all ranks). Micro-step ``k`` of the epoch takes the next ``batch_size × world_size`` windows of that order,
and rank ``r`` the ``r``-th run of ``batch_size`` among them. So optimizer step ``s`` always trains on windows
``order[s·G, (s+1)·G)`` however ``G`` is split into ranks and micro-steps: one process, two, or eight with
accumulation see the same batches (the step-1 loss matches), and a run saved on N processes resumes on M. Ranks
are disjoint, together cover the epoch, and have the same number of batches (DDP and FSDP need lockstep). The
position is ``(epoch, window)`` — windows of the epoch consumed by all ranks together — so
:meth:`TokenLoader.state_dict` is two integers plus checks, and a resumed loader yields exactly the batch an
uninterrupted one would have.

On CUDA a background thread assembles the next batches (pinned, then copied with ``non_blocking``) so the step
never waits on disk. On CPU the default is no thread: a batch takes ~0.3 ms to assemble from the page cache,
and the thread's GIL and core contention made a tens-of-ms CPU step ~10% slower in
``benchmarks/bench_data_loader.py`` (see benchmarks/README.md); pass ``prefetch`` to choose.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from microgpt.common.errors import MicrogptError
from microgpt.data.config import Split
from microgpt.data.manifest import Manifest
from microgpt.data.shards import open_shard

STATE_VERSION = 2  # 1: per-rank (epoch, batch) over a world-size-dependent order
Batch = tuple[torch.Tensor, torch.Tensor]
_Item = tuple[int, int, torch.Tensor, torch.Tensor]  # (epoch, batch, x, y)


class TokenLoader:
    """Iterate ``(x, y)`` int64 batches of shape ``(B, T)`` forever (epoch after epoch); see the module docstring.

    Args:
        data_dir: A folder written by :func:`~microgpt.data.prepare.prepare_data`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        batch_size: ``B``, sequences per batch on this rank.
        block_size: ``T``, tokens per sequence.
        rank: This process's rank.
        world_size: Number of ranks.
        shuffle: Seeded random window order per epoch (else in order).
        seed: Seed of the order.
        global_batch: Windows per optimizer step over all ranks (a multiple of ``batch_size × world_size``; default
            exactly that). Epochs are cut to a multiple of it, so the order of steps is the same at any world size.
        device: Where batches go.
        prefetch: Batches assembled ahead in a background thread (0: none; None: 2 on CUDA, 0 elsewhere).

    Raises:
        MicrogptError: When the folder is not prepared, a shard is corrupt, or the split is too small for one window
            per rank.

    >>> loader = TokenLoader("data/tiny", "train", batch_size=8, block_size=64)  # doctest: +SKIP
    >>> x, y = next(loader)  # (8, 64) each; y[:, :-1] == x[:, 1:]  # doctest: +SKIP
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: Split,
        batch_size: int,
        block_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        global_batch: int | None = None,
        device: torch.device | str = "cpu",
        prefetch: int | None = None,
    ) -> None:
        """Open the split's shards (memory-mapped; nothing is read yet)."""
        if batch_size < 1 or block_size < 1:
            raise MicrogptError(f"batch_size and block_size must be positive, got {batch_size} and {block_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise MicrogptError(f"rank {rank} is not in 0..{world_size - 1}")
        self.data_dir = Path(data_dir)
        self.manifest = Manifest.load(self.data_dir)
        self.split, self.batch_size, self.block_size = split, batch_size, block_size
        self.rank, self.world_size, self.shuffle, self.seed = rank, world_size, shuffle, seed
        self.device = torch.device(device)
        self.prefetch = prefetch if prefetch is not None else (2 if self.device.type == "cuda" else 0)
        self._shards = [open_shard(path) for path in self.manifest.shard_paths(self.data_dir, split)]
        for shard, info in zip(self._shards, self.manifest.split(split).shards, strict=True):
            if shard.size != info.tokens:
                raise MicrogptError(f"{self.data_dir / info.file}: {shard.size} tokens, manifest says {info.tokens}")
        self._offsets = np.cumsum([0] + [shard.size for shard in self._shards])  # (n_shards + 1,)
        self.tokens = int(self._offsets[-1])
        n_windows = max(self.tokens - 1, 0) // block_size
        self.windows_per_rank = n_windows // world_size
        if self.windows_per_rank == 0:
            raise MicrogptError(
                f"{self.data_dir}: the {split} split has {self.tokens:,} tokens, too few for one window of "
                f"{block_size + 1} tokens per rank ({world_size} ranks); lower block_size or add data"
            )
        self.n_windows = n_windows
        self.unit = batch_size * world_size  # windows of one micro-step, all ranks together
        self.global_batch = global_batch if global_batch is not None else self.unit
        if self.global_batch < 1 or self.global_batch % self.unit != 0:
            raise MicrogptError(
                f"global_batch={self.global_batch} is not a multiple of batch_size × world_size = {self.unit}"
            )
        # Whole optimizer steps only: an epoch cut that depended on the micro-step would shift later steps.
        self.windows_per_epoch = n_windows // self.global_batch * self.global_batch
        self.batches_per_epoch = self.windows_per_epoch // self.unit  # this rank's micro-batches per epoch
        self.epoch, self.batch = 0, 0  # position of the next batch to yield (batch counts this rank's batches)
        self._order_epoch, self._order = -1, np.empty(0, dtype=np.int64)
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue[_Item | BaseException] = queue.Queue(maxsize=max(self.prefetch, 1))
        self._stop = threading.Event()

    # ---- windows ---------------------------------------------------------------------------------------------

    def _epoch_order(self, epoch: int) -> npt.NDArray[np.int64]:
        """The global window order of ``epoch`` (the same on every rank at any world size; cached)."""
        if self._order_epoch != epoch:
            if self.shuffle:  # a permutation of every full window, seeded by (seed, epoch) alone
                order = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            else:
                order = np.arange(self.n_windows, dtype=np.int64)
            self._order, self._order_epoch = order, epoch
        return self._order

    def _read(self, start: int, out: npt.NDArray[np.int64]) -> None:
        """Copy tokens ``[start, start + len(out))`` of the split into ``out``, across shard ends if needed."""
        filled = 0
        shard = int(np.searchsorted(self._offsets, start, side="right")) - 1
        while filled < out.size:
            local = start + filled - int(self._offsets[shard])
            piece = self._shards[shard][local : local + out.size - filled]
            out[filled : filled + piece.size] = piece
            filled += piece.size
            shard += 1

    def _assemble(self, windows: npt.NDArray[np.int64]) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.block_size
        rows = np.empty((windows.size, T + 1), dtype=np.int64)  # (B, T + 1)
        for row, window in zip(rows, windows, strict=True):
            self._read(int(window) * T, row)
        x = torch.from_numpy(rows[:, :-1].copy())  # (B, T), contiguous for .view() in the loss
        y = torch.from_numpy(rows[:, 1:].copy())  # (B, T)
        if self.device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        if self.device.type == "cpu":
            return x, y
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _make(self, epoch: int, batch: int) -> _Item:
        B = self.batch_size
        start = batch * self.unit + self.rank * B  # micro-step `batch` of the epoch, this rank's run of B windows
        windows = self._epoch_order(epoch)[start : start + B]
        return (epoch, batch, *self._assemble(windows))

    # ---- iteration -------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        """The loader is its own iterator."""
        return self

    def __next__(self) -> Batch:
        """Return the next training batch ``(x, y)``; epochs roll over without end."""
        if self.batches_per_epoch == 0:
            raise MicrogptError(
                f"the {self.split} split has {self.n_windows} windows of {self.block_size} tokens, fewer than one "
                f"global batch of {self.global_batch}: lower the batch size or block_size, or add data"
            )
        if self.prefetch <= 0:
            epoch, batch, x, y = self._make(self.epoch, self.batch)
        else:
            if self._thread is None:
                self._start()
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._thread = None
                raise item
            epoch, batch, x, y = item
        assert (epoch, batch) == (self.epoch, self.batch), "prefetch thread is out of step"
        self.epoch, self.batch = self._advance(epoch, batch)
        return self._to_device(x, y)

    def _advance(self, epoch: int, batch: int) -> tuple[int, int]:
        return (epoch + 1, 0) if batch + 1 >= self.batches_per_epoch else (epoch, batch + 1)

    def _start(self) -> None:
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.prefetch)
        thread = threading.Thread(target=self._produce, args=(self.epoch, self.batch), daemon=True)
        thread.name = f"TokenLoader-{self.split}"
        thread.start()
        self._thread = thread

    def _produce(self, epoch: int, batch: int) -> None:
        # While this thread runs it is the only user of the window-order cache (eval_batches does not use it).
        while not self._stop.is_set():
            item: _Item | BaseException
            try:
                item = self._make(epoch, batch)
            except BaseException as error:  # hand it to the consumer, which would otherwise wait forever
                item = error
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
            epoch, batch = self._advance(epoch, batch)

    def close(self) -> None:
        """Stop the prefetch thread (it restarts on the next batch)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __del__(self) -> None:
        """Stop the thread when the loader is dropped."""
        if getattr(self, "_thread", None) is not None:
            self.close()

    # ---- resume ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Position of the next batch plus what must match on resume (JSON-able; the same on every rank).

        ``window`` counts the windows of the epoch that all ranks together have consumed; it does not depend on
        the world size, so a state saved by N ranks loads into M (any split of the same ``global_batch``).
        """
        return {
            "version": STATE_VERSION,
            "split": self.split,
            "epoch": self.epoch,
            "window": self.batch * self.unit,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "global_batch": self.global_batch,
            "block_size": self.block_size,
            "tokens": self.tokens,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` so the next batch is the one an uninterrupted run would have seen.

        Raises:
            MicrogptError: When the state is from another split, global batch, order or data, from an older
                microgpt (version 1: its order depended on the world size), or not at a micro-step boundary.
        """
        if state.get("version") == 1:
            raise MicrogptError(
                f"cannot resume the {self.split} loader: its state is from an older microgpt whose data order "
                "depended on the number of processes (loader state version 1); finish that run with the older "
                "version, or start a new run in another out_dir"
            )
        mine = self.state_dict()
        for key in ("version", "split", "seed", "shuffle", "global_batch", "block_size", "tokens"):
            if state.get(key) != mine[key]:
                raise MicrogptError(
                    f"cannot resume the {self.split} loader: saved {key}={state.get(key)!r}, now {mine[key]!r}"
                )
        epoch, window = state.get("epoch"), state.get("window")
        if not isinstance(epoch, int) or not isinstance(window, int) or epoch < 0:
            raise MicrogptError(f"cannot resume the {self.split} loader: bad position epoch={epoch} window={window}")
        if window % self.unit or not 0 <= window < max(self.windows_per_epoch, 1):
            raise MicrogptError(
                f"cannot resume the {self.split} loader at window {window} of epoch {epoch}: not a step of "
                f"batch_size × world_size = {self.unit} windows inside the epoch's {self.windows_per_epoch}"
            )
        self.close()
        self.epoch, self.batch = epoch, window // self.unit

    # ---- evaluation ------------------------------------------------------------------------------------------

    def eval_batches(self, max_batches: int | None = None, *, pad: bool = False) -> Iterator[Batch]:
        """Iterate this rank's windows of the split in order (for validation/test), ignoring training position.

        Every rank gets the same number of batches; the last batch may hold fewer than ``batch_size`` rows, unless
        ``pad``: then it is filled up to ``batch_size`` with rows whose targets are all ``-1`` (the loss's
        ``ignore_index``), so every batch has one shape and a compiled model is not recompiled for the last one.
        Count targets with ``(y != -1).sum()``, not ``y.numel()``, when padding.

        Args:
            max_batches: Stop after this many batches (None: the whole split).
            pad: Pad the last batch to ``batch_size`` rows of ignored targets.
        """
        windows = np.arange(self.windows_per_rank * self.world_size, dtype=np.int64)[self.rank :: self.world_size]
        count = 0
        for start in range(0, windows.size, self.batch_size):
            if max_batches is not None and count >= max_batches:
                return
            x, y = self._assemble(windows[start : start + self.batch_size])
            missing = self.batch_size - x.size(0)
            if pad and missing > 0:
                x = torch.cat([x, x[:1].expand(missing, -1)])  # (batch_size, T): any valid tokens will do
                y = torch.cat([y, torch.full((missing, y.size(1)), -1, dtype=y.dtype)])  # ignored targets
            yield self._to_device(x, y)
            count += 1
