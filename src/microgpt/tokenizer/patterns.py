"""Pre-tokenization split patterns: the regexes that cut text into chunks before BPE runs on each chunk.

The patterns are the ones tiktoken defines for OpenAI's encodings (``tiktoken_ext/openai_public.py``); they use
possessive quantifiers (``++``), which the ``regex`` package supports and the standard ``re`` module does not.
"""

from __future__ import annotations

import functools

import numpy as np
import regex

from microgpt.common.errors import ConfigError

# GPT-2 (r50k_base, p50k_base, p50k_edit): tiktoken's faster equivalent of the original GPT-2 pattern.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

# GPT-4 (cl100k_base): case-insensitive contractions, digits in groups of at most three, newlines kept apart.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)

# GPT-4o (o200k_base): splits CamelCase words and keeps contractions with their word.
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

PATTERNS: dict[str, str] = {
    "gpt2": GPT2_PATTERN,
    "gpt4": GPT4_PATTERN,
    "cl100k": GPT4_PATTERN,
    "o200k": O200K_PATTERN,
}


def resolve_pattern(name_or_regex: str) -> str:
    """Return the regex for a pattern name (``gpt2``, ``gpt4``/``cl100k``, ``o200k``) or check a raw regex.

    Args:
        name_or_regex: A known name, or a regex in the syntax of the ``regex`` package.

    Returns:
        The regex source text.

    Raises:
        ConfigError: When the text is neither a known name nor a regex that compiles (or it matches empty text).
    """
    if name_or_regex in PATTERNS:
        return PATTERNS[name_or_regex]
    compile_pattern(name_or_regex)
    return name_or_regex


@functools.lru_cache(maxsize=32)
def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """Compile a split pattern once per process.

    Raises:
        ConfigError: When the pattern does not compile, or when it can match the empty string (it would then
            produce empty chunks and never advance).
    """
    if not pattern:
        names = ", ".join(sorted(PATTERNS))
        raise ConfigError(f"split pattern is empty; use one of {names} or a regex")
    try:
        compiled = regex.compile(pattern)
    except regex.error as error:
        raise ConfigError(f"split pattern does not compile: {error} (pattern {pattern!r})") from None
    if compiled.fullmatch(""):
        raise ConfigError(f"split pattern matches the empty string: {pattern!r}")
    return compiled


# The compiled splitter's number for each known pattern (split_kernels.chunk_starts takes it).
PATTERN_KINDS = {"gpt2": 0, "gpt4": 1, "o200k": 2}


def pattern_name(pattern: str) -> str | None:
    """Return the short name of a known pattern (``gpt2``, ``gpt4``, ``o200k``), or ``None`` for a custom one."""
    for name in ("gpt2", "gpt4", "o200k"):
        if PATTERNS[name] == pattern:
            return name
    return None


# Bits of the class table: the character classes the known patterns tell apart.
LETTER = 1  # \p{L}
NUMBER = 2  # \p{N}
SPACE = 4  # \s
UPPER = 8  # [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] (o200k)
LOWER = 16  # [\p{Ll}\p{Lm}\p{Lo}\p{M}] (o200k)


@functools.cache
def class_table() -> np.ndarray:
    r"""One ``uint16`` per code point: the character classes the known patterns use, for the compiled splitter.

    The low byte holds the class bits above; the high byte the ASCII letter a code point equals under ``(?i)``
    for the contraction letters (``s`` for ``ſ``). Built with the ``regex`` package itself, so the classes are
    the patterns' own (~0.1 s, once per process).
    """
    every_code_point = np.arange(0x110000, dtype=np.uint32).tobytes().decode("utf-32-le", "surrogatepass")
    table = np.zeros(0x110000, np.uint16)
    classes = [
        (LETTER, r"\p{L}"),
        (NUMBER, r"\p{N}"),
        (SPACE, r"\s"),
        (UPPER, r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"),
        (LOWER, r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"),
    ]
    for bit, char_class in classes:
        for run in regex.finditer(f"{char_class}+", every_code_point):  # code points of a class come in blocks
            table[run.start() : run.end()] |= bit
    for match in regex.finditer("(?i:[sdmtlver])", every_code_point):  # 17 code points: both cases and ſ
        letter = next(c for c in "sdmtlver" if regex.fullmatch(f"(?i:{c})", match.group()))
        table[match.start()] |= ord(letter) << 8
    table.setflags(write=False)
    return table
