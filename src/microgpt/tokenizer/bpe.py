"""The byte-level BPE algorithm as pure functions: split, count pairs, merge, and encode one chunk from ranks.

No I/O and no state: the :class:`~microgpt.tokenizer.tokenizer.Tokenizer` and the trainer are built on these.
Tokens are identified by their *rank* (its id); a merged token's bytes are the concatenation of its parts.

>>> ranks = {bytes([i]): i for i in range(256)} | {b"ab": 256, b"abc": 257}
>>> encode_chunk(b"abcab", ranks)
[257, 256]
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence

import regex

_NO_RANK = sys.maxsize  # a pair that is not a token: never the minimum while a real rank remains


def split_chunks(text: str, pattern: regex.Pattern[str]) -> list[str]:
    """Cut ``text`` into the chunks that BPE encodes independently (merges never cross a chunk boundary)."""
    return pattern.findall(text)


def pair_counts(ids: Sequence[int], counts: dict[tuple[int, int], int] | None = None) -> dict[tuple[int, int], int]:
    """Count adjacent pairs of ``ids``, adding to ``counts`` when given.

    >>> pair_counts([1, 2, 3, 1, 2])
    {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    """
    result = {} if counts is None else counts
    for pair in zip(ids, ids[1:], strict=False):
        result[pair] = result.get(pair, 0) + 1
    return result


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each non-overlapping occurrence of ``pair``, left to right, with ``new_id``.

    >>> merge_pair([1, 1, 1, 2], (1, 1), 9)
    [9, 1, 2]
    """
    first, second = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == first and ids[i + 1] == second:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def encode_chunk(piece: bytes, ranks: Mapping[bytes, int]) -> list[int]:
    """Encode one chunk by rank order, as tiktoken does.

    Repeatedly merge the adjacent pair of parts whose concatenation is the token of lowest rank (leftmost on a
    tie), until no adjacent pair is a token.

    Rank files hold token ranks, not a merge list, so this works from ``ranks`` alone. Every single byte must be
    a token (byte-level BPE).

    Args:
        piece: The chunk's UTF-8 bytes.
        ranks: Token bytes → rank (the token id).

    Returns:
        The token ids of the chunk.
    """
    whole = ranks.get(piece)
    if whole is not None:
        return [whole]
    # bounds[j] is where part j starts; pair_ranks[j] is the rank of parts j and j+1 joined (or _NO_RANK).
    bounds = list(range(len(piece) + 1))
    pair_ranks = [ranks.get(piece[i : i + 2], _NO_RANK) for i in range(len(piece) - 1)]
    while pair_ranks:
        best = min(pair_ranks)
        if best == _NO_RANK:
            break
        i = pair_ranks.index(best)  # leftmost of the lowest rank, like tiktoken
        del bounds[i + 1]
        del pair_ranks[i]
        if i > 0:
            pair_ranks[i - 1] = ranks.get(piece[bounds[i - 1] : bounds[i + 1]], _NO_RANK)
        if i < len(pair_ranks):
            pair_ranks[i] = ranks.get(piece[bounds[i] : bounds[i + 2]], _NO_RANK)
    return [ranks[piece[bounds[j] : bounds[j + 1]]] for j in range(len(bounds) - 1)]


def merges_to_ranks(merges: Iterable[tuple[int, int]], n_base: int = 256) -> dict[bytes, int]:
    """Turn an ordered merge list over byte ids into tiktoken-style ranks (byte ``b`` has rank ``b``).

    Merge ``k`` creates token ``n_base + k`` from the tokens of the pair.
    """
    vocab = [bytes([i]) for i in range(n_base)]
    for first, second in merges:
        vocab.append(vocab[first] + vocab[second])
    return {token: rank for rank, token in enumerate(vocab)}
