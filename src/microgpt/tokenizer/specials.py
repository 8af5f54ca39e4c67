"""Special tokens in text: tiktoken's allowed/disallowed rule, and finding their spellings in ``str`` or ``bytes``.

By default a text that spells a special token (``"<|endoftext|>"``) is refused (:class:`DisallowedSpecialError`):
the caller says which spellings become special ids (``allowed_special``) and which may stay plain text
(``disallowed_special=()``), as in tiktoken. In ``bytes`` a special token is found by its UTF-8 bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterator
from typing import Literal

import regex

from microgpt.common.errors import MicrogptError

AllSpecial = Literal["all"]


class DisallowedSpecialError(MicrogptError, ValueError):
    """Text spells a special token that the caller did not allow (a ``ValueError``, as in tiktoken)."""


def check_special(
    text: str | bytes,
    special_tokens: set[str],
    allowed_special: AllSpecial | Collection[str],
    disallowed_special: AllSpecial | Collection[str],
) -> set[str]:
    """Raise if ``text`` spells a disallowed special token; return the allowed special tokens.

    Args:
        text: The text (or bytes) to encode.
        special_tokens: The tokenizer's special token texts.
        allowed_special: Special tokens to encode as their id (``"all"`` for every one).
        disallowed_special: Special tokens whose spelling raises (``"all"``: every one not allowed).

    Returns:
        The allowed special tokens that the tokenizer has.

    Raises:
        DisallowedSpecialError: When ``text`` spells a disallowed special token.
    """
    allowed = special_tokens if isinstance(allowed_special, str) else set(allowed_special)
    if isinstance(disallowed_special, str):
        disallowed = special_tokens - allowed
    else:
        disallowed = set(disallowed_special)
    if disallowed and (special := first_special(text, frozenset(disallowed))):
        raise DisallowedSpecialError(
            f"text contains the special token {special!r}, which is disallowed; pass "
            f"allowed_special={{{special!r}}} to encode it as a special token, or "
            f"disallowed_special=() to encode it as plain text"
        )
    return allowed & special_tokens


def find_specials(text: str | bytes, tokens: frozenset[str]) -> Iterator[tuple[int, int, str]]:
    """``(start, end, token)`` of each special token spelled in ``text``, left to right (as bytes in bytes)."""
    if not tokens:
        return
    if isinstance(text, str):
        for found in _special_regex(tokens).finditer(text):
            yield found.start(), found.end(), found.group()
    else:
        for match in _special_bytes_regex(tokens).finditer(text):
            yield match.start(), match.end(), match.group().decode("utf-8")


def first_special(text: str | bytes, tokens: frozenset[str]) -> str | None:
    """The first special token of ``tokens`` spelled in ``text`` (``tokens`` not empty), or ``None``."""
    if isinstance(text, str):
        found = _special_regex(tokens).search(text)
        return None if found is None else found.group()
    match = _special_bytes_regex(tokens).search(text)
    return None if match is None else match.group().decode("utf-8")


def _longest_first(tokens: frozenset[str]) -> list[str]:
    """Longest first, so that a token that prefixes another loses to it."""
    return sorted(tokens, key=lambda t: (-len(t), t))


@functools.lru_cache(maxsize=64)
def _special_regex(tokens: frozenset[str]) -> regex.Pattern[str]:
    """One regex that finds any of ``tokens``."""
    return regex.compile("|".join(regex.escape(t) for t in _longest_first(tokens)))


@functools.lru_cache(maxsize=64)
def _special_bytes_regex(tokens: frozenset[str]) -> regex.Pattern[bytes]:
    """One regex that finds the UTF-8 bytes of any of ``tokens``."""
    return regex.compile(b"|".join(regex.escape(t.encode("utf-8")) for t in _longest_first(tokens)))
