"""Counting the distinct chunks of a training corpus, in bounded memory, on a few worker processes.

Split every document with the pattern and count each distinct chunk: memory grows with the number of distinct
chunks, not with the corpus. Counts are sums, so the result does not depend on the number of workers.

Bounded memory on any corpus size: documents are read once, lazily, and go to the counting workers in batches
of about ``BLOCK_BYTES``, with at most two batches per worker in flight; a long document (a whole file) is cut
where the known patterns always end a chunk (:func:`~microgpt.tokenizer.corpus.cut_document`), so counting the
pieces gives exactly the counts of the whole. With numba (the default), counting runs as compiled kernels over
flat arrays (:class:`ChunkTable`, :mod:`microgpt.tokenizer.count_kernels`; ~50 bytes per distinct chunk instead
of ~200 for a Python dict entry), and the memory grows with the number of distinct chunks only. Past
``MAX_CHUNKS`` distinct chunks (more than any natural-language corpus of a few GB holds) the table is pruned: the
chunks seen least often so far are dropped until at most half the cap remain (:meth:`ChunkTable.prune`), so the
memory stays bounded even on endless streams of unique strings (hashes, base64); below the cap nothing is dropped
and the result is exact. Without numba, :func:`count_chunks` counts into a ``Counter``.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.pool import AsyncResult
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from microgpt.common.errors import MicrogptError
from microgpt.common.kernels import kernels_enabled
from microgpt.common.log import get_logger
from microgpt.common.processes import process_context
from microgpt.tokenizer.corpus import BATCH_CHARS, cut_document, utf8_bytes
from microgpt.tokenizer.patterns import PATTERN_KINDS, class_table, compile_pattern, pattern_name

log = get_logger(__name__)

BLOCK_BYTES = 1 << 20  # the size of a batch for the compiled counter, in UTF-8 bytes
MAX_CHUNKS = 1 << 23  # distinct chunks kept while counting; past it the rarest are pruned (ChunkTable.prune)
IN_FLIGHT_PER_WORKER = 2  # batches queued or being counted per worker: bounds the memory of what was read

T = TypeVar("T")
R = TypeVar("R")


def _bounded_map(function: Callable[[T], R], jobs: Iterable[T], workers: int) -> Iterator[R]:
    """``map(function, jobs)``, in order, on ``workers`` processes, with at most a few jobs read ahead.

    ``Pool.imap`` would read the whole job iterator at once (its feeder thread queues every job), so memory
    would grow with the corpus; here a job is read only when an earlier one is done.
    """
    if workers <= 1:
        yield from map(function, jobs)
        return
    with process_context().Pool(workers) as pool:
        pending: deque[AsyncResult[R]] = deque()
        for job in jobs:
            pending.append(pool.apply_async(function, (job,)))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _batches(documents: Iterable[str], pattern: str) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for doc in documents:
        if not isinstance(doc, str):
            raise MicrogptError(f"training documents must be str, got {type(doc).__name__}")
        for piece in cut_document(doc, pattern):
            batch.append(piece)
            size += len(piece)
            if size >= BATCH_CHARS:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _count_batch(args: tuple[str, list[str]]) -> tuple[Counter[str], int]:
    """Count the chunks of a batch of documents (runs in a worker process)."""
    pattern_text, docs = args
    pattern = compile_pattern(pattern_text)
    counts: Counter[str] = Counter()
    for doc in docs:
        counts.update(pattern.findall(doc))
    return counts, sum(len(doc) for doc in docs)


def count_chunks(documents: Iterable[str], pattern: str, *, workers: int = 1, progress: bool = False) -> Counter[str]:
    """Count the distinct chunks of ``documents`` under the split ``pattern`` (the pure-Python path).

    Args:
        documents: Any iterable of strings (consumed once, lazily).
        pattern: The split regex (already resolved from its name).
        workers: Processes that count batches in parallel (1 = in this process).
        progress: Show a progress bar of characters read.

    Returns:
        Chunk → number of occurrences.
    """
    compile_pattern(pattern)
    total: Counter[str] = Counter()
    jobs = ((pattern, batch) for batch in _batches(documents, pattern))
    with tqdm(desc="count chunks", unit="char", unit_scale=True, disable=not progress) as bar:
        for counts, chars in _bounded_map(_count_batch, jobs, workers):
            total.update(counts)
            bar.update(chars)
    return total


def load_kernels() -> Any:
    """:mod:`microgpt.tokenizer.count_kernels`, or ``None`` without numba or with ``MICROGPT_KERNELS=0``.

    The merge kernels (:mod:`microgpt.tokenizer.merge_kernels`) import whenever these do.
    """
    if not kernels_enabled():
        return None
    try:
        from microgpt.tokenizer import count_kernels
    except ImportError:
        return None
    return count_kernels


class ChunkTable:
    """Distinct chunks (UTF-8 bytes) and their counts in flat numpy arrays, filled by the compiled kernels.

    Grows by doubling; ``len`` is the number of distinct chunks. See :mod:`microgpt.tokenizer.count_kernels`.
    """

    def __init__(self, capacity: int = 1 << 16, blob_bytes: int = 1 << 20) -> None:
        """An empty table with room for ``capacity`` chunks of ``blob_bytes`` bytes in all."""
        self._kernels = load_kernels()
        if self._kernels is None:
            raise MicrogptError("ChunkTable needs numba (and MICROGPT_KERNELS not 0)")
        self.n = 0
        self.used = 0
        self.hashes = np.empty(capacity, np.uint64)
        self.offsets = np.empty(capacity, np.int64)
        self.lengths = np.empty(capacity, np.int64)
        self.counts = np.empty(capacity, np.int64)
        self.blob = np.empty(blob_bytes, np.uint8)
        self.slots = np.full(self._kernels.slots_for(capacity), -1, np.int64)
        self.pruned = 0  # distinct chunks dropped by prune()

    def __len__(self) -> int:
        """The number of distinct chunks."""
        return self.n

    def _reserve(self, entries: int, blob_bytes: int) -> None:
        """Make room for ``entries`` more chunks of ``blob_bytes`` more bytes."""
        need = self.n + entries
        if need > len(self.counts):
            size = max(need, 2 * len(self.counts))
            for name in ("hashes", "offsets", "lengths", "counts"):
                old = getattr(self, name)
                grown = np.empty(size, old.dtype)
                grown[: self.n] = old[: self.n]
                setattr(self, name, grown)
        if self.used + blob_bytes > len(self.blob):
            grown_blob = np.empty(max(self.used + blob_bytes, 2 * len(self.blob)), np.uint8)
            grown_blob[: self.used] = self.blob[: self.used]
            self.blob = grown_blob
        if 2 * need > len(self.slots):
            self.slots = self._kernels.rehash(self.hashes, self.n, self._kernels.slots_for(need))

    def add(self, blob: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64], counts: npt.NDArray[np.int64]) -> None:
        """Add distinct chunks ``blob[offsets[e]:offsets[e + 1]]`` with their ``counts`` (one batch's table)."""
        self._reserve(len(counts), len(blob))
        self.n, self.used = self._kernels.table_add(
            self.slots, self.hashes, self.offsets, self.lengths, self.counts, self.blob, self.n, self.used,
            blob, offsets, counts,
        )  # fmt: skip

    def add_counter(self, counts: Counter[str]) -> None:
        """Add chunks counted by the pure-Python path (a custom pattern)."""
        data = [utf8_bytes(chunk) for chunk in counts]
        offsets = np.zeros(len(data) + 1, np.int64)
        np.cumsum([len(d) for d in data], out=offsets[1:])
        blob = np.frombuffer(b"".join(data), np.uint8)
        self.add(blob, offsets, np.fromiter(counts.values(), np.int64, len(counts)))

    def prune(self, max_chunks: int) -> None:
        """Past ``max_chunks`` chunks, drop the rarest so far (all of the lowest counts) until at most half remain."""
        if self.n <= max_chunks:
            return
        counts = self.counts[: self.n]
        # The smallest threshold t with at most max_chunks // 2 chunks seen more than t times.
        t = int(np.partition(counts, self.n - max_chunks // 2 - 1)[self.n - max_chunks // 2 - 1])
        keep = counts > t
        before = self.n
        self.hashes, self.offsets, self.lengths, self.counts, self.blob, self.n, self.used = self._kernels.compact(
            self.hashes, self.offsets, self.lengths, self.counts, self.blob, self.n, keep
        )
        self.slots = self._kernels.rehash(self.hashes, self.n, self._kernels.slots_for(len(self.counts)))
        self.pruned += before - self.n
        log.warning(
            "chunk table past %s distinct chunks: dropped the %s seen at most %d times so far",
            f"{max_chunks:,}", f"{before - self.n:,}", t,
        )  # fmt: skip

    def as_counter(self) -> Counter[str]:
        """The table as chunk text → count (for tests and small tables)."""
        blob = self.blob[: self.used].tobytes()
        return Counter(
            {
                blob[o : o + n].decode("utf-8"): int(c)
                for o, n, c in zip(self.offsets[: self.n], self.lengths[: self.n], self.counts[: self.n], strict=True)
            }
        )

    def learn(self, n_merges: int) -> list[bytes]:
        """:func:`~microgpt.tokenizer.merges.learn_vocab` on this table, compiled; frees the hash index first."""
        from microgpt.tokenizer import merge_kernels

        self.slots = self.hashes = np.empty(0, np.int64)
        n_bytes = int(self.lengths[: self.n][self.lengths[: self.n] > 1].sum())
        dtype = np.uint16 if 256 + n_merges <= 1 << 16 else np.int32
        ids = np.empty(n_bytes, dtype)
        starts, freqs = merge_kernels.words_from_table(self.offsets, self.lengths, self.counts, self.blob, self.n, ids)
        self.offsets = self.lengths = self.counts = np.empty(0, np.int64)
        self.blob = np.empty(0, np.uint8)
        blob, offsets = merge_kernels.learn_merges(ids, starts, freqs, n_merges)
        data = blob.tobytes()
        return [data[offsets[t] : offsets[t + 1]] for t in range(len(offsets) - 1)]


def _byte_batches(documents: Iterable[str], pattern: str) -> Iterator[tuple[bytes, npt.NDArray[np.int64], int]]:
    """Batches of about ``BLOCK_BYTES`` of UTF-8: (bytes, where each document starts + the end, characters)."""
    parts: list[bytes] = []
    starts = [0]
    chars = 0
    for doc in documents:
        if not isinstance(doc, str):
            raise MicrogptError(f"training documents must be str, got {type(doc).__name__}")
        for piece in cut_document(doc, pattern):
            data = utf8_bytes(piece)
            parts.append(data)
            starts.append(starts[-1] + len(data))
            chars += len(piece)
            if starts[-1] >= BLOCK_BYTES:
                yield b"".join(parts), np.array(starts, np.int64), chars
                parts, starts, chars = [], [0], 0
    if parts:
        yield b"".join(parts), np.array(starts, np.int64), chars


def _count_block(job: tuple[bytes, npt.NDArray[np.int64], int, int]) -> tuple[Any, Any, Any, int]:
    """One batch's distinct chunks (runs in a worker process)."""
    data, starts, kind, chars = job
    kernels = load_kernels()
    blob, offsets, counts = kernels.count_block(np.frombuffer(data, np.uint8), starts, kind, class_table())
    return blob, offsets, counts, chars


def count_table(
    documents: Iterable[str],
    pattern: str,
    *,
    workers: int = 1,
    progress: bool = False,
    max_chunks: int = MAX_CHUNKS,
) -> ChunkTable:
    """Count the distinct chunks of ``documents`` into a :class:`ChunkTable` (compiled; known patterns only).

    Args:
        documents: Any iterable of strings (consumed once, lazily).
        pattern: The split regex of ``gpt2``, ``gpt4`` or ``o200k``.
        workers: Processes that count batches in parallel (1 = in this process).
        progress: Show a progress bar of characters read.
        max_chunks: Past this many distinct chunks the rarest are pruned (see :meth:`ChunkTable.prune`).

    Returns:
        The table; equal to :func:`count_chunks` as long as nothing was pruned (``table.pruned == 0``).
    """
    name = pattern_name(pattern)
    if name is None:
        raise MicrogptError("count_table needs a known pattern (gpt2, gpt4, o200k); use count_chunks")
    kind = PATTERN_KINDS[name]
    table = ChunkTable()
    table.add(*_count_block((b"a", np.array([0, 1], np.int64), kind, 0))[:3])  # compile before forking workers
    table = ChunkTable()
    jobs = ((data, starts, kind, chars) for data, starts, chars in _byte_batches(documents, pattern))
    with tqdm(desc="count chunks", unit="char", unit_scale=True, disable=not progress) as bar:
        for blob, offsets, counts, chars in _bounded_map(_count_block, jobs, workers):
            table.add(blob, offsets, counts)
            table.prune(max_chunks)
            bar.update(chars)
    return table
