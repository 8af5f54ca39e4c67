"""Training a byte-level BPE vocabulary: count distinct chunks, then merge pairs incrementally.

Two phases:

1. **Counting** (:func:`count_chunks`): split every document with the pattern and count each distinct chunk.
   Memory grows with the number of distinct chunks, not with the corpus. Several processes may count batches
   of documents; counts are sums, so the result does not depend on the number of workers.
2. **Merging** (:func:`learn_vocab`): keep the count of every adjacent pair and, per pair, the set of chunks
   that contain it. Each merge updates only the chunks that hold the chosen pair, and only the pairs next to
   each occurrence (as Hugging Face ``tokenizers`` does), and a max-heap with lazy deletion picks the next
   pair — never a full recount.

Tie rule (documented, deterministic): the pair with the highest count wins; among equal counts, the pair
``(left id, right id)`` that sorts first wins.
"""

from __future__ import annotations

import heapq
import multiprocessing
from collections import Counter
from collections.abc import Iterable, Iterator

from tqdm import tqdm

from microgpt.common.errors import MicrogptError
from microgpt.common.log import get_logger
from microgpt.tokenizer.patterns import compile_pattern

log = get_logger(__name__)

BATCH_CHARS = 1 << 20  # documents are sent to counting workers in batches of about this many characters


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


def _batches(documents: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for doc in documents:
        if not isinstance(doc, str):
            raise MicrogptError(f"training documents must be str, got {type(doc).__name__}")
        batch.append(doc)
        size += len(doc)
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
    """Count the distinct chunks of ``documents`` under the split ``pattern``.

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
    jobs = ((pattern, batch) for batch in _batches(documents))
    with tqdm(desc="count chunks", unit="char", unit_scale=True, disable=not progress) as bar:
        if workers <= 1:
            results: Iterable[tuple[Counter[str], int]] = map(_count_batch, jobs)
            for counts, chars in results:
                total.update(counts)
                bar.update(chars)
        else:
            context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
            with context.Pool(workers) as pool:
                for counts, chars in pool.imap(_count_batch, jobs):
                    total.update(counts)
                    bar.update(chars)
    return total


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
    counts = count_chunks(documents, pattern, workers=workers, progress=progress)
    if not counts:
        raise MicrogptError("cannot train a tokenizer on an empty corpus (no text in the documents)")
    n_merges = vocab_size - n_special - 256
    log.info("training BPE: %s distinct chunks, %s merges", f"{len(counts):,}", f"{n_merges:,}")
    vocab = learn_vocab(counts, n_merges, progress=progress)
    if len(vocab) - 256 < n_merges:
        log.warning("the corpus ran out of pairs after %d of %d merges", len(vocab) - 256, n_merges)
    return vocab
