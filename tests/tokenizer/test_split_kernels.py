"""The compiled splitter cuts text exactly where the known patterns' regexes do."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microgpt.tokenizer import bpe_jit
from microgpt.tokenizer.patterns import PATTERN_KINDS, PATTERNS, class_table, compile_pattern

pytestmark = pytest.mark.skipif(not bpe_jit.jit_available(), reason="numba not installed or MICROGPT_KERNELS=0")

# Code points of every class the patterns tell apart: Lu, Ll, Lt, Lm, Lo, marks, digits and other numbers,
# each kind of whitespace, the contraction letters in both cases and ſ (which (?i) equals to s), punctuation.
ALPHABET = [
    *"aszAZSDMTLVERſ01239'/.,!-\"_ \t\n\r\x0b\x0c\x85\x1c",
    "\u00a0",
    "\u2003",
    "\u3000",
    "\u2028",
    "\u01c5",  # Lt
    "\u02b0",  # Lm
    "\u4e2d",  # Lo
    "\u0301",  # Mn
    "\u0903",  # Mc
    "\u2160",  # Nl
    "\u00bd",  # No
    "\u0663",  # Nd (Arabic-Indic)
    "\U0001f389",  # So, outside the BMP
    "\u200d",  # Cf
]


def chunks(text: str, name: str) -> list[str]:
    from microgpt.tokenizer.split_kernels import chunk_starts

    data = text.encode("utf-8")
    starts = chunk_starts(np.frombuffer(data, np.uint8), PATTERN_KINDS[name], class_table()).tolist()
    return [data[a:b].decode("utf-8") for a, b in zip(starts[:-1], starts[1:], strict=True)]


@pytest.mark.parametrize("name", ["gpt2", "gpt4", "o200k"])
def test_every_code_point_splits_as_the_regex(name: str) -> None:
    findall = compile_pattern(PATTERNS[name]).findall
    code_points = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    for separator in ("", " ", "a", "\n", "'s", "  ", "A"):
        text = separator.join(code_points[:: 5 if separator else 1])
        assert chunks(text, name) == findall(text), separator


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET), max_size=40).map("".join))
def test_generated_text_splits_as_the_regex(text: str) -> None:
    for name in ("gpt2", "gpt4", "o200k"):
        assert chunks(text, name) == compile_pattern(PATTERNS[name]).findall(text)


def test_empty_text_has_no_chunks() -> None:
    assert chunks("", "gpt4") == []
