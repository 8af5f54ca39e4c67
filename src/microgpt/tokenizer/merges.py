"""Learning BPE merges from chunk counts, incrementally (the plain Python learner).

Keep the count of every adjacent pair and, per pair, the set of chunks that contain it. Each merge updates only
the chunks that hold the chosen pair, and only the pairs next to each occurrence (as Hugging Face ``tokenizers``
does), and a max-heap with lazy deletion picks the next pair — never a full recount. The compiled learner
(:func:`microgpt.tokenizer.merge_kernels.learn_merges`) does the same on arrays and learns the same vocabulary.

Tie rule (documented, deterministic): the pair with the highest count wins; among equal counts, the pair
``(left id, right id)`` that sorts first wins.
"""

from __future__ import annotations

import heapq
from collections import Counter

from tqdm import tqdm

from microgpt.tokenizer.corpus import utf8_bytes


def learn_vocab(chunk_counts: Counter[str], n_merges: int, *, progress: bool = False) -> list[bytes]:
    """Learn up to ``n_merges`` merges over the 256 byte tokens; return the vocabulary in rank order.

    Token ``i < 256`` is the byte ``i``; each later token is the concatenation of the pair merged to make it.
    A pair whose concatenation already exists as a token (possible in byte-level BPE) is merged into that
    token instead of adding a duplicate, so every token's bytes are unique.

    Args:
        chunk_counts: Distinct chunks and their counts (from :func:`~microgpt.tokenizer.counting.count_chunks`).
        n_merges: How many new tokens to learn at most (fewer when no pair is left).
        progress: Show a progress bar of merges.

    Returns:
        The token bytes, index = rank = token id.
    """
    # Chunks of one byte hold no pair; they never influence a merge.
    words: list[list[int]] = []
    freqs: list[int] = []
    for chunk, freq in chunk_counts.items():
        data = utf8_bytes(chunk)
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
