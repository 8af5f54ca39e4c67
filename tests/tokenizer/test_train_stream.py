"""Tokenizer training in bounded memory: cut documents, bounded read-ahead, compiled counter and learner, cap."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from microgpt.cli.tokenizer import read_documents, register
from microgpt.tokenizer import Tokenizer
from microgpt.tokenizer.corpus import BATCH_CHARS, cut_document, stream_document
from microgpt.tokenizer.counting import (
    IN_FLIGHT_PER_WORKER,
    ChunkTable,
    _bounded_map,
    count_chunks,
    count_table,
    load_kernels,
)
from microgpt.tokenizer.merges import learn_vocab
from microgpt.tokenizer.patterns import PATTERNS, compile_pattern
from tests.conftest import ROOT

SHAKESPEARE = ROOT / "data" / "tinyshakespeare" / "train.txt"  # ships with microgpt (data/README.md)
KNOWN = ["gpt2", "gpt4", "o200k"]
PARTS = ["a", "b", "é", "中", " ", "  ", "\n", "\r\n", "'s", "1", "23", ".", "!\n", "\t", "\u2028", "\u0301"]
compiled = pytest.mark.skipif(load_kernels() is None, reason="numba not installed or MICROGPT_KERNELS=0")
# Text that exercises every safe cut and the places that are not safe: newlines between words, blank lines,
# spaces before newlines, runs of spaces, digits, contractions, CJK without spaces, punctuation before newlines.
TRICKY = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n  Speak,  speak. \nYou're 'll\r\nok\n"
    "中文字符没有空格\n数字 1234567 and émoji 🎉🎉 tabs\t\there.\nend\n\n\n  x y\n"
)


def chunk_counts(texts: list[str], pattern: str) -> Counter[str]:
    regex = compile_pattern(pattern)
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(regex.findall(text))
    return counts


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(["a", "b", "é", "中", " ", "  ", "\n", "\r\n", "'s", "1", "23", ".", "!\n", "\t"]), max_size=60
    ),
    st.integers(1, 12),
    st.sampled_from(KNOWN),
)
def test_cut_pieces_count_as_the_whole(parts: list[str], size: int, name: str) -> None:
    text = "".join(parts)
    pattern = PATTERNS[name]
    pieces = list(cut_document(text, pattern, size))
    assert "".join(pieces) == text
    assert chunk_counts(pieces, pattern) == chunk_counts([text], pattern)


@pytest.mark.parametrize("name", KNOWN)
def test_cut_and_streamed_real_text_count_as_the_whole(name: str) -> None:
    text = SHAKESPEARE.read_text("utf-8")[:60_000] + TRICKY * 20
    pattern = PATTERNS[name]
    whole = chunk_counts([text], pattern)
    pieces = list(cut_document(text, pattern, 500))
    assert len(pieces) > 50 and max(map(len, pieces)) < 2_000
    assert chunk_counts(pieces, pattern) == whole
    blocks = [text[i : i + 777] for i in range(0, len(text), 777)]
    streamed = list(stream_document(iter(blocks), pattern, 3_000))
    assert "".join(streamed) == text and len(streamed) > 10 and max(map(len, streamed)) < 6_000
    assert chunk_counts(streamed, pattern) == whole


def test_custom_pattern_documents_stay_whole() -> None:
    text = "a b\nc d " * 100
    assert list(cut_document(text, r"\S+|\s+", 10)) == [text]
    assert list(stream_document(["a b\n", "c d"], r"\S+|\s+", 2)) == ["a b\nc d"]


def test_text_without_a_safe_cut_stays_whole() -> None:
    text = "1234567890" * 100  # digits only: no newline between non-spaces, no space between letters
    assert list(cut_document(text, PATTERNS["gpt4"], 10)) == [text]
    assert list(stream_document([text[:500], text[500:]], PATTERNS["gpt4"], 10)) == [text]


def _square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_bounded_map_reads_ahead_a_few_jobs_only(workers: int) -> None:
    read = 0

    def jobs() -> Iterator[int]:
        nonlocal read
        for i in range(40):
            read += 1
            yield i

    results = []
    for done, value in enumerate(_bounded_map(_square, jobs(), workers), start=1):
        assert read - done <= IN_FLIGHT_PER_WORKER * workers  # jobs read but not yet returned
        results.append(value)
    assert results == [i * i for i in range(40)]


@compiled
@pytest.mark.parametrize("name", KNOWN)
@pytest.mark.parametrize("workers", [1, 2])
def test_compiled_counter_equals_python_counter(name: str, workers: int) -> None:
    text = SHAKESPEARE.read_text("utf-8")[:50_000]
    docs = [*text.split("\n\n"), TRICKY, "", " ", "x"]
    table = count_table(iter(docs), PATTERNS[name], workers=workers)
    assert table.pruned == 0
    assert table.as_counter() == count_chunks(docs, PATTERNS[name]) == chunk_counts(docs, PATTERNS[name])


@compiled
@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=6), st.integers(0, 60))
def test_compiled_learner_equals_python_learner(docs: list[str], n_merges: int) -> None:
    counts = count_chunks(docs, PATTERNS["gpt4"])
    table = ChunkTable()
    table.add_counter(counts)
    assert table.learn(n_merges) == learn_vocab(counts, n_merges)


@compiled
def test_compiled_learner_equals_python_learner_on_real_text() -> None:
    text = SHAKESPEARE.read_text("utf-8")[:200_000] + TRICKY
    table = count_table([text], PATTERNS["gpt4"])
    assert table.learn(700) == learn_vocab(count_chunks([text], PATTERNS["gpt4"]), 700)


@compiled
def test_chunk_table_stays_within_its_cap() -> None:
    # 600 distinct words seen once each, and " common" 1,600 times: a cap of 64 prunes the rare ones, keeps it.
    letters = "abcdefghij"
    docs = [f" w{letters[i // 100]}{letters[i // 10 % 10]}{letters[i % 10]} common common" for i in range(600)]
    docs += [" common"] * 400
    table = ChunkTable()
    sizes = []
    for i in range(0, len(docs), 50):  # batch by batch, as count_table adds its workers' batch tables
        batch = count_table(docs[i : i + 50], PATTERNS["gpt4"])
        offsets = np.append(batch.offsets[: batch.n], batch.used)
        table.add(batch.blob[: batch.used], offsets, batch.counts[: batch.n])
        table.prune(64)
        sizes.append(len(table))
    assert max(sizes) <= 64
    assert table.pruned > 0 and table.as_counter()[" common"] == 1_600
    uncapped = count_table(docs, PATTERNS["gpt4"], max_chunks=10_000)  # below the cap: exact, nothing dropped
    assert uncapped.pruned == 0 and uncapped.as_counter() == count_chunks(docs, PATTERNS["gpt4"])
    capped = count_table(docs, PATTERNS["gpt4"], max_chunks=64)
    assert len(capped) <= 64 and capped.pruned > 0 and capped.as_counter()[" common"] == 1_600


def test_streamed_file_is_never_held_whole(tmp_path: Path) -> None:
    text = SHAKESPEARE.read_text("utf-8") * 3  # 3 MB: three batches
    path = tmp_path / "corpus.txt"
    path.write_text(text, "utf-8")
    pieces = list(read_documents([path], pattern=PATTERNS["gpt4"]))
    assert "".join(pieces) == text
    assert len(pieces) >= 2 and max(map(len, pieces)) < BATCH_CHARS + 100_000
    assert list(read_documents([path])) == [text]  # without a pattern: one document per file, as before


@pytest.fixture
def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def _root() -> None:
        """Root."""

    register(root)
    return root


def test_cli_training_on_a_streamed_file_equals_training_on_the_whole(app: typer.Typer, tmp_path: Path) -> None:
    text = SHAKESPEARE.read_text("utf-8")[:300_000]
    (tmp_path / "a.txt").write_text(text, "utf-8")
    result = CliRunner().invoke(
        app, ["tokenizer", "train", str(tmp_path / "a.txt"), "-o", str(tmp_path / "t"), "-v", "400"]
    )
    assert result.exit_code == 0, result.output
    assert Tokenizer.from_directory(tmp_path / "t").ranks == Tokenizer.train([text], 400).ranks


def test_python_path_gives_the_same_tokenizer() -> None:
    if os.environ.get("MICROGPT_KERNELS") == "0":
        pytest.skip("already the pure-Python path")
    text = SHAKESPEARE.read_text("utf-8")[:100_000]
    counts = count_chunks([text], PATTERNS["gpt4"])
    assert Tokenizer.train([text], 500).ranks == {t: i for i, t in enumerate(learn_vocab(counts, 500 - 257))}
