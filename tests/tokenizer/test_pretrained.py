from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microgpt.common.errors import ConfigError, MicrogptError
from microgpt.tokenizer import Tokenizer
from microgpt.tokenizer.pretrained import RemoteFile, fetch, tokenizer_cache_dir
from tests.http_server import ServerState
from tests.tokenizer.conftest import PRETRAINED

# A small rank file in tiktoken's format (base64 token, space, rank) for the download tests: the bytes of 256 tokens.
RANK_FILE = b"".join(base64.b64encode(bytes([i])) + b" %d\n" % i for i in range(256))

SAMPLES = [
    "",
    "Hello, world! It's 2026 — we're testing tokenizers.",
    "   leading and trailing spaces   \n\n\n\ttabs\r\nCRLF  ",
    "digits 1234567890 3.14159 1,000,000 and 🎉🎉🎉 emoji 👨‍👩‍👧‍👦",
    "Здравствуй, мир! 你好，世界！ こんにちは مرحبا بالعالم नमस्ते",
    "CamelCaseWords HTTPServer don't I'LL you'VE",
    "\u00a0\u2003\u3000 odd spaces and \x00\x01 control",
    "a" * 1000 + " " * 300 + "!" * 50,
]


@pytest.mark.parametrize("name", PRETRAINED)
def test_pretrained_equals_tiktoken_on_samples(name: str, ours: Any, oracle: Any) -> None:
    tok, enc = ours(name), oracle(name)
    assert tok.n_vocab == enc.n_vocab
    assert tok.eot_token == enc.eot_token
    assert tok.special_tokens == enc._special_tokens
    for text in SAMPLES:
        assert tok.encode_ordinary(text) == enc.encode_ordinary(text), text
        assert tok.decode(tok.encode(text)) == text
    specials = "x<|endoftext|>y<|fim_prefix|>z<|endofprompt|>"
    for kwargs in (
        {"allowed_special": "all"},
        {"disallowed_special": ()},
        {"allowed_special": {"<|endoftext|>"}, "disallowed_special": ()},
    ):
        assert tok.encode(specials, **kwargs) == enc.encode(specials, **kwargs)


@pytest.mark.parametrize("name", ["r50k_base", "cl100k_base", "o200k_base"])
def test_regex_path_equals_tiktoken_too(name: str, pretrained_dir: Path, oracle: Any) -> None:
    tok = Tokenizer.from_pretrained(name, cache_dir=pretrained_dir)
    tok._encoder.compiled_kind = None  # what runs without numba (or with MICROGPT_KERNELS=0)
    for text in SAMPLES:
        assert tok.encode_ordinary(text) == oracle(name).encode_ordinary(text), text


def test_gpt2_files_equal_r50k(ours: Any, pretrained_dir: Path) -> None:
    gpt2 = Tokenizer.from_gpt2_files(pretrained_dir / "encoder.json", pretrained_dir / "vocab.bpe")
    assert gpt2.ranks == ours("r50k_base").ranks
    assert gpt2.fingerprint == ours("gpt2").fingerprint == ours("r50k_base").fingerprint


unicode_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)
tricky_text = st.lists(
    st.sampled_from(
        [
            " ",
            "  ",
            "\n",
            "\r\n",
            "\t",
            "'s",
            "'LL",
            "1",
            "123",
            "4567",
            "🎉",
            "é",
            "中",
            "a",
            "Ab",
            "<|endoftext|>",
            "\ud800",
            "!?",
        ]
    ),
    max_size=20,
).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(unicode_text, tricky_text))
def test_pretrained_equals_tiktoken_on_generated_text(text: str, ours: Any, oracle: Any) -> None:
    for name in ("r50k_base", "cl100k_base", "o200k_base"):
        tok, enc = ours(name), oracle(name)
        assert tok.encode(text, disallowed_special=()) == enc.encode(text, disallowed_special=())
        assert tok.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")
        valid = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        assert tok.decode(tok.encode(text, disallowed_special=())) == valid


def test_unknown_name_lists_known(pretrained_dir: Path) -> None:
    with pytest.raises(ConfigError, match="known: gpt2, r50k_base, p50k_base, p50k_edit, cl100k_base, o200k_base"):
        Tokenizer.from_pretrained("gpt5", cache_dir=pretrained_dir)


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MICROGPT_TOKENIZER_DIR", raising=False)
    monkeypatch.setenv("MICROGPT_CACHE_DIR", str(tmp_path / "c"))
    assert tokenizer_cache_dir() == tmp_path / "c" / "tokenizers"
    monkeypatch.setenv("MICROGPT_TOKENIZER_DIR", str(tmp_path / "t"))
    assert tokenizer_cache_dir() == tmp_path / "t"
    assert tokenizer_cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_download_into_cache_then_offline(http_server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = http_server
    data = RANK_FILE
    state.files["r50k_base.tiktoken"] = data
    remote = RemoteFile(f"{url}/files/r50k_base.tiktoken", hashlib.sha256(data).hexdigest())
    path = fetch(remote, tmp_path)
    assert path == tmp_path / "r50k_base.tiktoken" and path.read_bytes() == data
    assert fetch(remote, tmp_path) == path
    assert state.hits["/files/r50k_base.tiktoken"] == 1  # the second call stayed offline


def test_corrupt_cached_file_is_downloaded_again(http_server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = http_server
    data = RANK_FILE
    state.files["r50k_base.tiktoken"] = data
    (tmp_path / "r50k_base.tiktoken").write_bytes(data[:1000])  # truncated
    remote = RemoteFile(f"{url}/files/r50k_base.tiktoken", hashlib.sha256(data).hexdigest())
    assert fetch(remote, tmp_path).read_bytes() == data


def test_corrupt_file_without_network_is_a_clear_error(http_server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, _ = http_server
    (tmp_path / "gone.tiktoken").write_bytes(b"garbage")
    remote = RemoteFile(f"{url}/files/gone.tiktoken", "0" * 64)
    with pytest.raises(MicrogptError, match="corrupt or truncated.*downloading it failed.*HTTP 404"):
        fetch(remote, tmp_path)


def test_from_pretrained_with_corrupt_cache_and_no_network(
    pretrained_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copyfile(pretrained_dir / "cl100k_base.tiktoken", tmp_path / "cl100k_base.tiktoken")
    with open(tmp_path / "cl100k_base.tiktoken", "r+b") as handle:
        handle.truncate(1000)
    # Point the official URL at a closed local port so the test never leaves the machine.
    import microgpt.tokenizer.pretrained as pretrained

    spec = pretrained.ENCODINGS["cl100k_base"]
    broken = RemoteFile("http://127.0.0.1:9/cl100k_base.tiktoken", spec.files[0].sha256)
    monkeypatch.setitem(
        pretrained.ENCODINGS, "cl100k_base", pretrained.Encoding((broken,), spec.pattern, spec.special_tokens)
    )
    with pytest.raises(MicrogptError, match="cl100k_base.tiktoken is corrupt or truncated"):
        Tokenizer.from_pretrained("cl100k_base", cache_dir=tmp_path)
