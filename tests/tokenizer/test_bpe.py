from __future__ import annotations

import pytest
import regex

from microgpt.common.errors import ConfigError
from microgpt.tokenizer.bpe import encode_chunk, merge_pair, merges_to_ranks, pair_counts, split_chunks
from microgpt.tokenizer.patterns import GPT2_PATTERN, compile_pattern, resolve_pattern

BYTES = {bytes([i]): i for i in range(256)}


def test_pair_counts_and_merge() -> None:
    assert pair_counts([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    counts = pair_counts([1, 2], {(1, 2): 5})
    assert counts == {(1, 2): 6}
    assert merge_pair([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]
    assert merge_pair([7, 7, 7, 7, 7], (7, 7), 8) == [8, 8, 7]  # left to right, no overlap
    assert merge_pair([], (1, 2), 9) == []


def test_split_chunks_gpt2() -> None:
    pattern = regex.compile(GPT2_PATTERN)
    assert split_chunks("Hello world's  123!!", pattern) == ["Hello", " world", "'s", " ", " 123", "!!"]


def test_encode_chunk_uses_lowest_rank_first() -> None:
    # "abc": the pair "bc" has the lower rank, so it merges first even though "ab" is leftmost.
    ranks = BYTES | {b"bc": 256, b"ab": 257, b"abc": 258}
    assert encode_chunk(b"abc", ranks) == [258]  # the whole chunk is a token
    ranks = BYTES | {b"bc": 256, b"ab": 257}
    assert encode_chunk(b"abc", ranks) == [ord("a"), 256]
    ranks = BYTES | {b"ab": 256, b"bc": 257}
    assert encode_chunk(b"abc", ranks) == [256, ord("c")]


def test_encode_chunk_ties_go_left_and_bytes_fall_through() -> None:
    ranks = BYTES | {b"aa": 256}
    assert encode_chunk(b"aaa", ranks) == [256, ord("a")]
    assert encode_chunk(b"", ranks) == []
    assert encode_chunk(b"\xff\x00", ranks) == [255, 0]


def test_merges_to_ranks_round_trip() -> None:
    ranks = merges_to_ranks([(ord("a"), ord("b")), (256, ord("c"))])
    assert ranks[b"ab"] == 256 and ranks[b"abc"] == 257
    assert encode_chunk(b"abcab", ranks) == [257, 256]


def test_patterns_by_name_and_errors() -> None:
    assert resolve_pattern("cl100k") == resolve_pattern("gpt4")
    assert resolve_pattern(r"\w+|\s+") == r"\w+|\s+"
    with pytest.raises(ConfigError, match="does not compile"):
        resolve_pattern("([a-z")
    with pytest.raises(ConfigError, match="empty string"):
        compile_pattern("a*")


def test_docstring_examples_run() -> None:
    import doctest

    import microgpt.tokenizer
    import microgpt.tokenizer.bpe
    import microgpt.tokenizer.decoding
    import microgpt.tokenizer.tokenizer

    modules = (microgpt.tokenizer, microgpt.tokenizer.bpe, microgpt.tokenizer.decoding, microgpt.tokenizer.tokenizer)
    for module in modules:
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
