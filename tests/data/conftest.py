"""Fixtures for the data tests: a small real BPE tokenizer and a small prepared corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from microgpt.common.sources import TextSource
from microgpt.data import DataConfig, Manifest, prepare_data
from microgpt.tokenizer import Tokenizer


def corpus(n: int = 120) -> list[str]:
    """Varied small documents (deterministic), with non-ASCII text and a literal <|endoftext|>."""
    words = ["alpha", "beta", "gamma", "délta", "εψιλον", "zeta", "<|endoftext|>", "theta", "ιωτα", "kappa"]
    return [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(5 + i % 23)) + f" #{i}" for i in range(n)]


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(corpus(200), vocab_size=320)


@pytest.fixture
def prepared(tmp_path: Path, tokenizer: Tokenizer) -> tuple[Path, Manifest]:
    config = DataConfig(sources=[TextSource(texts=corpus(400))], val_docs=40, shard_tokens=997, workers=1)
    out = tmp_path / "data"
    return out, prepare_data(config, tokenizer, out)
