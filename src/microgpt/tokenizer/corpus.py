"""A training corpus in bounded pieces: cap it at a byte budget, cut long documents and stream files.

A long document (a whole file) is cut only where the known patterns always end a chunk (:func:`cut_document`),
so counting the pieces gives exactly the counts of the whole; a file read block by block is cut the same way
(:func:`stream_document`) without ever holding it all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import regex

from microgpt.tokenizer.patterns import pattern_name

BATCH_CHARS = 1 << 20  # documents are sent to counting workers in batches of about this many characters

# Where each known pattern (gpt2, gpt4, o200k) always ends a chunk, whatever comes before or after: after a
# newline between two non-space characters, and before a space between two letters. A match of any alternative
# that holds the newline (or the letter) ends there, and no alternative looks behind, so the chunks of the text
# before and after the cut, counted apart, are exactly the chunks of the whole (tests check it on real text).
SAFE_CUT = regex.compile(r"(?<=\S\n)(?=\S)|(?<=\p{L})(?= \p{L})")


def utf8_bytes(text: str) -> bytes:
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
        size = len(utf8_bytes(doc)) if not doc.isascii() else len(doc)
        if size > left:
            yield utf8_bytes(doc)[:left].decode("utf-8", errors="ignore")
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
