r"""The hot path of encoding ordinary text: split, look up caches, BPE only what was never seen.

Two caches make repeated text cheap:

* a **chunk cache** (chunk text → ids): BPE runs once per distinct chunk;
* a **segment cache** for the known patterns (``gpt2``, ``gpt4``, ``o200k``): the text is cut at every space
  that follows a non-whitespace character, with ``str.split`` (C speed), and each short segment (" world,")
  maps straight to its ids, skipping the regex on a hit.

Why the segment cut is safe for those three patterns: no alternative of theirs can match a non-whitespace
character followed by a space (letters, digits and punctuation runs stop before a space; a space may only
*start* a chunk; whitespace-only alternatives cannot hold the non-whitespace character), and none looks
behind, so a chunk boundary always lies before such a space, and the chunks on either side depend only on
their own side (lookaheads such as ``(?!\S)`` and ``$`` cannot reach past a segment's non-whitespace last
character). The parity tests against tiktoken check this on real text in many languages and on generated
text. A custom pattern gets no segment cache.
"""

from __future__ import annotations

from itertools import chain, islice

import regex

from microgpt.tokenizer.bpe import encode_chunk
from microgpt.tokenizer.patterns import pattern_name

CHUNK_CACHE_LIMIT = 1 << 18  # entries before a cache is cleared (bounded memory on endless streams)
SEGMENT_CACHE_LIMIT = 1 << 18
MAX_CACHED_SEGMENT = 64  # longer segments (URLs, text without spaces) are not worth a cache entry


class _ChunkCache(dict[str, list[int]]):
    """Chunk text → ids; a miss runs BPE (``dict.__getitem__`` calls ``__missing__``)."""

    def __init__(self, ranks: dict[bytes, int]) -> None:
        super().__init__()
        self.ranks = ranks

    def __missing__(self, chunk: str) -> list[int]:
        ids = encode_chunk(chunk.encode("utf-8"), self.ranks)  # UnicodeEncodeError on a lone surrogate
        if len(self) >= CHUNK_CACHE_LIMIT:
            self.clear()
        self[chunk] = ids
        return ids


class _SegmentCache(dict[str, list[int]]):
    """Segment text → ids; a miss splits the segment with the pattern and encodes its chunks."""

    def __init__(self, pattern: regex.Pattern[str], chunks: _ChunkCache, words_are_chunks: bool) -> None:
        super().__init__()
        self.findall = pattern.findall
        self.chunk_ids = chunks.__getitem__
        self.words_are_chunks = words_are_chunks

    def __missing__(self, segment: str) -> list[int]:
        if self.words_are_chunks and (segment.isalpha() or (segment[:1] == " " and segment[1:].isalpha())):
            ids = self.chunk_ids(segment)  # " word" is one chunk: skip the regex call
        else:
            chunks = self.findall(segment)
            if len(chunks) == 1:
                ids = self.chunk_ids(chunks[0])
            else:
                ids = list(chain.from_iterable(map(self.chunk_ids, chunks)))
        if len(segment) <= MAX_CACHED_SEGMENT:
            if len(self) >= SEGMENT_CACHE_LIMIT:
                self.clear()
            self[segment] = ids
        return ids


class ChunkEncoder:
    """Encodes ordinary text (no special tokens) with a split pattern and ranks, through the caches."""

    def __init__(self, ranks: dict[bytes, int], pattern: str, compiled: regex.Pattern[str]) -> None:
        """Build the caches; the segment cache only for the three known patterns (see the module docstring)."""
        self.findall = compiled.findall
        self.chunks = _ChunkCache(ranks)
        name = pattern_name(pattern)
        # In gpt2 and gpt4, an optional space then letters is always exactly one chunk (not in o200k, which
        # splits CamelCase). str.isalpha() is "category L" — the same set as \p{L}, up to Unicode versions:
        # a letter newer than Python's tables is not alpha and just takes the regex path.
        self.segments = None if name is None else _SegmentCache(compiled, self.chunks, name in ("gpt2", "gpt4"))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; raises ``UnicodeEncodeError`` on a lone surrogate (the caller fixes the text)."""
        if self.segments is None:
            return list(chain.from_iterable(map(self.chunks.__getitem__, self.findall(text))))
        parts = text.split(" ")
        ids: list[int] = []
        extend = ids.extend
        segment_ids = self.segments.__getitem__
        segment = parts[0]
        for part in islice(parts, 1, None):
            if segment and not segment[-1].isspace():  # a chunk boundary lies before this space
                extend(segment_ids(segment))
                segment = " " + part
            else:
                segment = f"{segment} {part}"
        extend(segment_ids(segment))
        return ids
