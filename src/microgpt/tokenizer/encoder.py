r"""The hot path of encoding ordinary text.

With numba and one of the three known patterns, the whole text goes to compiled code at once: split
(:mod:`~microgpt.tokenizer.split_kernels`), then every chunk's BPE (:mod:`~microgpt.tokenizer.bpe_kernels`), with
no Python object per chunk and no cache needed. Otherwise (a custom pattern, or no JIT): split with the regex,
look up caches, BPE only what was never seen. Two caches make repeated text cheap:

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

Raw bytes that are not valid UTF-8 (:meth:`ChunkEncoder.encode_bytes`) follow tiktoken's ``_encode_bytes``: the
regex needs text, so the valid prefix is encoded as text and everything from the first invalid byte on joins the
prefix's last chunk as one BPE piece.
"""

from __future__ import annotations

from collections import deque
from itertools import accumulate, chain, compress, islice, repeat
from operator import is_

import numpy as np
import numpy.typing as npt
import regex

from microgpt.tokenizer.bpe_jit import ChunkBPE, jit_available, use_compiled
from microgpt.tokenizer.patterns import PATTERN_KINDS, pattern_name

CHUNK_CACHE_LIMIT = 1 << 18  # entries before a cache is cleared (bounded memory on endless streams)
SEGMENT_CACHE_LIMIT = 1 << 18
MAX_CACHED_SEGMENT = 64  # longer segments (URLs, text without spaces) are not worth a cache entry
SPACE_BYTES = b" \n\t"  # tokens of only these bytes join the re-encoded tail of invalid UTF-8 (tiktoken's rule)

# Cached ids are tuples, not lists: the cyclic garbage collector stops tracking a tuple of ints, whereas each of
# the ~10^5 lists a cold pass would cache stays tracked and is re-scanned by every full collection (measured:
# a fifth of a cold pass went to the collector with lists).
Ids = tuple[int, ...]


class ChunkEncoder:
    """Encodes ordinary text (no special tokens) with a split pattern and ranks, through the caches."""

    def __init__(self, ranks: dict[bytes, int], pattern: str, compiled: regex.Pattern[str]) -> None:
        """Build the caches; the segment cache only for the three known patterns (see the module docstring)."""
        self.findall = compiled.findall
        self.bpe = ChunkBPE(ranks)
        self.chunks: dict[str, Ids] = {}  # chunk text → ids
        # Segment → ids, for the three known patterns only (see the module docstring).
        name = pattern_name(pattern)
        self.segments: dict[str, Ids] | None = None if name is None else {}
        self.compiled_kind = PATTERN_KINDS[name] if name is not None and jit_available() else None
        self._space_tokens: dict[int, int] | None = None  # id → length of the tokens made only of SPACE_BYTES

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; raises ``UnicodeEncodeError`` on a lone surrogate (the caller fixes the text)."""
        if self.compiled_kind is not None and use_compiled(len(text)):
            return self.bpe.encode_text(text.encode("utf-8"), self.compiled_kind)
        if self.segments is None:
            return list(chain.from_iterable(self._chunk_ids(self.findall(text))))
        segments = split_segments(text)
        found: list[Ids | None] = list(map(self.segments.get, segments))
        if None in found:
            self._fill_missing(segments, found)
        return list(chain.from_iterable(found))  # type: ignore[arg-type]  # no None is left

    def encode_array(self, text: str) -> npt.NDArray[np.uint32]:
        """:meth:`encode` as a ``uint32`` array; the compiled path never makes a Python int per token."""
        if self.compiled_kind is not None and use_compiled(len(text)):
            return self.bpe.encode_text_array(text.encode("utf-8"), self.compiled_kind).astype(np.uint32)
        return np.array(self.encode(text), dtype=np.uint32)

    def encode_bytes(self, data: bytes) -> list[int]:
        r"""Token ids of raw bytes, valid UTF-8 or not, exactly as tiktoken's ``Encoding._encode_bytes``.

        Valid UTF-8 is encoded as its text. Otherwise the longest valid prefix is encoded as text; the tokens of
        its last chunk are taken back (with the all-whitespace tokens just before them when that chunk starts
        with one: patterns such as cl100k's ``\s*[\r\n]+`` move such splits as text grows), and their bytes plus
        every byte from the first invalid one to the end are BPE-encoded as ONE piece, with no regex split. This
        guesses what a model saw for truncated UTF-8 well, and it never loses a byte: the ids decode to ``data``.
        """
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            valid = error.start  # bytes before the first invalid sequence are valid UTF-8 (Rust's valid_up_to)
        else:
            return self.encode(text)
        prefix = data[:valid].decode("utf-8")
        ids = self.encode(prefix)
        tail = valid  # where the piece to re-encode starts in data
        if ids:
            last = self.last_chunk(prefix)
            taken = len(self.bpe.encode([last])[0])
            tail -= len(last.encode("utf-8"))
            spaces = self.space_tokens()
            if ids[-taken] in spaces:
                while taken < len(ids) and ids[-taken - 1] in spaces:
                    taken += 1
                    tail -= spaces[ids[-taken]]
            del ids[len(ids) - taken :]
        ids += self.bpe.encode_piece(data[tail:])
        return ids

    def last_chunk(self, text: str) -> str:
        """The last chunk the pattern cuts from ``text`` (which gave tokens); known patterns: from the last segment."""
        start = 0
        if self.segments is not None:  # the chunks of the last segment depend on it alone (module docstring)
            start = text.rfind(" ")
            while start > 0 and text[start - 1].isspace():
                start = text.rfind(" ", 0, start)
        chunks: list[str] = self.findall(text[max(start, 0) :])
        assert chunks, "text that gave tokens has a chunk"
        return chunks[-1]

    def space_tokens(self) -> dict[int, int]:
        """Id → byte length of every token made only of spaces, newlines and tabs (built on first use)."""
        if self._space_tokens is None:
            ranks = self.bpe.ranks
            self._space_tokens = {r: len(t) for t, r in ranks.items() if t and not t.translate(None, SPACE_BYTES)}
        return self._space_tokens

    def _fill_missing(self, segments: list[str], found: list[Ids | None]) -> None:
        """Encode the segments not in the cache with ONE regex call over all of them, joined.

        Joining is safe: every missing segment but the text's first starts with a space, and every one but
        the text's last ends with a non-whitespace character, so a chunk boundary lies at each junction.
        """
        missing = list(compress(range(len(found)), map(is_, found, repeat(None))))
        texts = list(map(segments.__getitem__, missing))
        chunks = self.findall("".join(texts))
        chunk_ids = self._chunk_ids(chunks)
        cache = self.segments
        assert cache is not None
        if len(cache) + len(missing) > SEGMENT_CACHE_LIMIT:
            cache.clear()
        # Each missing segment is a run of whole chunks: the chunk index where each segment ends, from offsets.
        # Everything below runs in C iterators (no Python frame per segment): cold passes fill ~10^5 segments.
        chunk_at_end = {0: 0} | dict(zip(accumulate(map(len, chunks)), range(1, len(chunks) + 1), strict=True))
        ends = list(map(chunk_at_end.__getitem__, accumulate(map(len, texts))))
        assert ends[-1] == len(chunks), "segments and chunks disagree"
        runs = map(chunk_ids.__getitem__, map(slice, [0, *ends], ends))
        segment_ids = list(map(tuple, map(chain.from_iterable, runs)))
        deque(map(found.__setitem__, missing, segment_ids), maxlen=0)
        cache.update(compress(zip(texts, segment_ids, strict=True), map(MAX_CACHED_SEGMENT.__ge__, map(len, texts))))

    def _chunk_ids(self, chunks: list[str]) -> list[Ids]:
        """The ids of each chunk: from the chunk cache, the misses BPE-encoded together in one batch."""
        cache = self.chunks
        found = list(map(cache.get, chunks))
        if None not in found:
            return found  # type: ignore[return-value]  # no None
        new = list(dict.fromkeys(compress(chunks, map(is_, found, repeat(None)))))
        encoded = self.bpe.encode(new)  # UnicodeEncodeError on a lone surrogate
        if len(cache) + len(new) > CHUNK_CACHE_LIMIT:
            cache.clear()
            fresh = dict(zip(new, encoded, strict=True))
            return [ids if ids is not None else fresh[chunk] for chunk, ids in zip(chunks, found, strict=True)]
        cache.update(zip(new, encoded, strict=True))
        return list(map(cache.__getitem__, chunks))


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
