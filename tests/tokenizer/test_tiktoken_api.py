"""tiktoken's ``Encoding`` API, verb for verb, with tiktoken itself as the oracle.

Two oracles: a tokenizer we train here on bundled text, loaded into ``tiktoken.Encoding`` from its ranks (needs
nothing outside the repository), and OpenAI's encodings built offline from ../shared/data/tokenizers (skipped
without that folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microgpt.common.errors import MicrogptError
from microgpt.tokenizer import DisallowedSpecialError, Tokenizer, UnknownTokenError
from microgpt.tokenizer.bpe_jit import jit_available

ROOT = Path(__file__).resolve().parents[2]
SPECIALS = ("<|endoftext|>", "<|pad|>")
PATTERNS = ["gpt2", "gpt4", "o200k"]


def as_tiktoken(tok: Tokenizer) -> tiktoken.Encoding:
    """tiktoken's own encoder over the same ranks, pattern and special tokens."""
    return tiktoken.Encoding(
        tok.name, pat_str=tok.pattern, mergeable_ranks=tok.ranks, special_tokens=dict(tok.special_tokens)
    )


@pytest.fixture(scope="module", params=PATTERNS)
def pair(request: pytest.FixtureRequest) -> tuple[Tokenizer, tiktoken.Encoding]:
    """(ours, tiktoken's) for a vocabulary trained on bundled Shakespeare plus a little of many scripts."""
    text = (ROOT / "data" / "tinyshakespeare" / "val.txt").read_text(encoding="utf-8")[:30_000]
    extra = "Ünïcödé 中文 汉字 日本語 😀🎉 Здравствуй \t\t  \n\n\r\n 12345 x=1;\n" * 30
    tok = Tokenizer.train([text, extra], 600, pattern=request.param, special_tokens=SPECIALS, name=request.param)
    return tok, as_tiktoken(tok)


PIECES = [b" ", b"  ", b"\n", b"\t", b"\r\n", b"a", b"the", b" king", b"123", b"'s", b"<|endoftext|>", b"<|pad|>"]
PIECES += ["é".encode(), "中".encode(), "😀".encode(), b"\xff", b"\x80", b"\xe4\xb8", b"\xf0\x9f", b"\xc0\xaf"]
PIECES += [b"\xed\xa0\x80", b"\xe4", b"\x00"]  # an encoded surrogate, a lone lead byte, NUL
tricky_bytes = st.lists(st.sampled_from(PIECES), max_size=16).map(b"".join)
any_bytes = st.one_of(st.binary(max_size=40), tricky_bytes)
any_text = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
    tricky_bytes.map(lambda b: b.decode("utf-8", "replace")),
)
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def encode_bytes_with_specials(enc: tiktoken.Encoding, data: bytes) -> list[int]:
    """What our ``encode(bytes, allowed_special="all")`` means, from tiktoken's parts: ``_encode_bytes`` between
    special tokens found by their UTF-8 bytes (tiktoken's ``encode`` takes text only)."""
    ids: list[int] = []
    rest = data
    while True:
        found = [(rest.find(s.encode()), s) for s in enc.special_tokens_set if s.encode() in rest]
        if not found:
            return ids + enc._encode_bytes(rest)
        at, special = min(found, key=lambda f: (f[0], -len(f[1])))
        ids += enc._encode_bytes(rest[:at]) + [enc.encode_single_token(special)]
        rest = rest[at + len(special.encode()) :]


@SETTINGS
@given(data=any_bytes)
def test_bytes_encode_like_tiktoken_and_round_trip(pair: tuple[Tokenizer, tiktoken.Encoding], data: bytes) -> None:
    tok, enc = pair
    ids = tok.encode_ordinary(data)
    assert ids == enc._encode_bytes(data)
    assert tok.decode_bytes(ids) == data  # nothing lost, valid UTF-8 or not
    assert tok.encode(data, disallowed_special=()) == ids
    assert tok.encode(data, allowed_special="all") == encode_bytes_with_specials(enc, data)
    assert tok.decode_bytes(tok.encode(data, allowed_special="all")) == data
    assert tok.encode_to_numpy(data, disallowed_special=()).tolist() == ids
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert ids == tok.encode_ordinary(text) == enc.encode_ordinary(text)  # valid UTF-8: the ids of its text


def test_bytes_follow_the_special_token_rules(pair: tuple[Tokenizer, tiktoken.Encoding]) -> None:
    tok, enc = pair
    data = b"\xffa<|endoftext|>b\xe4\xb8<|pad|>"
    with pytest.raises(DisallowedSpecialError, match="<\\|endoftext\\|>"):
        tok.encode(data)
    with pytest.raises(ValueError, match="<\\|pad\\|>"):
        tok.encode(data, allowed_special={"<|endoftext|>"})
    eot, pad = tok.special_tokens["<|endoftext|>"], tok.special_tokens["<|pad|>"]
    ids = tok.encode(data, allowed_special="all")
    assert ids == [*enc._encode_bytes(b"\xffa"), eot, *enc._encode_bytes(b"b\xe4\xb8"), pad]
    assert tok.encode_ordinary(b"<|pad|>") == enc.encode_ordinary("<|pad|>")  # ordinary: plain text


def test_surrogates_in_text_are_replaced_as_tiktoken_does(pair: tuple[Tokenizer, tiktoken.Encoding]) -> None:
    tok, enc = pair
    text = b"caf\xc3\xa9 \xff\xfe end".decode("utf-8", "surrogateescape")  # lone surrogates U+DCFF, U+DCFE
    assert tok.encode(text) == enc.encode(text)
    assert tok.encode_to_numpy(text).tolist() == enc.encode(text)
    assert tok.decode(tok.encode(text)) == "café \ufffd\ufffd end"  # lossy in tiktoken too: bytes keep them


@SETTINGS
@given(text=any_text)
def test_decode_verbs_equal_tiktoken(pair: tuple[Tokenizer, tiktoken.Encoding], text: str) -> None:
    tok, enc = pair
    ids = enc.encode(text, allowed_special="all")
    assert tok.encode(text, allowed_special="all") == ids
    assert tok.decode_tokens_bytes(ids) == enc.decode_tokens_bytes(ids)
    assert [tok.decode_single_token_bytes(i) for i in ids] == [enc.decode_single_token_bytes(i) for i in ids]
    assert tok.decode_with_offsets(ids) == enc.decode_with_offsets(ids)
    # Tokens cut inside characters: every byte its own token, so continuation bytes start tokens.
    single = list(tok.decode_bytes(ids))
    assert tok.decode_with_offsets(single) == enc.decode_with_offsets(single)


def test_decode_with_offsets_raises_on_invalid_utf8_like_tiktoken(pair: tuple[Tokenizer, tiktoken.Encoding]) -> None:
    tok, enc = pair
    for ids in ([0xE4, 97], [0x80], [0xFF]):
        with pytest.raises(UnicodeDecodeError):
            enc.decode_with_offsets(ids)
        with pytest.raises(UnicodeDecodeError):
            tok.decode_with_offsets(ids)
    assert tok.decode_with_offsets([]) == enc.decode_with_offsets([]) == ("", [])


def test_single_tokens_and_special_token_bytes(pair: tuple[Tokenizer, tiktoken.Encoding]) -> None:
    tok, enc = pair
    for special in SPECIALS:
        assert (
            tok.encode_single_token(special) == tok.encode_single_token(special.encode()) == tok.special_tokens[special]
        )
        assert enc.encode_single_token(special.encode()) == tok.special_tokens[special]
    for token in [b"a", b" ", b"\xff", *list(tok.ranks)[256:300]]:
        assert tok.encode_single_token(token) == enc.encode_single_token(token) == tok.ranks[token]
    assert tok.encode_single_token("e") == enc.encode_single_token("e")
    for missing in ("zzzzzzzz", b"zzzzzzzz", b"\xff\xff\xff", "<|endoftext|>x", ""):
        with pytest.raises(KeyError):
            enc.encode_single_token(missing)
        with pytest.raises(KeyError) as raised:
            tok.encode_single_token(missing)
        assert isinstance(raised.value, MicrogptError)
        assert "is not a single token" in str(raised.value)


def test_unknown_ids_raise_key_error_as_in_tiktoken(pair: tuple[Tokenizer, tiktoken.Encoding]) -> None:
    tok, enc = pair
    unknown = tok.max_token_value + 1
    calls: list[tuple[str, Any]] = [
        ("decode", [1, unknown]),
        ("decode_bytes", [unknown]),
        ("decode_single_token_bytes", unknown),
        ("decode_tokens_bytes", [5, unknown]),
        ("decode_with_offsets", [unknown]),
        ("decode_batch", [[1], [unknown]]),
    ]
    for verb, argument in calls:
        with pytest.raises(KeyError):
            getattr(enc, verb)(argument)
        with pytest.raises(UnknownTokenError, match=f"token id {unknown} is not in the vocabulary") as raised:
            getattr(tok, verb)(argument)
        assert isinstance(raised.value, KeyError) and isinstance(raised.value, MicrogptError)
    assert str(UnknownTokenError("plain message")) == "plain message"  # not quoted like a KeyError's key
    with pytest.raises(KeyError, match="no <\\|endoftext\\|>"):
        _ = Tokenizer(dict(list(tok.ranks.items())[:256]), "gpt2").eot_token
    bytes_only = tiktoken.Encoding("x", pat_str=tok.pattern, mergeable_ranks=tok.ranks, special_tokens={})
    with pytest.raises(KeyError):
        _ = bytes_only.eot_token


def test_batch_verbs_equal_tiktoken(pair: tuple[Tokenizer, tiktoken.Encoding]) -> None:
    tok, enc = pair
    texts = ["hello world", "", "a<|endoftext|>b", "Ünïcödé 🎉\n\n  x", "the king " * 50]
    assert tok.encode_ordinary_batch(texts) == enc.encode_ordinary_batch(texts)
    assert tok.encode_ordinary_batch(texts, num_threads=2) == enc.encode_ordinary_batch(texts, num_threads=2)
    assert tok.encode_batch(texts, allowed_special="all", num_threads=2) == enc.encode_batch(
        texts, allowed_special="all"
    )
    with pytest.raises(ValueError, match="endoftext"):
        tok.encode_batch(texts)
    ids = enc.encode_batch(texts, allowed_special="all")
    assert tok.decode_batch(ids) == enc.decode_batch(ids) == texts
    assert tok.decode_batch([[0xE4], [97]]) == enc.decode_batch([[0xE4], [97]]) == ["\ufffd", "a"]
    assert tok.decode_batch([[0xE4]], errors="ignore") == enc.decode_batch([[0xE4]], errors="ignore") == [""]
    assert tok.decode_bytes_batch(ids, num_threads=2) == enc.decode_bytes_batch(ids)


@pytest.mark.parametrize("compiled", [True, False])
def test_encode_to_numpy_equals_tiktoken(pair: tuple[Tokenizer, tiktoken.Encoding], compiled: bool) -> None:
    tok, enc = pair
    if not compiled:
        tok = Tokenizer(tok.ranks, tok.pattern, tok.special_tokens)
        tok._encoder.compiled_kind = None  # the regex path, as without numba
    elif not jit_available():
        pytest.skip("numba not installed or MICROGPT_NO_JIT set")
    text = "the king's 12345 words\n\n  Ünïcödé 😀<|pad|> end " * 20
    for kwargs in ({"disallowed_special": ()}, {"allowed_special": "all"}, {"allowed_special": {"<|pad|>"}}):
        ours, theirs = tok.encode_to_numpy(text, **kwargs), enc.encode_to_numpy(text, **kwargs)
        assert ours.dtype == theirs.dtype == np.uint32
        assert np.array_equal(ours, theirs)
    with pytest.raises(DisallowedSpecialError):
        tok.encode_to_numpy(text)
    assert tok.encode_to_numpy("").dtype == np.uint32 and len(tok.encode_to_numpy("")) == 0


def test_vocabulary_facts_equal_tiktoken(pair: tuple[Tokenizer, tiktoken.Encoding]) -> None:
    tok, enc = pair
    assert tok.max_token_value == enc.max_token_value == tok.n_vocab - 1
    assert tok.n_vocab == enc.n_vocab and tok.eot_token == enc.eot_token
    assert tok.special_tokens_set == enc.special_tokens_set
    assert tok.token_byte_values() == enc.token_byte_values()
    for token_id in (0, 255, 300, *tok.special_tokens.values()):
        assert tok.is_special_token(token_id) == enc.is_special_token(token_id)


def test_every_public_verb_of_tiktoken_exists(pair: tuple[Tokenizer, tiktoken.Encoding]) -> None:
    tok, enc = pair
    public = {name for name in dir(enc) if not name.startswith("_")}
    missing = public - {name for name in dir(tok) if not name.startswith("_")} - {"encode_with_unstable"}
    assert not missing, f"tiktoken has {sorted(missing)}"


# ---- OpenAI's encodings (need ../shared/data/tokenizers) --------------------------------------------------------

PRETRAINED = ("r50k_base", "cl100k_base", "o200k_base")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=any_bytes)
def test_pretrained_bytes_encode_like_tiktoken(data: bytes, ours: Any, oracle: Any) -> None:
    for name in PRETRAINED:
        tok, enc = ours(name), oracle(name)
        ids = tok.encode_ordinary(data)
        assert ids == enc._encode_bytes(data), name
        assert tok.decode_bytes(ids) == data
        assert tok.encode(data, allowed_special="all") == encode_bytes_with_specials(enc, data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=any_text)
def test_pretrained_decode_verbs_equal_tiktoken(text: str, ours: Any, oracle: Any) -> None:
    for name in PRETRAINED:
        tok, enc = ours(name), oracle(name)
        ids = enc.encode(text, allowed_special="all")
        assert tok.encode_to_numpy(text, allowed_special="all").tolist() == ids
        assert tok.decode_with_offsets(ids) == enc.decode_with_offsets(ids)
        assert tok.decode_tokens_bytes(ids) == enc.decode_tokens_bytes(ids)


@pytest.mark.parametrize("name", PRETRAINED)
def test_pretrained_vocabulary_facts(name: str, ours: Any, oracle: Any) -> None:
    tok, enc = ours(name), oracle(name)
    assert tok.max_token_value == enc.max_token_value and tok.n_vocab == enc.n_vocab
    assert tok.token_byte_values() == enc.token_byte_values()
    for special, token_id in enc._special_tokens.items():
        assert tok.encode_single_token(special.encode()) == enc.encode_single_token(special.encode()) == token_id
        assert tok.is_special_token(token_id) and enc.is_special_token(token_id)
    gaps = sorted(set(range(enc.n_vocab)) - set(tok.ranks.values()) - set(tok.special_tokens.values()))
    for token_id in gaps[:3]:  # cl100k_base has ids with no token
        with pytest.raises(KeyError):
            enc.decode_single_token_bytes(token_id)
        with pytest.raises(KeyError):
            tok.decode_single_token_bytes(token_id)
