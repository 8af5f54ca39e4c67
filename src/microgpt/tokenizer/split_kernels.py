r"""Compiled pre-tokenization (numba) for the three known split patterns: the same chunks as the regex, no str.

:func:`chunk_starts` walks a text's UTF-8 bytes once and returns where each chunk starts, exactly where
``regex.findall`` with ``gpt2``, ``gpt4`` (cl100k) or ``o200k`` would cut it; :mod:`microgpt.tokenizer.bpe_kernels`
then encodes the chunks from those offsets. No Python object is made per chunk, which is what the regex path
spends most of its time on. Each ``_end_*`` function below is its pattern's alternatives in the regex's order,
with the same backtracking (written out in comments); the tests compare the chunks with the regex's on every
code point and on generated text.

Character classes come from a table built with the ``regex`` package itself (:func:`class_table`), so ``\p{L}``,
``\p{N}``, ``\s`` and the ``(?i)`` letters mean exactly what they mean in the patterns.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from microgpt.tokenizer.patterns import LETTER, LOWER, NUMBER, PATTERN_KINDS, SPACE, UPPER

GPT2, GPT4, O200K = PATTERN_KINDS["gpt2"], PATTERN_KINDS["gpt4"], PATTERN_KINDS["o200k"]

_CR, _LF, _SP, _QUOTE, _SLASH = 13, 10, 32, 39, 47


@numba.njit(cache=True, inline="always")
def _is(table: Any, cps: Any, i: int, n: int, bits: int) -> bool:
    """Whether code point ``i`` exists and has any of ``bits``."""
    return i < n and (table[cps[i]] & bits) != 0


@numba.njit(cache=True, inline="always")
def _is_other(table: Any, cps: Any, i: int, n: int) -> bool:
    r"""``[^\s\p{L}\p{N}]``."""
    return i < n and (table[cps[i]] & (LETTER | NUMBER | SPACE)) == 0


@numba.njit(cache=True, inline="always")
def _is_newline(cps: Any, i: int, n: int) -> bool:
    r"""``[\r\n]``."""
    return i < n and (cps[i] == _CR or cps[i] == _LF)


@numba.njit(cache=True, inline="always")
def _letter(table: Any, cps: Any, i: int, n: int) -> int:
    """The ASCII letter that code point ``i`` equals case-insensitively, else 0."""
    return table[cps[i]] >> 8 if i < n else 0


@numba.njit(cache=True, inline="always")
def _run(table: Any, cps: Any, i: int, n: int, bits: int) -> int:
    """End of the run of code points from ``i`` that have any of ``bits``."""
    while i < n and (table[cps[i]] & bits) != 0:
        i += 1
    return i


@numba.njit(cache=True, inline="always")
def _other_run(table: Any, cps: Any, i: int, n: int) -> int:
    while _is_other(table, cps, i, n):
        i += 1
    return i


@numba.njit(cache=True, inline="always")
def _digits_end(table: Any, cps: Any, i: int, n: int) -> int:
    r"""End of ``\p{N}{1,3}`` at ``i`` (a number): up to three, greedily."""
    end = i + 1
    while end < i + 3 and _is(table, cps, end, n, NUMBER):
        end += 1
    return end


@numba.njit(cache=True, inline="always")
def _contraction(table: Any, cps: Any, i: int, n: int, ignore_case: bool) -> int:
    """End of ``'(?:[sdmt]|ll|ve|re)`` at ``i`` (letters case-insensitive if asked), or -1."""
    if i >= n or cps[i] != _QUOTE:
        return -1
    a, b = _letter(table, cps, i + 1, n), _letter(table, cps, i + 2, n)
    if not ignore_case:  # only the ASCII lowercase letters themselves
        a = a if i + 1 < n and cps[i + 1] == a else 0
        b = b if i + 2 < n and cps[i + 2] == b else 0
    if a == 115 or a == 100 or a == 109 or a == 116:  # s d m t
        return i + 2
    if (a == 108 and b == 108) or (a == 118 and b == 101) or (a == 114 and b == 101):  # ll ve re
        return i + 3
    return -1


@numba.njit(cache=True, inline="always")
def _whitespace_tail(table: Any, cps: Any, i: int, n: int, newline_alt: bool, end_first: bool) -> int:
    r"""The whitespace alternatives at ``i`` (a whitespace code point), common to all three patterns.

    ``\s++$`` (gpt2, gpt4 — tried first when ``end_first``) or the final ``\s+(?!\S)``: a run reaching the end
    is one chunk. ``\s*[\r\n]`` (gpt4; o200k's ``\s*[\r\n]+`` ends at the same place): the run backs off to
    its last newline. ``\s+(?!\S)``: a run of two or more followed by a non-space backs off one code point, so
    the last space joins the next word. Else ``\s`` (o200k: ``\s+``, which here is one code point too).
    """
    end = _run(table, cps, i, n, SPACE)
    if end_first and end == n:
        return end
    if newline_alt:
        for k in range(end - 1, i - 1, -1):
            if cps[k] == _CR or cps[k] == _LF:
                return k + 1
    if end == n:
        return end
    if end - i >= 2:
        return end - 1
    return i + 1


@numba.njit(cache=True)
def _end_gpt2(table: Any, cps: Any, i: int, n: int) -> int:
    r"""``'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s``."""
    end = _contraction(table, cps, i, n, False)
    if end >= 0:
        return end
    start = i + 1 if cps[i] == _SP else i  # " ?" then a run; without the space the run cannot start at a space
    if _is(table, cps, start, n, LETTER):
        return _run(table, cps, start, n, LETTER)
    if _is(table, cps, start, n, NUMBER):
        return _run(table, cps, start, n, NUMBER)
    if _is_other(table, cps, start, n):
        return _other_run(table, cps, start, n)
    return _whitespace_tail(table, cps, i, n, False, True)


@numba.njit(cache=True)
def _end_gpt4(table: Any, cps: Any, i: int, n: int) -> int:
    r"""The gpt4 (cl100k) pattern's alternatives, in order.

    ``'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|``
    ``\s+(?!\S)|\s``
    """
    end = _contraction(table, cps, i, n, True)
    if end >= 0:
        return end
    # [^\r\n\p{L}\p{N}]?+\p{L}++ : the possessive prefix is taken whenever it can be, then letters must follow.
    if _is(table, cps, i, n, LETTER):
        return _run(table, cps, i, n, LETTER)
    if not _is(table, cps, i, n, NUMBER) and not _is_newline(cps, i, n) and _is(table, cps, i + 1, n, LETTER):
        return _run(table, cps, i + 1, n, LETTER)
    if _is(table, cps, i, n, NUMBER):  # \p{N}{1,3}+
        return _digits_end(table, cps, i, n)
    start = i + 1 if cps[i] == _SP else i  # " ?[^\s\p{L}\p{N}]++[\r\n]*+"
    if _is_other(table, cps, start, n):
        end = _other_run(table, cps, start, n)
        while _is_newline(cps, end, n):
            end += 1
        return end
    return _whitespace_tail(table, cps, i, n, True, True)


@numba.njit(cache=True, inline="always")
def _o200k_suffix(table: Any, cps: Any, i: int, n: int) -> int:
    """``(?i:'s|'t|'re|'ve|'m|'ll|'d)?`` at ``i``: its end (``i`` when absent)."""
    end = _contraction(table, cps, i, n, True)
    return end if end >= 0 else i


@numba.njit(cache=True)
def _o200k_lower_word(table: Any, cps: Any, s: int, n: int) -> int:
    r"""``[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+`` + suffix at ``s``, or -1.

    The greedy upper run backs off until a lower-class code point follows; the classes overlap (Lm, Lo, M), so
    that code point may be the run's own last one.
    """
    upper_end = _run(table, cps, s, n, UPPER)
    for m in range(upper_end, s - 1, -1):
        if _is(table, cps, m, n, LOWER):
            return _o200k_suffix(table, cps, _run(table, cps, m, n, LOWER), n)
    return -1


@numba.njit(cache=True)
def _end_o200k(table: Any, cps: Any, i: int, n: int) -> int:
    r"""o200k's seven alternatives (see ``patterns.O200K_PATTERN``), in order."""
    prefix = not _is(table, cps, i, n, LETTER | NUMBER) and not _is_newline(cps, i, n)  # [^\r\n\p{L}\p{N}]?
    first = i + 1 if prefix else i
    for s in range(first, i - 1, -1):  # the greedy "?" tries with the prefix first, then without
        end = _o200k_lower_word(table, cps, s, n)
        if end >= 0:
            return end
    for s in range(first, i - 1, -1):  # [U]+[L]* + suffix
        if _is(table, cps, s, n, UPPER):
            return _o200k_suffix(table, cps, _run(table, cps, _run(table, cps, s, n, UPPER), n, LOWER), n)
    if _is(table, cps, i, n, NUMBER):  # \p{N}{1,3}
        return _digits_end(table, cps, i, n)
    start = i + 1 if cps[i] == _SP and _is_other(table, cps, i + 1, n) else i  # " ?[^\s\p{L}\p{N}]+[\r\n/]*"
    if _is_other(table, cps, start, n):
        end = _other_run(table, cps, start, n)
        while _is_newline(cps, end, n) or (end < n and cps[end] == _SLASH):
            end += 1
        return end
    if _is(table, cps, i, n, SPACE):  # \s*[\r\n]+|\s+(?!\S)|\s+ (no \s++$ first, unlike gpt2 and gpt4)
        return _whitespace_tail(table, cps, i, n, True, False)
    return i + 1  # not reached: every code point is a letter, number, space or other


@numba.njit(cache=True, nogil=True)
def chunk_starts(data: Any, kind: int, table: Any) -> Any:
    """Byte offsets where each chunk of the UTF-8 text ``data`` starts, then ``len(data)`` (int64).

    ``data`` must be valid UTF-8 (it comes from ``str.encode``).
    """
    n_bytes = len(data)
    cps = np.empty(n_bytes, np.int32)  # code points
    offsets = np.empty(n_bytes + 1, np.int64)  # where each code point's bytes start
    n, b = 0, 0
    while b < n_bytes:
        lead = np.int32(data[b])
        offsets[n] = b
        if lead < 0x80:
            cps[n] = lead
            b += 1
        elif lead < 0xE0:
            cps[n] = ((lead & 0x1F) << 6) | (data[b + 1] & 0x3F)
            b += 2
        elif lead < 0xF0:
            cps[n] = ((lead & 0x0F) << 12) | ((data[b + 1] & 0x3F) << 6) | (data[b + 2] & 0x3F)
            b += 3
        else:
            cps[n] = ((lead & 0x07) << 18) | ((data[b + 1] & 0x3F) << 12) | ((data[b + 2] & 0x3F) << 6)
            cps[n] |= data[b + 3] & 0x3F
            b += 4
        n += 1
    offsets[n] = n_bytes
    starts = np.empty(n + 1, np.int64)
    count, i = 0, 0
    while i < n:
        starts[count] = offsets[i]
        count += 1
        if kind == GPT2:
            i = _end_gpt2(table, cps, i, n)
        elif kind == GPT4:
            i = _end_gpt4(table, cps, i, n)
        else:
            i = _end_o200k(table, cps, i, n)
    starts[count] = n_bytes
    return starts[: count + 1]
