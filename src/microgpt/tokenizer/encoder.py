r"""The hot path of encoding ordinary text: split, look up caches, BPE only what was never seen.

Two caches make repeated text cheap:

* a **chunk cache** (chunk text → ids): BPE runs once per distinct chunk;
* a **segment cache** for the known patterns (``gpt2``, ``gpt4``, ``o200k``): the text is cut before every
  space that follows a non-whitespace character, with ``str.split`` (C speed), and each short segment
  (" world,") maps straight to its ids, skipping the regex on a hit. The segments that miss are joined and
  split with one regex call per text.

Why the segment cut is safe for those three patterns: no alternative of theirs can match a non-whitespace
character followed by a space (letters, digits and punctuation runs stop before a space; a space may only
*start* a chunk; whitespace-only alternatives cannot hold the non-whitespace character), and none looks
behind, so a chunk boundary always lies before such a space, and the chunks on either side depend only on
their own side (lookaheads such as ``(?!\S)`` and ``$`` cannot reach past a segment's non-whitespace last
character). The parity tests against tiktoken check this on all the shared text (hundreds of languages) and
on generated text. A custom pattern gets no segment cache.
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


class ChunkEncoder:
    """Encodes ordinary text (no special tokens) with a split pattern and ranks, through the caches."""

    def __init__(self, ranks: dict[bytes, int], pattern: str, compiled: regex.Pattern[str]) -> None:
        """Build the caches; the segment cache only for the three known patterns (see the module docstring)."""
        self.findall = compiled.findall
        self.chunks = _ChunkCache(ranks)
        # Segment → ids, for the three known patterns only (see the module docstring).
        self.segments: dict[str, list[int]] | None = None if pattern_name(pattern) is None else {}

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; raises ``UnicodeEncodeError`` on a lone surrogate (the caller fixes the text)."""
        if self.segments is None:
            return list(chain.from_iterable(map(self.chunks.__getitem__, self.findall(text))))
        segments = split_segments(text)
        found: list[list[int] | None] = list(map(self.segments.get, segments))
        if None in found:
            self._fill_missing(segments, found)
        return list(chain.from_iterable(found))  # type: ignore[arg-type]  # no None is left

    def _fill_missing(self, segments: list[str], found: list[list[int] | None]) -> None:
        """Encode the segments not in the cache with ONE regex call over all of them, joined.

        Joining is safe: every missing segment but the text's first starts with a space, and every one but
        the text's last ends with a non-whitespace character, so a chunk boundary lies at each junction.
        """
        missing = [i for i, ids in enumerate(found) if ids is None]
        chunks = self.findall("".join([segments[i] for i in missing]))
        chunk_ids = self.chunks.__getitem__
        cache = self.segments
        assert cache is not None
        if len(cache) + len(missing) > SEGMENT_CACHE_LIMIT:
            cache.clear()
        k = 0
        for i in missing:
            segment = segments[i]
            left = len(segment)
            ids: list[int] = []
            while left > 0:  # this segment's chunks are the next ones, adding up to its length
                chunk = chunks[k]
                k += 1
                left -= len(chunk)
                ids += chunk_ids(chunk)
            found[i] = ids
            if len(segment) <= MAX_CACHED_SEGMENT:
                cache[segment] = ids
        assert k == len(chunks), "segments and chunks disagree"


def split_segments(text: str) -> list[str]:
    """Cut ``text`` before every space that follows a non-whitespace character (``"".join`` gives it back)."""
    parts = text.split(" ")
    segments: list[str] = []
    append = segments.append
    segment = parts[0]
    for part in islice(parts, 1, None):
        if segment and not segment[-1].isspace():  # a chunk boundary lies before this space
            append(segment)
            segment = " " + part
        else:
            segment = f"{segment} {part}"
    append(segment)
    return segments
