"""The tokenizer section of a run config, and the one function that turns it into a tokenizer."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from microgpt.common.config import ConfigBase
from microgpt.common.errors import ConfigError
from microgpt.tokenizer.corpus import capped_documents
from microgpt.tokenizer.tokenizer import ENDOFTEXT, Tokenizer


class TokenizerConfig(ConfigBase):
    """Which tokenizer a run uses: train a new BPE, load a pretrained encoding, or load a saved folder."""

    kind: Literal["bpe", "pretrained", "directory"] = Field(
        "bpe", description="bpe: train on the documents; pretrained: an OpenAI encoding; directory: a saved tokenizer"
    )
    name: str = Field("bpe", description="pretrained encoding name (kind=pretrained) or the trained tokenizer's name")
    path: Path | None = Field(None, description="folder of a saved tokenizer (kind=directory)")
    vocab_size: int = Field(4096, ge=1, description="total vocabulary size, special tokens included (kind=bpe)")
    pattern: str = Field("gpt4", description="split pattern: gpt2, gpt4 (= cl100k), o200k, or a regex (kind=bpe)")
    special_tokens: list[str] = Field(
        default_factory=lambda: [ENDOFTEXT], description="special tokens added after the learned ones (kind=bpe)"
    )
    max_train_bytes: int | None = Field(
        None, ge=1, description="train on at most this many UTF-8 bytes of documents, taken in order (kind=bpe)"
    )
    workers: int = Field(1, ge=1, description="processes that count chunks while training (kind=bpe)")

    @model_validator(mode="after")
    def _check_kind(self) -> TokenizerConfig:
        if self.kind == "directory" and self.path is None:
            raise ValueError("path is required when kind is 'directory'")
        minimum = 256 + len(self.special_tokens)
        if self.kind == "bpe" and self.vocab_size < minimum:
            raise ValueError(f"vocab_size must be at least 256 + {len(self.special_tokens)} special tokens = {minimum}")
        return self


def build_tokenizer(config: TokenizerConfig, documents: Iterable[str] | None = None) -> Tokenizer:
    """Train, load a pretrained encoding, or load a saved folder, as ``config.kind`` says.

    Args:
        config: The tokenizer config.
        documents: Training documents; required for ``kind="bpe"``, ignored otherwise.

    Returns:
        The tokenizer.

    Raises:
        ConfigError: When ``kind="bpe"`` and no documents are given, or the config is inconsistent.
        MicrogptError: When training or loading fails (empty corpus, corrupt files, unknown name).
    """
    if config.kind == "pretrained":
        return Tokenizer.from_pretrained(config.name)
    if config.kind == "directory":
        assert config.path is not None  # checked by the validator
        return Tokenizer.from_directory(config.path)
    if documents is None:
        raise ConfigError("tokenizer kind 'bpe' needs training documents")
    return Tokenizer.train(
        capped_documents(documents, config.max_train_bytes),
        config.vocab_size,
        pattern=config.pattern,
        special_tokens=config.special_tokens,
        workers=config.workers,
        name=config.name,
    )
