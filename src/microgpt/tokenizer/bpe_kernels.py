"""The numba kernels of :mod:`microgpt.tokenizer.bpe_jit` (imported only when numba is installed).

Token bytes are looked up in an open-addressing hash table (FNV-1a, linear probing; see :func:`build_table`)
over ``blob``, all token bytes end to end. Chunks up to ``LONG_CHUNK`` bytes merge by scanning their pairs
(fastest for words); longer ones (minified code, base64, a run of one character) merge with a heap, so a
megabyte-long chunk takes a fraction of a second instead of minutes.
Arrays: ``uint8`` bytes, ``int32`` table, ``int64`` the rest.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

NO_RANK = 1 << 62  # not a token: larger than any rank, so never the minimum while a real rank remains
_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)


@numba.njit(cache=True, inline="always")
def fnv(data: Any, start: int, end: int) -> Any:
    """FNV-1a hash (uint64) of ``data[start:end]``."""
    h = _FNV_OFFSET
    for i in range(start, end):
        h = (h ^ np.uint64(data[i])) * _FNV_PRIME
    return h


@numba.njit(cache=True, inline="always")
def lookup(slots: Any, blob: Any, max_len: int, data: Any, start: int, end: int) -> int:
    """Rank of ``data[start:end]``, or NO_RANK."""
    n = end - start
    if n > max_len:
        return NO_RANK
    h = fnv(data, start, end)
    fingerprint = np.int64(h >> np.uint64(33))
    mask = len(slots) - 1
    slot = np.int64(h & np.uint64(mask))
    while True:
        offset = slots[slot, 1]
        if offset < 0:
            return NO_RANK
        if slots[slot, 0] == fingerprint and slots[slot, 3] == n:
            same = True
            for k in range(n):
                if blob[offset + k] != data[start + k]:
                    same = False
                    break
            if same:
                return slots[slot, 2]  # type: ignore[no-any-return]  # numba: an int
        slot = (slot + 1) & mask


@numba.njit(cache=True, nogil=True)
def build_table(blob: Any, offsets: Any, ranks: Any) -> Any:
    """The hash table: a power of two of slots, at most half full, each ``(fingerprint, offset, rank, length)``.

    One slot holds all a look-up needs before comparing bytes, so a miss touches one cache line and a hit two
    (the slot and the token's bytes): with the table far larger than the CPU caches, lines are what cost.
    Empty slots have offset -1.
    """
    n_tokens = len(offsets) - 1
    size = 1
    while size < 2 * n_tokens:
        size *= 2
    slots = np.full((size, 4), -1, np.int32)
    for token in range(n_tokens):
        start, end = offsets[token], offsets[token + 1]
        h = fnv(blob, start, end)
        slot = np.int64(h & np.uint64(size - 1))
        while slots[slot, 1] >= 0:
            slot = (slot + 1) & (size - 1)
        slots[slot, 0] = np.int64(h >> np.uint64(33))
        slots[slot, 1] = start
        slots[slot, 2] = ranks[token]
        slots[slot, 3] = end - start
    return slots


LONG_CHUNK = 128  # bytes: longer chunks merge with a heap (O(n log n)) instead of scanning all pairs per merge


@numba.njit(cache=True, inline="always")
def _heap_push(heap: Any, size: int, key: int) -> int:
    """Push ``key`` on the min-heap ``heap[:size]``; returns the new size."""
    i = size
    heap[i] = key
    while i > 0:
        parent = (i - 1) >> 1
        if heap[parent] <= heap[i]:
            break
        heap[parent], heap[i] = heap[i], heap[parent]
        i = parent
    return size + 1


@numba.njit(cache=True, inline="always")
def _heap_pop(heap: Any, size: int) -> int:
    """Remove the smallest key of ``heap[:size]`` into ``heap[size - 1]``; the caller shrinks size by one."""
    last = size - 1
    heap[0], heap[last] = heap[last], heap[0]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= last:
            break
        if child + 1 < last and heap[child + 1] < heap[child]:
            child += 1
        if heap[i] <= heap[child]:
            break
        heap[i], heap[child] = heap[child], heap[i]
        i = child
    return heap[last]  # type: ignore[no-any-return]  # numba: an int


@numba.njit(cache=True)
def _encode_long(data: Any, start: int, end: int, slots: Any, blob: Any, max_len: int, out: Any, pos: int) -> int:
    """Rank-ordered BPE of one long chunk with a heap; writes its ids at ``out[pos:]`` and returns the new end.

    The same merges as the pair scan in :func:`encode_chunks`: the heap orders joined pairs by (rank, position),
    so it pops the lowest rank, leftmost on a tie. Parts form a linked list by start offset (``nxt``, ``prv``);
    an entry whose part has died or whose pair rank has changed since it was pushed is skipped on pop.
    """
    n = end - start
    nxt = np.empty(n, np.int64)  # nxt[i]: where the part after the part at i starts (n: it is the last)
    prv = np.empty(n, np.int64)
    alive = np.ones(n, np.bool_)
    pair_rank = np.full(n, NO_RANK, np.int64)  # rank of the part at i joined with the next part
    heap = np.empty(3 * n, np.int64)  # keys rank << 32 | i: n - 1 first pushes, at most 2 per merge
    size = 0
    for i in range(n):
        nxt[i], prv[i] = i + 1, i - 1
    for i in range(n - 1):
        pair_rank[i] = lookup(slots, blob, max_len, data, start + i, start + i + 2)
        if pair_rank[i] != NO_RANK:
            size = _heap_push(heap, size, (pair_rank[i] << 32) | i)
    while size > 0:
        key = _heap_pop(heap, size)
        size -= 1
        rank, i = key >> 32, key & 0xFFFFFFFF
        if not alive[i] or pair_rank[i] != rank:
            continue  # stale
        j = nxt[i]  # the part at j joins the part at i
        alive[j] = False
        k = nxt[j]
        nxt[i] = k
        if k < n:
            prv[k] = i
            pair_rank[i] = lookup(slots, blob, max_len, data, start + i, start + nxt[k])
            if pair_rank[i] != NO_RANK:
                size = _heap_push(heap, size, (pair_rank[i] << 32) | i)
        else:
            pair_rank[i] = NO_RANK
        h = prv[i]
        if h >= 0:
            pair_rank[h] = lookup(slots, blob, max_len, data, start + h, start + k)
            if pair_rank[h] != NO_RANK:
                size = _heap_push(heap, size, (pair_rank[h] << 32) | h)
    i = 0
    while i < n:
        out[pos] = lookup(slots, blob, max_len, data, start + i, start + nxt[i])
        pos += 1
        i = nxt[i]
    return pos


@numba.njit(cache=True, nogil=True)
def encode_chunks(data: Any, starts: Any, slots: Any, blob: Any, max_len: int) -> Any:
    """Ids of every chunk ``data[starts[c]:starts[c + 1]]``, flat, and how many each chunk has."""
    n_chunks = len(starts) - 1
    out = np.empty(len(data), np.int64)  # a chunk never has more ids than bytes
    counts = np.empty(n_chunks, np.int64)
    longest = 0
    for c in range(n_chunks):
        longest = max(longest, min(starts[c + 1] - starts[c], LONG_CHUNK))
    bounds = np.empty(longest + 1, np.int64)  # bounds[j]: where part j starts (its end is bounds[j + 1])
    pair_ranks = np.empty(max(longest - 1, 1), np.int64)  # rank of parts j and j + 1 joined
    pos = 0
    for c in range(n_chunks):
        start, end = starts[c], starts[c + 1]
        whole = lookup(slots, blob, max_len, data, start, end)
        if whole != NO_RANK:
            out[pos] = whole
            pos += 1
            counts[c] = 1
            continue
        if end - start > LONG_CHUNK:
            before = pos
            pos = _encode_long(data, start, end, slots, blob, max_len, out, pos)
            counts[c] = pos - before
            continue
        parts = end - start
        for j in range(parts + 1):
            bounds[j] = start + j
        for j in range(parts - 1):
            pair_ranks[j] = lookup(slots, blob, max_len, data, start + j, start + j + 2)
        while parts > 1:
            best, i = NO_RANK, -1
            for j in range(parts - 1):
                if pair_ranks[j] < best:  # strict: the leftmost of the lowest rank, like tiktoken
                    best, i = pair_ranks[j], j
            if i < 0:
                break
            for j in range(i + 1, parts):  # drop bounds[i + 1]: parts i and i + 1 become one
                bounds[j] = bounds[j + 1]
            for j in range(i, parts - 2):
                pair_ranks[j] = pair_ranks[j + 1]
            parts -= 1
            if i > 0:
                pair_ranks[i - 1] = lookup(slots, blob, max_len, data, bounds[i - 1], bounds[i + 1])
            if i < parts - 1:
                pair_ranks[i] = lookup(slots, blob, max_len, data, bounds[i], bounds[i + 2])
        for j in range(parts):
            out[pos] = lookup(slots, blob, max_len, data, bounds[j], bounds[j + 1])
            pos += 1
        counts[c] = parts
    return out[:pos], counts
