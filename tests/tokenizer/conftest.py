"""Fixtures for tokenizer tests: pretrained files in a temporary cache, and tiktoken as an offline oracle."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from microgpt.tokenizer.pretrained import ALL_FILES
from tests.conftest import SHARED_DATA

TOKENIZER_FILES = SHARED_DATA / "tokenizers"
# tiktoken caches a download under sha1(url); its offline oracle below finds the files only if this is right.
TIKTOKEN_CACHE_NAMES = {remote.filename: remote.tiktoken_cache_key for remote in ALL_FILES}
PRETRAINED = ["gpt2", "r50k_base", "p50k_base", "p50k_edit", "cl100k_base", "o200k_base"]


def _require_files() -> None:
    if not TOKENIZER_FILES.is_dir():
        pytest.skip(
            "OpenAI's rank files are not in ../shared/data/tokenizers (not part of a clone): `microgpt tokenizer "
            "info NAME` downloads NAME's into ~/.cache/microgpt/tokenizers; copy r50k_base, p50k_base, cl100k_base "
            "and o200k_base .tiktoken, encoder.json and vocab.bpe there to run these tests"
        )


@pytest.fixture(scope="session")
def pretrained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the official files under their upstream names (as microgpt caches them)."""
    _require_files()
    folder = tmp_path_factory.mktemp("pretrained")
    for name in TIKTOKEN_CACHE_NAMES:
        shutil.copyfile(TOKENIZER_FILES / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiktoken_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TIKTOKEN_CACHE_DIR with the official files under tiktoken's cache names (so tiktoken runs offline)."""
    _require_files()
    folder = tmp_path_factory.mktemp("tiktoken")
    for name, cache_name in TIKTOKEN_CACHE_NAMES.items():
        shutil.copyfile(TOKENIZER_FILES / name, folder / cache_name)
    return folder


_ORACLES: dict[str, Any] = {}


@pytest.fixture
def oracle(tiktoken_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``oracle(name)`` → tiktoken's own encoding of that name, loaded offline (cached for the session)."""
    import tiktoken

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tiktoken_dir))

    def get(name: str) -> Any:
        if name not in _ORACLES:
            _ORACLES[name] = tiktoken.get_encoding(name)
        return _ORACLES[name]

    return get


_OURS: dict[str, Any] = {}


@pytest.fixture
def ours(pretrained_dir: Path) -> Any:
    """``ours(name)`` → our Tokenizer for a pretrained name, loaded from the temporary cache (cached)."""
    from microgpt.tokenizer import Tokenizer

    def get(name: str) -> Tokenizer:
        if name not in _OURS:
            _OURS[name] = Tokenizer.from_pretrained(name, cache_dir=pretrained_dir)
        tokenizer: Tokenizer = _OURS[name]
        return tokenizer

    return get
