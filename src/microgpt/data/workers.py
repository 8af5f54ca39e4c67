"""Tokenizer worker processes for prepare: each gets the tokenizer once; only text and ids cross over.

Groups of documents go out in order and their ids come back in the same order (so the shards do not depend on
the number of workers), with at most ``2 × workers`` groups in flight to bound memory.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from microgpt.common.processes import process_context, start_method
from microgpt.data.config import Split

if TYPE_CHECKING:
    from microgpt.data.prepare import PrepareStats

Group = list[tuple[Split, int, str]]  # (split, index of the document in its split, text)
Encoded = tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64], float]  # (ids, ids per document, encode seconds)
Absorb = Callable[[Group, npt.NDArray[np.uint32], npt.NDArray[np.int64]], None]


class TokenizerLike(Protocol):
    """What prepare needs from a tokenizer (``microgpt.tokenizer.Tokenizer`` has it)."""

    @property
    def name(self) -> str:
        """Tokenizer name."""

    @property
    def fingerprint(self) -> str:
        """Identity hash."""

    @property
    def n_vocab(self) -> int:
        """Vocabulary size."""

    @property
    def eot_token(self) -> int:
        """The ``<|endoftext|>`` id."""

    def encode_ordinary(self, text: str, /) -> list[int]:
        """Ids of ``text`` with special-token text treated as ordinary text."""

    def save(self, directory: Path, /) -> object:
        """Write the tokenizer to ``directory``."""


_worker_tokenizer: Any = None  # set in the parent just before forking, or loaded by each spawned worker


def _worker_init(tokenizer_dir: str, fingerprint: str) -> None:
    """Give each worker the tokenizer once: inherited through fork, else loaded from the saved folder."""
    global _worker_tokenizer
    if _worker_tokenizer is not None and _worker_tokenizer.fingerprint == fingerprint:
        return
    from microgpt.tokenizer.tokenizer import Tokenizer

    _worker_tokenizer = Tokenizer.from_directory(tokenizer_dir)


def _worker_ready() -> None:
    """A no-op task: submitting it starts the worker processes."""


@contextmanager
def worker_pool(workers: int, tokenizer: TokenizerLike, tokenizer_dir: Path) -> Iterator[ProcessPoolExecutor]:
    """Start ``workers`` tokenizer processes before any document is read.

    Fork where the platform has it: a spawned worker re-imports ``__main__`` and microgpt (torch comes in through
    the logger, ~1-3 s per worker) and parses the vocabulary again, while a forked one shares the parent's
    tokenizer. The pool starts before the source threads exist, so nothing is forked mid-lock; spawn (macOS,
    Windows) loads the tokenizer from ``tokenizer_dir``.
    """
    global _worker_tokenizer
    method = start_method()
    if method == "spawn":
        tokenizer.save(tokenizer_dir)
    _worker_tokenizer = tokenizer
    try:
        pool = ProcessPoolExecutor(
            workers,
            mp_context=process_context(),
            initializer=_worker_init,
            initargs=(str(tokenizer_dir), tokenizer.fingerprint),
        )
        with pool:
            for future in [pool.submit(_worker_ready) for _ in range(workers)]:
                future.result()
            yield pool
    finally:
        _worker_tokenizer = None


def _encode_group(texts: list[str]) -> Encoded:
    """Encode documents in a worker: (all ids concatenated, ids per document, seconds spent encoding)."""
    return encode_with(_worker_tokenizer, texts)


def encode_with(tokenizer: TokenizerLike, texts: list[str]) -> Encoded:
    """Encode documents as ``[eot, ids...]`` each: (all ids concatenated, ids per document, seconds encoding)."""
    start = time.perf_counter()
    # Each document's list of Python ints (~36 bytes/id) becomes a uint32 array at once, so a group never holds
    # more than one document's list.
    arrays = [np.asarray(tokenizer.encode_ordinary(text), dtype=np.uint32) for text in texts]
    lengths = np.fromiter((a.size + 1 for a in arrays), dtype=np.int64, count=len(arrays))
    flat = np.empty(int(lengths.sum()), dtype=np.uint32)  # (sum of lengths,): [eot, doc 0..., eot, doc 1...]
    position = 0
    for array in arrays:
        flat[position] = tokenizer.eot_token
        flat[position + 1 : position + 1 + array.size] = array
        position += array.size + 1
    return flat, lengths, time.perf_counter() - start


def run_pool(
    groups: Iterator[Group], pool: ProcessPoolExecutor, workers: int, stats: PrepareStats, absorb: Absorb
) -> None:
    """Keep ``2 × workers`` groups in flight; absorb results in submission order (the output is deterministic)."""
    pending: deque[tuple[Group, Future[Encoded]]] = deque()

    def drain_one() -> None:
        group, future = pending.popleft()
        start = time.perf_counter()
        flat, lengths, seconds = future.result()
        stats.wait_s += time.perf_counter() - start
        stats.encode_s += seconds
        absorb(group, flat, lengths)

    for group in groups:
        pending.append((group, pool.submit(_encode_group, [text for _, _, text in group])))
        if len(pending) >= 2 * workers:
            drain_one()
    while pending:
        drain_one()
