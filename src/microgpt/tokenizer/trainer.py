"""Training a byte-level BPE vocabulary: count distinct chunks, then merge pairs incrementally.

Two phases:

1. **Counting** (:func:`count_chunks`): split every document with the pattern and count each distinct chunk.
   Memory grows with the number of distinct chunks, not with the corpus. Several processes may count batches
   of documents; counts are sums, so the result does not depend on the number of workers.
2. **Merging** (:func:`learn_vocab`): keep the count of every adjacent pair and, per pair, the set of chunks
   that contain it. Each merge updates only the chunks that hold the chosen pair, and only the pairs next to
   each occurrence (as Hugging Face ``tokenizers`` does), and a max-heap with lazy deletion picks the next
   pair — never a full recount.

Bounded memory on any corpus size: documents are read once, lazily, and go to the counting workers in batches
of about ``BLOCK_BYTES``, with at most two batches per worker in flight; a long document (a whole file) is cut
where the known patterns always end a chunk (:func:`cut_document`), so counting the pieces gives exactly the
counts of the whole. With numba (the default), counting and merging run as compiled kernels over flat arrays
(:mod:`microgpt.tokenizer.train_kernels`; ~50 bytes per distinct chunk instead of ~200 for a Python dict entry),
and the memory grows with the number of distinct chunks only. Past ``MAX_CHUNKS`` distinct chunks (more than any
natural-language corpus of a few GB holds) the table is pruned: the chunks seen least often so far are dropped
until at most half the cap remain (:meth:`ChunkTable.prune`), so the memory stays bounded even on endless
streams of unique strings (hashes, base64); below the cap nothing is dropped and the result is exact. A corpus
under ``SMALL_CORPUS_CHARS`` (8 M characters) takes the plain loop: as fast there, and with no compile to wait for.

Tie rule (documented, deterministic): the pair with the highest count wins; among equal counts, the pair
``(left id, right id)`` that sorts first wins.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.pool import AsyncResult
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import regex
from tqdm import tqdm

from microgpt.common.errors import MicrogptError
from microgpt.common.kernels import kernels_enabled
from microgpt.common.log import get_logger
from microgpt.common.processes import process_context
from microgpt.tokenizer.patterns import PATTERN_KINDS, class_table, compile_pattern, pattern_name

log = get_logger(__name__)

BATCH_CHARS = 1 << 20  # documents are sent to counting workers in batches of about this many characters
BLOCK_BYTES = 1 << 20  # the same for the compiled counter, in UTF-8 bytes
MAX_CHUNKS = 1 << 23  # distinct chunks kept while counting; past it the rarest are pruned (ChunkTable.prune)
IN_FLIGHT_PER_WORKER = 2  # batches queued or being counted per worker: bounds the memory of what was read

# Where each known pattern (gpt2, gpt4, o200k) always ends a chunk, whatever comes before or after: after a
# newline between two non-space characters, and before a space between two letters. A match of any alternative
# that holds the newline (or the letter) ends there, and no alternative looks behind, so the chunks of the text
# before and after the cut, counted apart, are exactly the chunks of the whole (tests check it on real text).
SAFE_CUT = regex.compile(r"(?<=\S\n)(?=\S)|(?<=\p{L})(?= \p{L})")

T = TypeVar("T")
R = TypeVar("R")


def _utf8(text: str) -> bytes:
    """UTF-8 bytes of ``text``; lone surrogates become U+FFFD (as tiktoken does before encoding)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


def capped_documents(documents: Iterable[str], max_bytes: int | None) -> Iterator[str]:
    """Yield documents in order until ``max_bytes`` UTF-8 bytes were yielded; the last one is cut to fit."""
    if max_bytes is None:
        yield from documents
        return
    left = max_bytes
    for doc in documents:
        if left <= 0:
            return
        size = len(_utf8(doc)) if not doc.isascii() else len(doc)
        if size > left:
            yield _utf8(doc)[:left].decode("utf-8", errors="ignore")
            return
        left -= size
        yield doc


def cut_document(text: str, pattern: str, size: int = BATCH_CHARS) -> Iterator[str]:
    """Cut ``text`` into pieces of about ``size`` characters or more whose chunks, together, are the text's.

    Only for the known patterns (``SAFE_CUT``); a custom regex, or text without a safe place to cut, stays whole.
    """
    if len(text) <= size or pattern_name(pattern) is None:
        yield text
        return
    start = 0
    while len(text) - start > size:
        cut = SAFE_CUT.search(text, start + size)
        if cut is None:
            break
        yield text[start : cut.start()]
        start = cut.start()
    yield text[start:]


def stream_document(blocks: Iterable[str], pattern: str, size: int = BATCH_CHARS) -> Iterator[str]:
    """One document given as consecutive text ``blocks`` (a file read piece by piece), cut as :func:`cut_document`.

    Holds about ``size`` characters (more only while no safe cut turns up); a custom pattern needs the whole
    document, so it is joined and yielded once.
    """
    if pattern_name(pattern) is None:
        yield "".join(blocks)
        return
    pending: list[str] = []
    held = 0
    searched = 0  # no cut before this offset of the pending text
    for block in blocks:
        pending.append(block)
        held += len(block)
        if held < size:
            continue
        text = "".join(pending)
        cut = SAFE_CUT.search(text, max(searched, size // 2))
        if cut is None:
            pending, searched = [text], max(0, len(text) - 2)
            continue
        yield text[: cut.start()]
        rest = text[cut.start() :]
        pending, held, searched = [rest], len(rest), 0
    if held:
        yield "".join(pending)


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


def _load_kernels() -> Any:
    """:mod:`microgpt.tokenizer.train_kernels`, or ``None`` without numba or with ``MICROGPT_KERNELS=0``."""
    if not kernels_enabled():
        return None
    try:
        from microgpt.tokenizer import train_kernels
    except ImportError:
        return None
    return train_kernels


class ChunkTable:
    """Distinct chunks (UTF-8 bytes) and their counts in flat numpy arrays, filled by the compiled kernels.

    Grows by doubling; ``len`` is the number of distinct chunks. See :mod:`microgpt.tokenizer.train_kernels`.
    """

    def __init__(self, capacity: int = 1 << 16, blob_bytes: int = 1 << 20) -> None:
        """An empty table with room for ``capacity`` chunks of ``blob_bytes`` bytes in all."""
        self._kernels = _load_kernels()
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
        data = [_utf8(chunk) for chunk in counts]
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
        """:func:`learn_vocab` on this table, compiled; the table's hash index is freed first."""
        kernels = self._kernels
        self.slots = self.hashes = np.empty(0, np.int64)
        n_bytes = int(self.lengths[: self.n][self.lengths[: self.n] > 1].sum())
        dtype = np.uint16 if 256 + n_merges <= 1 << 16 else np.int32
        ids = np.empty(n_bytes, dtype)
        starts, freqs = kernels.words_from_table(self.offsets, self.lengths, self.counts, self.blob, self.n, ids)
        self.offsets = self.lengths = self.counts = np.empty(0, np.int64)
        self.blob = np.empty(0, np.uint8)
        blob, offsets = kernels.learn_merges(ids, starts, freqs, n_merges)
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
            data = _utf8(piece)
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
    kernels = _load_kernels()
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


def learn_vocab(chunk_counts: Counter[str], n_merges: int, *, progress: bool = False) -> list[bytes]:
    """Learn up to ``n_merges`` merges over the 256 byte tokens; return the vocabulary in rank order.

    Token ``i < 256`` is the byte ``i``; each later token is the concatenation of the pair merged to make it.
    A pair whose concatenation already exists as a token (possible in byte-level BPE) is merged into that
    token instead of adding a duplicate, so every token's bytes are unique.

    Args:
        chunk_counts: Distinct chunks and their counts (from :func:`count_chunks`).
        n_merges: How many new tokens to learn at most (fewer when no pair is left).
        progress: Show a progress bar of merges.

    Returns:
        The token bytes, index = rank = token id.
    """
    # Chunks of one byte hold no pair; they never influence a merge.
    words: list[list[int]] = []
    freqs: list[int] = []
    for chunk, freq in chunk_counts.items():
        data = _utf8(chunk)
        if len(data) > 1:
            words.append(list(data))
            freqs.append(freq)

    stats: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for index, (word, freq) in enumerate(zip(words, freqs, strict=True)):
        for pair in zip(word, word[1:], strict=False):
            stats[pair] = stats.get(pair, 0) + freq
            holders = where.get(pair)
            if holders is None:
                where[pair] = {index}
            else:
                holders.add(index)
    # Max-heap by count via negation; the tuple order breaks ties on the smaller (left, right) pair.
    heap = [(-count, pair) for pair, count in stats.items()]
    heapq.heapify(heap)

    vocab = [bytes([i]) for i in range(256)]
    token_of = {token: i for i, token in enumerate(vocab)}
    bar = tqdm(total=n_merges, desc="merges", unit="merge", disable=not progress)
    learned = 0
    while learned < n_merges and heap:
        negative, pair = heapq.heappop(heap)
        count = stats.get(pair, 0)
        if count <= 0:
            continue
        if count != -negative:
            if count < -negative:  # the count fell since this entry was pushed: requeue at its true value
                heapq.heappush(heap, (-count, pair))
            continue  # a rise always pushed a fresh entry, so a stale low one is just dropped
        first, second = pair
        merged = vocab[first] + vocab[second]
        new = token_of.get(merged)
        if new is None:
            new = len(vocab)
            vocab.append(merged)
            token_of[merged] = new
            learned += 1
            bar.update(1)
        touched = _apply_merge(pair, new, where.pop(pair), words, freqs, stats, where)
        del stats[pair]
        for key in touched:
            heapq.heappush(heap, (-stats[key], key))
    bar.close()
    return vocab


def _apply_merge(
    pair: tuple[int, int],
    new: int,
    holders: set[int],
    words: list[list[int]],
    freqs: list[int],
    stats: dict[tuple[int, int], int],
    where: dict[tuple[int, int], set[int]],
) -> set[tuple[int, int]]:
    """Merge ``pair`` into ``new`` in every word of ``holders``, updating only the neighbouring pair counts.

    Returns:
        The pairs that contain ``new`` and whose counts rose (to push on the heap).
    """
    first, second = pair
    touched: set[tuple[int, int]] = set()
    for index in holders:  # order does not matter: the counts are sums
        word = words[index]
        freq = freqs[index]
        i = 0
        while True:
            try:
                i = word.index(first, i)
            except ValueError:
                break
            if i + 1 < len(word) and word[i + 1] == second:
                if i > 0:  # (prev, first) → (prev, new)
                    prev = word[i - 1]
                    stats[(prev, first)] -= freq
                    key = (prev, new)
                    stats[key] = stats.get(key, 0) + freq
                    where.setdefault(key, set()).add(index)
                    touched.add(key)
                if i + 2 < len(word):  # (second, next) → (new, next)
                    nxt = word[i + 2]
                    stats[(second, nxt)] -= freq
                    key = (new, nxt)
                    stats[key] = stats.get(key, 0) + freq
                    where.setdefault(key, set()).add(index)
                    touched.add(key)
                word[i] = new
                del word[i + 1]
            i += 1
    return touched


# Below this many characters the plain loop trains as fast as the kernels (1.7 s for the demo's 2 MB either way),
# and the kernels' first compile after an install costs ~40 s: a small corpus never waits for it.
SMALL_CORPUS_CHARS = 8 << 20


def _peek_small(documents: Iterable[str], limit: int) -> tuple[Iterator[str], bool]:
    """Read documents until ``limit`` characters; return all of them again and whether the corpus ended first."""
    stream = iter(documents)
    head: list[str] = []
    size = 0
    for text in stream:
        head.append(text)
        size += len(text)
        if size >= limit:
            return itertools.chain(head, stream), False
    return iter(head), True


def train_vocab(
    documents: Iterable[str],
    vocab_size: int,
    pattern: str,
    n_special: int,
    *,
    workers: int = 1,
    progress: bool = False,
) -> list[bytes]:
    """Count chunks and learn ``vocab_size - n_special - 256`` merges; return token bytes in rank order.

    Raises:
        MicrogptError: When the corpus holds no text.
    """
    n_merges = vocab_size - n_special - 256
    documents, small = _peek_small(documents, SMALL_CORPUS_CHARS)
    kernels = None if small else _load_kernels()  # a small corpus: the plain loop, no compile to wait for
    if kernels is not None:
        if pattern_name(pattern) is not None:
            table = count_table(documents, pattern, workers=workers, progress=progress)
        else:
            table = ChunkTable()
            table.add_counter(count_chunks(documents, pattern, workers=workers, progress=progress))
        if not len(table):
            raise MicrogptError("cannot train a tokenizer on an empty corpus (no text in the documents)")
        log.info("training BPE: %s distinct chunks, %s merges", f"{len(table):,}", f"{n_merges:,}")
        vocab = table.learn(n_merges)
    else:
        counts = count_chunks(documents, pattern, workers=workers, progress=progress)
        if not counts:
            raise MicrogptError("cannot train a tokenizer on an empty corpus (no text in the documents)")
        log.info("training BPE: %s distinct chunks, %s merges", f"{len(counts):,}", f"{n_merges:,}")
        vocab = learn_vocab(counts, n_merges, progress=progress)
    if len(vocab) - 256 < n_merges:
        log.warning("the corpus ran out of pairs after %d of %d merges", len(vocab) - 256, n_merges)
    return vocab
