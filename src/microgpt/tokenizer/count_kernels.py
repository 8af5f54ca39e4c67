"""The numba counting kernels of the BPE trainer (imported only when numba is installed).

:func:`count_block` splits a batch of documents with the compiled splitter
(:func:`~microgpt.tokenizer.split_kernels.chunk_starts`) and counts its distinct chunks in an open-addressing
hash table (FNV-1a, linear probing); :func:`table_add` adds such a batch table to the running one, and
:func:`compact` keeps only some entries (pruning). A table is flat arrays: ``blob`` (the chunks' bytes end to
end), per entry its hash, offset, length and count, and ``slots`` (entry index or -1, a power of two, at most half
full). No Python object is made per chunk. :class:`~microgpt.tokenizer.counting.ChunkTable` holds one.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from microgpt.tokenizer.bpe_kernels import fnv
from microgpt.tokenizer.split_kernels import chunk_starts


def slots_for(n_entries: int) -> int:
    """The number of hash slots that keeps ``n_entries`` at most half full (a power of two, at least 16)."""
    size = 16
    while size < 2 * n_entries:
        size *= 2
    return size


@numba.njit(cache=True, inline="always")
def same(blob: Any, offset: int, data: Any, start: int, n: int) -> bool:
    """Whether ``blob[offset:offset + n]`` equals ``data[start:start + n]``."""
    for k in range(n):
        if blob[offset + k] != data[start + k]:
            return False
    return True


@numba.njit(cache=True)
def table_insert(
    slots: Any, hashes: Any, offsets: Any, lengths: Any, counts: Any, blob: Any, n: int, used: int,
    data: Any, start: int, end: int, h: Any, count: int,
) -> tuple[int, int]:  # fmt: skip
    """Add ``count`` to the entry of ``data[start:end]`` (hash ``h``), creating it; returns the new (n, used).

    The caller guarantees room: one more entry, ``end - start`` more blob bytes, and slots at most half full.
    """
    size = end - start
    mask = len(slots) - 1
    slot = np.int64(h & np.uint64(mask))
    while True:
        entry = slots[slot]
        if entry < 0:
            slots[slot] = n
            hashes[n] = h
            offsets[n] = used
            lengths[n] = size
            counts[n] = count
            blob[used : used + size] = data[start:end]
            return n + 1, used + size
        if hashes[entry] == h and lengths[entry] == size and same(blob, offsets[entry], data, start, size):
            counts[entry] += count
            return n, used
        slot = (slot + 1) & mask


@numba.njit(cache=True, nogil=True)
def table_add(
    slots: Any, hashes: Any, offsets: Any, lengths: Any, counts: Any, blob: Any, n: int, used: int,
    src_blob: Any, src_offsets: Any, src_counts: Any,
) -> tuple[int, int]:  # fmt: skip
    """Add every entry of a batch table (``src_offsets`` has one more item than ``src_counts``) to a table."""
    for e in range(len(src_counts)):
        start, end = src_offsets[e], src_offsets[e + 1]
        n, used = table_insert(
            slots, hashes, offsets, lengths, counts, blob, n, used,
            src_blob, start, end, fnv(src_blob, start, end), src_counts[e],
        )  # fmt: skip
    return n, used


@numba.njit(cache=True, nogil=True)
def rehash(hashes: Any, n: int, size: int) -> Any:
    """Fresh slots (``size``, a power of two) for entries ``0..n-1`` with their stored hashes."""
    slots = np.full(size, -1, np.int64)
    mask = size - 1
    for e in range(n):
        slot = np.int64(hashes[e] & np.uint64(mask))
        while slots[slot] >= 0:
            slot = (slot + 1) & mask
        slots[slot] = e
    return slots


@numba.njit(cache=True, nogil=True)
def count_block(data: Any, doc_starts: Any, kind: int, classes: Any) -> tuple[Any, Any, Any]:
    """Distinct chunks of the documents ``data[doc_starts[d]:doc_starts[d + 1]]`` (UTF-8) and their counts.

    Returns:
        ``(blob, offsets, counts)``: chunk ``e`` is ``blob[offsets[e]:offsets[e + 1]]``, seen ``counts[e]`` times.
    """
    n_docs = len(doc_starts) - 1
    bounds = np.empty(len(data) + n_docs, np.int64)  # chunk c: bounds[c] to ends[c]; a chunk has >= 1 byte
    ends = np.empty(len(data) + n_docs, np.int64)
    n_chunks = 0
    for d in range(n_docs):
        first = doc_starts[d]
        starts = chunk_starts(data[first : doc_starts[d + 1]], kind, classes)
        for c in range(len(starts) - 1):
            bounds[n_chunks] = first + starts[c]
            ends[n_chunks] = first + starts[c + 1]
            n_chunks += 1
    size = 16
    while size < 2 * n_chunks:
        size *= 2
    slots = np.full(size, -1, np.int64)
    hashes = np.empty(n_chunks, np.uint64)
    offsets = np.empty(n_chunks + 1, np.int64)
    lengths = np.empty(n_chunks, np.int64)
    counts = np.empty(n_chunks, np.int64)
    blob = np.empty(len(data), np.uint8)
    n, used = 0, 0
    for c in range(n_chunks):
        start, end = bounds[c], ends[c]
        n, used = table_insert(
            slots, hashes, offsets, lengths, counts, blob, n, used, data, start, end, fnv(data, start, end), 1
        )
    offsets[n] = used
    return blob[:used].copy(), offsets[: n + 1].copy(), counts[:n].copy()


@numba.njit(cache=True, nogil=True)
def compact(
    hashes: Any, offsets: Any, lengths: Any, counts: Any, blob: Any, n: int, keep: Any
) -> tuple[Any, Any, Any, Any, Any, int, int]:
    """Keep the entries where ``keep`` is true (in order): new hashes, offsets, lengths, counts, blob, n, used."""
    m = 0
    used = 0
    for e in range(n):
        if keep[e]:
            m += 1
            used += lengths[e]
    new_hashes = np.empty(max(m, 1) * 2, np.uint64)
    new_offsets = np.empty(max(m, 1) * 2, np.int64)
    new_lengths = np.empty(max(m, 1) * 2, np.int64)
    new_counts = np.empty(max(m, 1) * 2, np.int64)
    new_blob = np.empty(max(used, 1) * 2, np.uint8)
    j, pos = 0, 0
    for e in range(n):
        if keep[e]:
            size = lengths[e]
            new_hashes[j] = hashes[e]
            new_offsets[j] = pos
            new_lengths[j] = size
            new_counts[j] = counts[e]
            new_blob[pos : pos + size] = blob[offsets[e] : offsets[e] + size]
            pos += size
            j += 1
    return new_hashes, new_offsets, new_lengths, new_counts, new_blob, m, used
