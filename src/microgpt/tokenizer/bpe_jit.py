"""Rank-ordered BPE of many chunks in one compiled call (numba), with the pure-Python loop as the fallback.

Same algorithm and the same ids as :func:`~microgpt.tokenizer.bpe.encode_chunk` (the tests compare them): merge
the adjacent pair of parts whose concatenation has the lowest rank, leftmost on a tie. The compiled kernel looks
token bytes up in an open-addressing hash table (FNV-1a over the bytes) built once per rank table, so it never
makes a Python object per look-up; the chunks of one text go in as one byte buffer, so the call overhead is paid
per text, not per chunk.

numba compiles the kernels on first use and keeps the machine code on disk (``cache=True``), so only the first
process after an install pays the compile. Without numba, or with ``MICROGPT_KERNELS=0`` (the one switch for
every fast path, :mod:`microgpt.common.kernels`), the pure-Python loop runs instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import accumulate, compress, repeat
from operator import is_
from typing import Any

import numpy as np
import numpy.typing as npt

from microgpt.common.kernels import kernels_enabled
from microgpt.tokenizer.bpe import encode_chunk
from microgpt.tokenizer.patterns import class_table


def _load_kernels() -> tuple[Any, Any, Any] | None:
    """The compiled (build_table, encode_chunks, chunk_starts); ``None`` without numba or if ``MICROGPT_KERNELS=0``."""
    if not kernels_enabled():
        return None
    try:
        from microgpt.tokenizer import bpe_kernels, split_kernels
    except ImportError:
        return None
    return bpe_kernels.build_table, bpe_kernels.encode_chunks, split_kernels.chunk_starts


_KERNELS: tuple[Any, Any, Any] | None | bool = False  # False: not loaded yet


def _kernels() -> tuple[Any, Any, Any] | None:
    global _KERNELS
    if _KERNELS is False:
        _KERNELS = _load_kernels()
    assert _KERNELS is not True
    return _KERNELS


# A fresh install compiles the kernels on first use (~40 s for split + encode). Until they are compiled or found
# in numba's cache on disk, the first COMPILE_AFTER_BYTES of text a process encodes take the plain loop (the
# bundled demo's 2 MB: ~1 s), and only a bigger job pays the compile, once.
COMPILE_AFTER_BYTES = 16 << 20
_plain_bytes = 0
_ready = False
_disk_checked = False  # numba's cache is looked up once per process, not per call


def _cached_on_disk(kernels: tuple[Any, ...]) -> bool:
    """Whether numba's on-disk cache holds every kernel (then loading them costs ~0.1 s, not a compile)."""
    for kernel in kernels:
        cache_file = getattr(getattr(kernel, "_cache", None), "_cache_file", None)
        index = getattr(cache_file, "_index_path", None)
        if not isinstance(index, str) or not os.path.exists(index):
            return False
    return True


def use_compiled(n_bytes: int) -> bool:
    """Whether to encode ``n_bytes`` of text with the compiled kernels (see ``COMPILE_AFTER_BYTES``)."""
    global _plain_bytes, _ready, _disk_checked
    if _ready:
        return True
    kernels = _kernels()
    if kernels is None:
        return False
    if not _disk_checked:
        _disk_checked = True
        _ready = _cached_on_disk(kernels)
    if _plain_bytes >= COMPILE_AFTER_BYTES:
        _ready = True
    if not _ready:
        _plain_bytes += n_bytes
    return _ready


def jit_available() -> bool:
    """Whether the compiled kernel runs (numba importable and ``MICROGPT_KERNELS`` not ``0``)."""
    return _kernels() is not None


class ChunkBPE:
    """Encodes many chunks at once from one rank table: compiled when numba is there, else pure Python."""

    def __init__(self, ranks: dict[bytes, int]) -> None:
        """Keep the ranks; the hash table is built on the first call (so loading a tokenizer stays cheap)."""
        self.ranks = ranks
        self._table: tuple[Any, ...] | None = None

    def _hash_table(self, build_table: Any) -> tuple[Any, ...]:
        """The kernels' ``(slots, blob, max_len)`` arguments, built on first use and kept."""
        if self._table is None:
            tokens = list(self.ranks)
            blob = np.frombuffer(b"".join(tokens), np.uint8)
            offsets = np.zeros(len(tokens) + 1, np.int64)
            offsets[1:] = np.cumsum(np.fromiter(map(len, tokens), np.int64, len(tokens)))
            ranks = np.fromiter(self.ranks.values(), np.int64, len(tokens))
            max_len = int(np.diff(offsets).max(initial=0))
            self._table = build_table(blob, offsets, ranks), blob, max_len
        return self._table

    def prepare(self) -> None:
        """Load the compiled kernel and build the hash table now (before forking workers, so they share both)."""
        kernels = _kernels()
        if kernels is not None and self._table is None:
            table = self._hash_table(kernels[0])
            data = np.frombuffer(b"", np.uint8)  # read-only like encode's: the same compiled signature
            kernels[1](data, np.zeros(1, np.int64), *table)  # loads the machine code
            kernels[2](data, 0, class_table())
            global _ready
            _ready = True

    def encode(self, chunks: Sequence[str]) -> list[tuple[int, ...]]:
        """The ids of each chunk; raises ``UnicodeEncodeError`` on a lone surrogate (the caller fixes the text)."""
        pieces = [chunk.encode("utf-8") for chunk in chunks]
        whole = list(map(self.ranks.get, pieces))  # a chunk that is a token is that token (tiktoken's rule too)
        if None not in whole:
            return [(rank,) for rank in whole]  # type: ignore[misc]  # no None
        rest = iter(self._encode_pieces(list(compress(pieces, map(is_, whole, repeat(None))))))
        return [(rank,) if rank is not None else next(rest) for rank in whole]

    def encode_piece(self, piece: bytes) -> tuple[int, ...]:
        """BPE of one piece of raw bytes (any bytes, not only UTF-8), with no split: a piece that is a token is it."""
        whole = self.ranks.get(piece)
        return (whole,) if whole is not None else self._encode_pieces([piece])[0]

    def _encode_pieces(self, pieces: list[bytes]) -> list[tuple[int, ...]]:
        """BPE of pieces that are not single tokens: compiled in one call when the kernels are ready."""
        kernels = _kernels() if use_compiled(0) else None  # the text's bytes were counted by the encoder
        if kernels is None:
            ranks = self.ranks
            return [tuple(encode_chunk(piece, ranks)) for piece in pieces]
        build_table, encode_chunks, _ = kernels
        starts = np.zeros(len(pieces) + 1, np.int64)
        starts[1:] = np.cumsum(np.fromiter(map(len, pieces), np.int64, len(pieces)))
        data = np.frombuffer(b"".join(pieces), np.uint8)
        flat, counts = encode_chunks(data, starts, *self._hash_table(build_table))
        ids: tuple[int, ...] = tuple(flat.tolist())
        ends = list(accumulate(counts.tolist()))
        return [ids[a:b] for a, b in zip([0, *ends], ends, strict=False)]

    def encode_text(self, text: bytes, kind: int) -> list[int]:
        """Split UTF-8 ``text`` with a known pattern (``patterns.PATTERN_KINDS``) and encode it, all compiled.

        Only when :func:`jit_available`; nothing here makes a Python object per chunk, and both kernels release
        the GIL, so threads encode in parallel.
        """
        ids: list[int] = self.encode_text_array(text, kind).tolist()
        return ids

    def encode_text_array(self, text: bytes, kind: int) -> npt.NDArray[np.int64]:
        """:meth:`encode_text` as the kernel's own ``int64`` array (no Python int per token)."""
        kernels = _kernels()
        assert kernels is not None, "encode_text needs the compiled kernels"
        build_table, encode_chunks, chunk_starts = kernels
        data = np.frombuffer(text, np.uint8)
        flat: npt.NDArray[np.int64]
        flat, _ = encode_chunks(data, chunk_starts(data, kind, class_table()), *self._hash_table(build_table))
        return flat
