"""The compiled batch BPE (numba) gives exactly the pure-Python ``encode_chunk`` ids."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from microgpt.tokenizer import bpe_jit
from microgpt.tokenizer.bpe import encode_chunk
from microgpt.tokenizer.bpe_jit import ChunkBPE
from microgpt.tokenizer.pretrained import load_pretrained

BYTES = {bytes([i]): i for i in range(256)}

needs_jit = pytest.mark.skipif(not bpe_jit.jit_available(), reason="numba not installed or MICROGPT_KERNELS=0")


def _python_ids(pieces: list[str], ranks: dict[bytes, int]) -> list[tuple[int, ...]]:
    return [tuple(encode_chunk(piece.encode("utf-8"), ranks)) for piece in pieces]


@needs_jit
def test_jit_matches_python_on_a_small_vocabulary() -> None:
    # "bc" outranks "ab": rank order, not left-to-right; "aaaa" tests ties (leftmost first).
    ranks = BYTES | {b"bc": 256, b"ab": 257, b"abc": 258, b"aa": 259, b"aaa": 260}
    pieces = ["abc", "abcab", "aaaa", "aaaaa", "x", "", "zabcz", "é", "ab" * 40]
    assert ChunkBPE(ranks).encode(pieces) == _python_ids(pieces, ranks)
    assert ChunkBPE(ranks).encode([]) == []
    prepared = ChunkBPE(ranks)
    prepared.prepare()  # what encode_batch does before forking its workers
    assert prepared.encode(pieces) == _python_ids(pieces, ranks)


@needs_jit
@pytest.mark.parametrize("name", ["gpt2", "cl100k_base"])
def test_jit_matches_python_on_pretrained_ranks(name: str, pretrained_dir: Path) -> None:
    ranks, _, _ = load_pretrained(name, pretrained_dir)
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyz ETAOIN.,'!0123456789é漢😀\n"
    pieces = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(3000)]
    pieces += [" tokenization", " unbelievably", "ation", " " * 200, "x" * 300]
    # Longer than bpe_kernels.LONG_CHUNK: merged with a heap instead of a scan; small alphabets make many ties.
    for alphabet in ("ab", "aaab", "thequickbrownfox", "0123456789", "xyzé"):
        pieces += ["".join(rng.choice(alphabet) for _ in range(rng.randint(129, 400))) for _ in range(4)]
    assert ChunkBPE(ranks).encode(pieces) == _python_ids(pieces, ranks)


def test_fallback_without_jit_gives_the_same_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    ranks = BYTES | {b"bc": 256, b"ab": 257, b"abc": 258}
    monkeypatch.setattr(bpe_jit, "_KERNELS", None)  # as without numba
    assert not bpe_jit.jit_available()
    assert ChunkBPE(ranks).encode(["abcab", "abc", "q"]) == [(258, 257), (258,), (113,)]


@needs_jit
def test_small_jobs_take_the_plain_loop_until_the_kernels_are_worth_compiling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fresh install: nothing compiled, nothing in numba's cache. The first bytes go through the plain loop
    # (same ids, no ~40 s compile); past COMPILE_AFTER_BYTES the kernels are used from then on.
    monkeypatch.setattr(bpe_jit, "_ready", False)
    monkeypatch.setattr(bpe_jit, "_disk_checked", False)
    monkeypatch.setattr(bpe_jit, "_plain_bytes", 0)
    monkeypatch.setattr(bpe_jit, "_cached_on_disk", lambda kernels: False)
    monkeypatch.setattr(bpe_jit, "COMPILE_AFTER_BYTES", 100)
    assert not bpe_jit.use_compiled(60)
    assert not bpe_jit.use_compiled(60)  # 60 < 100 bytes seen before this call
    assert bpe_jit.use_compiled(10)  # 120 >= 100: compile now
    assert bpe_jit.use_compiled(10**9)
    monkeypatch.setattr(bpe_jit, "_ready", False)
    monkeypatch.setattr(bpe_jit, "_disk_checked", False)  # a new process
    monkeypatch.setattr(bpe_jit, "_cached_on_disk", lambda kernels: True)  # compiled by an earlier process
    assert bpe_jit.use_compiled(1)


def test_plain_loop_for_a_small_job_gives_the_compiled_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    from microgpt.tokenizer import Tokenizer

    tok = Tokenizer.train(["the cat sat on the mat, 123 times\n\n"] * 5, 300, pattern="gpt4")
    text = "the cat sat on 12345 mats!\n\n  indeed, unbelievably"
    compiled = tok.encode(text)
    monkeypatch.setattr(bpe_jit, "_ready", False)
    monkeypatch.setattr(bpe_jit, "_disk_checked", False)
    monkeypatch.setattr(bpe_jit, "_plain_bytes", 0)
    monkeypatch.setattr(bpe_jit, "_cached_on_disk", lambda kernels: False)
    fresh = Tokenizer(tok.ranks, tok.pattern, tok.special_tokens)
    assert fresh.encode(text) == compiled
    assert not bpe_jit._ready  # the small job did not compile
