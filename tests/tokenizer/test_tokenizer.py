from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from microgpt.common.errors import ConfigError, MicrogptError
from microgpt.tokenizer import DisallowedSpecialError, Tokenizer
from microgpt.tokenizer.bpe_jit import jit_available

DOCS = ["the quick brown fox jumps over the lazy dog. " * 20, "Ünïcödé 🎉 中文 12345 \n\n  spaces"]
SPECIALS = ("<|endoftext|>", "<|pad|>")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(DOCS, 320, special_tokens=SPECIALS)


def test_special_token_rules(tok: Tokenizer) -> None:
    eot, pad = tok.special_tokens["<|endoftext|>"], tok.special_tokens["<|pad|>"]
    text = "a<|endoftext|>b<|pad|>"
    with pytest.raises(DisallowedSpecialError, match="<\\|endoftext\\|>"):
        tok.encode(text)
    with pytest.raises(ValueError, match="disallowed"):  # the same class as tiktoken's error
        tok.encode(text, allowed_special={"<|endoftext|>"})
    assert tok.encode(text, allowed_special="all") == [*tok.encode_ordinary("a"), eot, *tok.encode_ordinary("b"), pad]
    partly = tok.encode(text, allowed_special={"<|pad|>"}, disallowed_special=())
    assert partly == [*tok.encode_ordinary("a<|endoftext|>b"), pad]
    assert tok.encode(text, disallowed_special=()) == tok.encode_ordinary(text)
    assert tok.decode(tok.encode(text, allowed_special="all")) == text
    assert tok.encode_single_token("<|pad|>") == pad
    assert tok.encode_single_token("t") == ord("t")
    with pytest.raises(MicrogptError, match="not a single token"):
        tok.encode_single_token("zzzzzz")


def test_decode_replaces_invalid_utf8_and_rejects_unknown_ids(tok: Tokenizer) -> None:
    assert tok.decode_bytes([0xE4, 0xB8]) == b"\xe4\xb8"
    assert tok.decode([0xE4, 0xB8]) == "\ufffd"
    with pytest.raises(MicrogptError, match="not in the vocabulary"):
        tok.decode([tok.n_vocab + 5])


def test_lone_surrogates_become_replacement_chars(tok: Tokenizer) -> None:
    assert tok.decode(tok.encode("a\ud800b")) == "a\ufffdb"
    assert tok.decode(tok.encode("\ud83c\udf89")) == "🎉"  # a surrogate pair joins into one character


def test_encode_batch_matches_encode_in_one_and_two_workers(tok: Tokenizer) -> None:
    texts = [f"document {i}: " + DOCS[i % 2] * 300 for i in range(8)]  # over PARALLEL_MIN_CHARS
    expected = [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts) == expected
    assert tok.encode_batch(texts, num_workers=2) == expected
    assert tok._pools == {} or not jit_available()  # the compiled encoder runs in threads: no processes
    with pytest.raises(DisallowedSpecialError):
        tok.encode_batch(["x<|pad|>"] * 2)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "o200k"])
def test_compiled_and_regex_paths_give_the_same_ids(pattern: str) -> None:
    trained = Tokenizer.train(DOCS, 400, pattern=pattern)
    regex_path = Tokenizer(trained.ranks, trained.pattern, trained.special_tokens)
    regex_path._encoder.compiled_kind = None  # as without numba: regex split, segment and chunk caches
    text = DOCS[0] + DOCS[1] + " It'S don't\r\n\n  x  ſ 1234567 ab/cd//\n" * 3
    assert trained.encode(text) == regex_path.encode(text) == regex_path.encode(text)
    assert trained._encoder.compiled_kind is not None or not jit_available()


def test_cache_makes_no_difference(tok: Tokenizer) -> None:
    text = DOCS[0] + DOCS[1]
    first = tok.encode(text)
    assert tok.encode(text) == first
    fresh = Tokenizer(tok.ranks, tok.pattern, tok.special_tokens)
    assert fresh.encode(text) == first


def test_save_and_load(tok: Tokenizer, tmp_path: Path) -> None:
    folder = tok.save(tmp_path / "tok")
    assert sorted(p.name for p in folder.iterdir()) == ["ranks.tiktoken", "tokenizer.json", "vocab.txt"]
    loaded = Tokenizer.from_directory(folder)
    assert loaded.fingerprint == tok.fingerprint
    assert loaded.ranks == tok.ranks and loaded.special_tokens == tok.special_tokens and loaded.name == tok.name
    listing = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert "32\t " in listing and "10\t\\n" in listing and any("(special)" in line for line in listing)
    meta = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert meta["format"] == "microgpt-bpe" and meta["version"] == 1 and meta["n_vocab"] == 320


def _edit_meta(folder: Path, **changes: Any) -> None:
    path = folder / "tokenizer.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta.update(changes)
    path.write_text(json.dumps(meta), encoding="utf-8")


def test_load_refuses_newer_corrupt_or_missing(tok: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(MicrogptError, match="not a saved tokenizer"):
        Tokenizer.from_directory(tmp_path / "nothing")
    newer = tok.save(tmp_path / "newer")
    _edit_meta(newer, version=99)
    with pytest.raises(MicrogptError, match="newer than this microgpt reads"):
        Tokenizer.from_directory(newer)
    truncated = tok.save(tmp_path / "truncated")
    data = (truncated / "ranks.tiktoken").read_bytes()
    (truncated / "ranks.tiktoken").write_bytes(data[: len(data) // 2])
    with pytest.raises(MicrogptError, match="corrupt or truncated"):
        Tokenizer.from_directory(truncated)
    bad_json = tok.save(tmp_path / "bad_json")
    (bad_json / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(MicrogptError, match="corrupt metadata"):
        Tokenizer.from_directory(bad_json)
    other = tok.save(tmp_path / "other")
    _edit_meta(other, pattern="gpt2")
    with pytest.raises(MicrogptError, match="fingerprint mismatch"):
        Tokenizer.from_directory(other)


def test_constructor_checks() -> None:
    ranks = {bytes([i]): i for i in range(256)}
    with pytest.raises(ConfigError, match="not a byte-level vocabulary"):
        Tokenizer({b"a": 0}, "gpt2")
    with pytest.raises(ConfigError, match="already a regular token"):
        Tokenizer(ranks, "gpt2", {"<|x|>": 5})
    with pytest.raises(MicrogptError, match="no <\\|endoftext\\|>"):
        _ = Tokenizer(ranks, "gpt2").eot_token
    assert "gpt2" in repr(Tokenizer(ranks, "gpt2"))


def test_encode_batch_keeps_its_worker_processes_until_closed() -> None:
    tok = Tokenizer.train(DOCS, 300, pattern=r" ?\w+| ?[^\w\s]+|\s+")  # a custom pattern: Python, so processes
    texts = [DOCS[0] * 1200, DOCS[1] * 2000, "short"]  # over PARALLEL_MIN_CHARS
    first = tok.encode_batch(texts, num_workers=2)
    pool = tok._pools[2]
    assert tok.encode_batch(texts, num_workers=2) == first == [tok.encode(t) for t in texts]
    assert tok._pools[2] is pool  # the same warm workers
    tok.close()
    assert tok._pools == {}


def test_pickle_round_trip_for_spawned_workers(tok: Tokenizer) -> None:
    import pickle  # our own object in memory, as multiprocessing's spawn does; never a file

    copy = pickle.loads(pickle.dumps(tok))
    assert copy.fingerprint == tok.fingerprint
    assert copy.encode(DOCS[1]) == tok.encode(DOCS[1])
