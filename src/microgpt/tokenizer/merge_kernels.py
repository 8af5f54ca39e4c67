"""The numba merge kernel of the BPE trainer (imported only when numba is installed).

:func:`learn_merges` is the algorithm of :func:`microgpt.tokenizer.merges.learn_vocab` on arrays — pair counts
in a hash table, per pair a linked list of the words that hold it, a max-heap with lazy deletion, and per merge
only the neighbours of each occurrence updated — so it learns exactly the same vocabulary (the tests compare
them). Words are the chunks of two bytes or more, stored end to end in ``ids`` by :func:`words_from_table`.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from microgpt.tokenizer.count_kernels import same

_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)
_LOW32 = (1 << 32) - 1


@numba.njit(cache=True, nogil=True)
def words_from_table(offsets: Any, lengths: Any, counts: Any, blob: Any, n: int, ids: Any) -> tuple[Any, Any]:
    """Write the chunks of two bytes or more into ``ids`` end to end; returns (word starts, word counts)."""
    n_words = 0
    for e in range(n):
        if lengths[e] > 1:
            n_words += 1
    starts = np.empty(n_words + 1, np.int64)
    freqs = np.empty(n_words, np.int64)
    w, pos = 0, 0
    for e in range(n):
        size = lengths[e]
        if size > 1:
            starts[w] = pos
            freqs[w] = counts[e]
            for k in range(size):
                ids[pos + k] = blob[offsets[e] + k]
            pos += size
            w += 1
    starts[n_words] = pos
    return starts, freqs


@numba.njit(cache=True, inline="always")
def _pair_slot(keys: Any, key: int) -> int:
    """The slot of pair ``key`` in the pair table, or the empty slot where it would go."""
    mask = len(keys) - 1
    h = np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)
    slot = np.int64((h >> np.uint64(20)) & np.uint64(mask))
    while keys[slot] != key and keys[slot] >= 0:
        slot = (slot + 1) & mask
    return slot  # type: ignore[no-any-return]  # numba: an int


@numba.njit(cache=True)
def _grow_pairs(keys: Any, pair_counts: Any, heads: Any, marks: Any) -> tuple[Any, Any, Any, Any]:
    size = 2 * len(keys)
    new_keys = np.full(size, -1, np.int64)
    new_counts = np.zeros(size, np.int64)
    new_heads = np.full(size, -1, np.int32)
    new_marks = np.full(size, -1, np.int32)
    for s in range(len(keys)):
        if keys[s] >= 0:
            t = _pair_slot(new_keys, keys[s])
            new_keys[t] = keys[s]
            new_counts[t] = pair_counts[s]
            new_heads[t] = heads[s]
            new_marks[t] = marks[s]
    return new_keys, new_counts, new_heads, new_marks


@numba.njit(cache=True, inline="always")
def _before(neg_a: int, key_a: int, neg_b: int, key_b: int) -> bool:
    return neg_a < neg_b or (neg_a == neg_b and key_a < key_b)


@numba.njit(cache=True)
def _heap_push(negs: Any, keys: Any, size: int, neg: int, key: int) -> tuple[Any, Any, int]:
    """Push (−count, pair) on the min-heap ``negs/keys[:size]`` (grown when full); returns arrays and size."""
    if size == len(negs):
        grown_negs = np.empty(2 * size, np.int64)
        grown_keys = np.empty(2 * size, np.int64)
        grown_negs[:size] = negs
        grown_keys[:size] = keys
        negs, keys = grown_negs, grown_keys
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if not _before(neg, key, negs[parent], keys[parent]):
            break
        negs[i], keys[i] = negs[parent], keys[parent]
        i = parent
    negs[i], keys[i] = neg, key
    return negs, keys, size + 1


@numba.njit(cache=True)
def _heap_pop(negs: Any, keys: Any, size: int) -> tuple[int, int, int]:
    """Remove the top of the heap; returns (−count, pair, new size)."""
    top_neg, top_key = negs[0], keys[0]
    size -= 1
    neg, key = negs[size], keys[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and _before(negs[child + 1], keys[child + 1], negs[child], keys[child]):
            child += 1
        if not _before(negs[child], keys[child], neg, key):
            break
        negs[i], keys[i] = negs[child], keys[child]
        i = child
    if size > 0:
        negs[i], keys[i] = neg, key
    return top_neg, top_key, size


@numba.njit(cache=True)
def learn_merges(ids: Any, starts: Any, freqs: Any, n_merges: int) -> tuple[Any, Any]:
    """Learn up to ``n_merges`` tokens from words ``ids[starts[w]:starts[w + 1]]`` seen ``freqs[w]`` times.

    Same rules as :func:`microgpt.tokenizer.merges.learn_vocab`: the pair of highest count wins, the smaller
    ``(left, right)`` on a tie; a pair whose bytes already form a token merges into that token. ``ids`` is
    rewritten in place.

    Returns:
        ``(token_blob, token_offsets)``: token ``t`` is ``token_blob[token_offsets[t]:token_offsets[t + 1]]``,
        the 256 bytes first, then the learned tokens in order.
    """
    n_words = len(freqs)
    lengths = np.empty(n_words, np.int64)
    for w in range(n_words):
        lengths[w] = starts[w + 1] - starts[w]
    # Pairs: open addressing on key = left << 32 | right; per pair its count, the head of its list of holders
    # (a linked list through inc_word/inc_next, newest first) and the last merge that pushed it on the heap.
    keys = np.full(1 << 17, -1, np.int64)
    pair_counts = np.zeros(1 << 17, np.int64)
    heads = np.full(1 << 17, -1, np.int32)
    marks = np.full(1 << 17, -1, np.int32)
    n_pairs = 0
    inc_word = np.empty(max(len(ids), 16), np.int32)
    inc_next = np.empty(max(len(ids), 16), np.int32)
    n_inc = 0
    for w in range(n_words):
        f = freqs[w]
        for i in range(starts[w], starts[w + 1] - 1):
            key = (np.int64(ids[i]) << 32) | np.int64(ids[i + 1])
            s = _pair_slot(keys, key)
            if keys[s] < 0:
                keys[s] = key
                n_pairs += 1
                if 2 * n_pairs > len(keys):
                    keys, pair_counts, heads, marks = _grow_pairs(keys, pair_counts, heads, marks)
                    s = _pair_slot(keys, key)
            pair_counts[s] += f
            if heads[s] < 0 or inc_word[heads[s]] != w:
                inc_word[n_inc] = w
                inc_next[n_inc] = heads[s]
                heads[s] = n_inc
                n_inc += 1
    heap_negs = np.empty(max(n_pairs, 16), np.int64)
    heap_keys = np.empty(max(n_pairs, 16), np.int64)
    heap_size = 0
    for s in range(len(keys)):
        if keys[s] >= 0:
            heap_negs, heap_keys, heap_size = _heap_push(heap_negs, heap_keys, heap_size, -pair_counts[s], keys[s])

    # Tokens: bytes end to end, and a hash table of their bytes (to find a merge whose bytes already exist).
    max_tokens = 256 + n_merges
    tok_offsets = np.zeros(max_tokens + 1, np.int64)
    tok_blob = np.empty(max(1024, 4 * max_tokens), np.uint8)
    tok_hash = np.empty(max_tokens, np.uint64)
    tok_size = 16
    while tok_size < 2 * max_tokens:
        tok_size *= 2
    tok_slots = np.full(tok_size, -1, np.int64)
    for t in range(256):
        tok_blob[t] = t
        tok_offsets[t + 1] = t + 1
        h = (_FNV_OFFSET ^ np.uint64(t)) * _FNV_PRIME
        tok_hash[t] = h
        slot = np.int64(h & np.uint64(tok_size - 1))
        while tok_slots[slot] >= 0:
            slot = (slot + 1) & (tok_size - 1)
        tok_slots[slot] = t
    n_tokens = 256

    seen = np.full(n_words, -1, np.int32)  # the last merge that rewrote each word
    touched = np.empty(1024, np.int64)
    learned = 0
    merge = 0
    while learned < n_merges and heap_size > 0:
        neg, key, heap_size = _heap_pop(heap_negs, heap_keys, heap_size)
        s = _pair_slot(keys, key)
        count = pair_counts[s] if keys[s] == key else 0
        if count <= 0:
            continue
        if count != -neg:
            if count < -neg:  # fell since pushed: requeue at its true value (a rise pushed a fresh entry)
                heap_negs, heap_keys, heap_size = _heap_push(heap_negs, heap_keys, heap_size, -count, key)
            continue
        first, second = key >> 32, key & _LOW32
        # The merged bytes: a token already?
        a0, a1 = tok_offsets[first], tok_offsets[first + 1]
        b0, b1 = tok_offsets[second], tok_offsets[second + 1]
        size = (a1 - a0) + (b1 - b0)
        h = _FNV_OFFSET
        for k in range(a0, a1):
            h = (h ^ np.uint64(tok_blob[k])) * _FNV_PRIME
        for k in range(b0, b1):
            h = (h ^ np.uint64(tok_blob[k])) * _FNV_PRIME
        slot = np.int64(h & np.uint64(tok_size - 1))
        new = -1
        while tok_slots[slot] >= 0:
            t = tok_slots[slot]
            if tok_hash[t] == h and tok_offsets[t + 1] - tok_offsets[t] == size:
                o = tok_offsets[t]
                if same(tok_blob, o, tok_blob, a0, a1 - a0) and same(tok_blob, o + a1 - a0, tok_blob, b0, b1 - b0):
                    new = t
                    break
            slot = (slot + 1) & (tok_size - 1)
        if new < 0:
            new = n_tokens
            end = tok_offsets[n_tokens]
            if end + size > len(tok_blob):
                grown = np.empty(2 * (end + size), np.uint8)
                grown[:end] = tok_blob[:end]
                tok_blob = grown
            tok_blob[end : end + a1 - a0] = tok_blob[a0:a1]
            tok_blob[end + a1 - a0 : end + size] = tok_blob[b0:b1]
            tok_offsets[n_tokens + 1] = end + size
            tok_hash[n_tokens] = h
            tok_slots[slot] = n_tokens
            n_tokens += 1
            learned += 1
        # Merge the pair in every word that holds it, updating only the neighbouring pairs.
        e = heads[s]
        heads[s] = -1
        n_touched = 0
        while e >= 0:
            w = inc_word[e]
            e = inc_next[e]
            if seen[w] == merge:
                continue
            seen[w] = merge
            base, n = starts[w], lengths[w]
            f = freqs[w]
            i = 0
            while i < n - 1:
                if ids[base + i] == first and ids[base + i + 1] == second:
                    for side in range(2):
                        if side == 0:
                            if i == 0:
                                continue
                            other = np.int64(ids[base + i - 1])
                            old = (other << 32) | first
                            key_new = (other << 32) | new
                        else:
                            if i + 2 >= n:
                                continue
                            other = np.int64(ids[base + i + 2])
                            old = (second << 32) | other
                            key_new = (np.int64(new) << 32) | other
                        pair_counts[_pair_slot(keys, old)] -= f
                        t = _pair_slot(keys, key_new)
                        if keys[t] < 0:
                            keys[t] = key_new
                            n_pairs += 1
                            if 2 * n_pairs > len(keys):
                                keys, pair_counts, heads, marks = _grow_pairs(keys, pair_counts, heads, marks)
                                t = _pair_slot(keys, key_new)
                        pair_counts[t] += f
                        if heads[t] < 0 or inc_word[heads[t]] != w:
                            if n_inc == len(inc_word):
                                if n_inc >= (1 << 31) - 1:
                                    raise ValueError("BPE training: more than 2**31 pair occurrences")
                                grow = min(n_inc + n_inc // 2, (1 << 31) - 1)
                                grown_word = np.empty(grow, np.int32)
                                grown_next = np.empty(grow, np.int32)
                                grown_word[:n_inc] = inc_word
                                grown_next[:n_inc] = inc_next
                                inc_word, inc_next = grown_word, grown_next
                            inc_word[n_inc] = w
                            inc_next[n_inc] = heads[t]
                            heads[t] = n_inc
                            n_inc += 1
                        if marks[t] != merge:
                            marks[t] = merge
                            if n_touched == len(touched):
                                grown_touched = np.empty(2 * n_touched, np.int64)
                                grown_touched[:n_touched] = touched
                                touched = grown_touched
                            touched[n_touched] = key_new
                            n_touched += 1
                    ids[base + i] = new
                    for j in range(base + i + 1, base + n - 1):
                        ids[j] = ids[j + 1]
                    n -= 1
                i += 1
            lengths[w] = n
        s = _pair_slot(keys, key)
        pair_counts[s] = 0
        heads[s] = -1
        for j in range(n_touched):
            t = _pair_slot(keys, touched[j])
            heap_negs, heap_keys, heap_size = _heap_push(heap_negs, heap_keys, heap_size, -pair_counts[t], touched[j])
        merge += 1
    return tok_blob[: tok_offsets[n_tokens]].copy(), tok_offsets[: n_tokens + 1].copy()
