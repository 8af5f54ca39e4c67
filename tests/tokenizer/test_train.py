from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microgpt.common.errors import ConfigError, MicrogptError
from microgpt.tokenizer import Tokenizer, TokenizerConfig, build_tokenizer
from microgpt.tokenizer.bpe import merge_pair
from microgpt.tokenizer.corpus import capped_documents
from microgpt.tokenizer.counting import count_chunks
from microgpt.tokenizer.merges import learn_vocab
from microgpt.tokenizer.patterns import GPT4_PATTERN, compile_pattern
from tests.conftest import ROOT

# The first 90% of Tiny Shakespeare, which ships with microgpt (data/README.md).
SHAKESPEARE_TRAIN = ROOT / "data" / "tinyshakespeare" / "train.txt"

SAMPLE = [
    "First Citizen:\nBefore we proceed any further, hear me speak.\n",
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n",
    "Ünïcödé text — with émoji 🎉🎉 and 中文字符 and digits 1234567 and   spaces\t\ttabs.\n",
]


def reference_vocab(chunk_counts: Counter[str], n_merges: int) -> list[bytes]:
    """The slow textbook trainer: recount every pair before each merge (same tie rule as ours)."""
    words = [(list(chunk.encode("utf-8")), freq) for chunk, freq in chunk_counts.items()]
    vocab = [bytes([i]) for i in range(256)]
    learned = 0
    while learned < n_merges:
        stats: Counter[tuple[int, int]] = Counter()
        for ids, freq in words:
            for pair in zip(ids, ids[1:], strict=False):
                stats[pair] += freq
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], p))
        merged = vocab[pair[0]] + vocab[pair[1]]
        if merged in vocab:
            new = vocab.index(merged)
        else:
            new = len(vocab)
            vocab.append(merged)
            learned += 1
        words = [(merge_pair(ids, pair, new), freq) for ids, freq in words]
    return vocab


def test_incremental_trainer_equals_recount_trainer() -> None:
    text = SHAKESPEARE_TRAIN.read_text(encoding="utf-8")[:12_000] + "".join(SAMPLE)
    counts = count_chunks([text], GPT4_PATTERN)
    assert learn_vocab(counts, 200) == reference_vocab(counts, 200)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=6), st.integers(0, 40))
def test_incremental_trainer_equals_recount_trainer_on_arbitrary_text(docs: list[str], n_merges: int) -> None:
    counts = count_chunks(docs, GPT4_PATTERN)
    assert learn_vocab(counts, n_merges) == reference_vocab(counts, n_merges)


def test_train_round_trips_and_orders_tokens() -> None:
    tok = Tokenizer.train(SAMPLE * 3, vocab_size=300)
    assert tok.n_vocab == 300
    assert tok.eot_token == 299 and tok.special_tokens == {"<|endoftext|>": 299}
    assert all(tok.token_bytes(i) == bytes([i]) for i in range(256))
    for text in [*SAMPLE, "", "never seen: ŝ ß ∑ 𝄞", "<|endoftext|>"]:
        assert tok.decode(tok.encode(text, disallowed_special=())) == text
    assert len(tok.encode(SAMPLE[0])) < len(SAMPLE[0].encode("utf-8"))


def test_training_is_deterministic_across_runs_and_workers() -> None:
    text = SHAKESPEARE_TRAIN.read_text(encoding="utf-8")[:400_000]
    docs = text.split("\n\n")
    one = Tokenizer.train(docs, 600, workers=1)
    again = Tokenizer.train(docs, 600, workers=1)
    two = Tokenizer.train(iter(docs), 600, workers=2)
    assert one.fingerprint == again.fingerprint == two.fingerprint
    assert one.ranks == two.ranks


def test_pattern_names_and_custom_regex() -> None:
    gpt2 = Tokenizer.train(SAMPLE, 280, pattern="gpt2")
    custom = Tokenizer.train(SAMPLE, 280, pattern=r"\S+|\s+")
    assert gpt2.pattern_name == "gpt2" and custom.pattern_name == "custom"
    assert gpt2.fingerprint != custom.fingerprint


def test_bad_training_input() -> None:
    with pytest.raises(ConfigError, match="at least 256 \\+ 1 special tokens = 257"):
        Tokenizer.train(SAMPLE, 256)
    with pytest.raises(MicrogptError, match="empty corpus"):
        Tokenizer.train([], 300)
    with pytest.raises(MicrogptError, match="empty corpus"):
        Tokenizer.train(["", ""], 300)
    with pytest.raises(ConfigError, match="does not compile"):
        Tokenizer.train(SAMPLE, 300, pattern="(unclosed")
    with pytest.raises(ConfigError, match="duplicates"):
        Tokenizer.train(SAMPLE, 300, special_tokens=["<|a|>", "<|a|>"])
    with pytest.raises(MicrogptError, match="must be str"):
        Tokenizer.train([b"bytes"], 300)  # type: ignore[list-item]  # the wrong type on purpose


def test_minimal_vocab_and_exhausted_corpus() -> None:
    assert Tokenizer.train(SAMPLE, 257).n_vocab == 257  # bytes + <|endoftext|>, no merges
    small = Tokenizer.train(["abab"], 1000, special_tokens=())
    assert small.n_vocab < 1000  # ran out of pairs
    assert small.encode("abab") == [small.n_vocab - 1]


def test_capped_documents() -> None:
    docs = ["aaaa", "éé", "bbbb"]
    assert list(capped_documents(docs, None)) == docs
    assert list(capped_documents(docs, 6)) == ["aaaa", "é"]
    assert list(capped_documents(docs, 5)) == ["aaaa", ""]  # half a character is dropped
    assert list(capped_documents(iter(docs), 100)) == docs


def test_build_tokenizer_kinds(tmp_path: Path, pretrained_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trained = build_tokenizer(TokenizerConfig(vocab_size=280, max_train_bytes=50), SAMPLE)
    assert trained.n_vocab == 280 and trained.name == "bpe"
    trained.save(tmp_path / "tok")
    loaded = build_tokenizer(TokenizerConfig(kind="directory", path=tmp_path / "tok"))
    assert loaded.fingerprint == trained.fingerprint
    monkeypatch.setenv("MICROGPT_TOKENIZER_DIR", str(pretrained_dir))
    assert build_tokenizer(TokenizerConfig(kind="pretrained", name="r50k_base")).n_vocab == 50257
    with pytest.raises(ConfigError, match="needs training documents"):
        build_tokenizer(TokenizerConfig(vocab_size=280))
    with pytest.raises(ValueError, match="path is required"):
        TokenizerConfig(kind="directory")
    with pytest.raises(ValueError, match="vocab_size must be at least"):
        TokenizerConfig(vocab_size=100)


def test_counting_uses_the_pattern() -> None:
    counts = count_chunks(["the cat the"], GPT4_PATTERN)
    assert counts == Counter({"the": 1, " cat": 1, " the": 1})
    assert compile_pattern(GPT4_PATTERN).findall("a\r\n b") == ["a", "\r\n", " b"]


_TRAINED: dict[str, Tokenizer] = {}


def _trained(pattern: str) -> Tokenizer:
    if pattern not in _TRAINED:
        _TRAINED[pattern] = Tokenizer.train(SAMPLE * 5, 400, pattern=pattern)
    return _TRAINED[pattern]


@settings(max_examples=40, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=80), st.sampled_from(["gpt2", "gpt4", "o200k", r"\w+|\W"]))
def test_trained_tokenizer_round_trips_any_text(text: str, pattern: str) -> None:
    tok = _trained(pattern)
    ids = tok.encode(text, disallowed_special=())
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.n_vocab for i in ids)
