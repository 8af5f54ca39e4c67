"""``manifest.json``: what a prepared data folder holds — tokenizer identity, shards per split, counts.

Written last (atomically) by prepare, so its presence means the folder is complete. Loaded through Pydantic,
so a hand-edited or foreign file fails with a message that names the field rather than half-working.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from microgpt.common.atomic import atomic_write_text
from microgpt.common.config import format_validation_error
from microgpt.common.errors import MicrogptError
from microgpt.data.config import Split

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShardInfo(_Strict):
    """One shard file."""

    file: str = Field(description="File name inside the data folder.")
    tokens: int = Field(ge=0, description="Tokens in the shard.")
    sha256: str = Field(description="sha256 of the whole file (header included).")


class SplitInfo(_Strict):
    """One split: its shards and what went into them."""

    shards: list[ShardInfo] = Field(default_factory=list, description="Shards in order.")
    tokens: int = Field(0, ge=0, description="Tokens in all shards (an end-of-text token before each document).")
    bytes: int = Field(0, ge=0, description="UTF-8 bytes of the documents (for bits per byte).")
    documents: int = Field(0, ge=0, description="Documents in the split.")


class TokenizerInfo(_Strict):
    """Which tokenizer made the ids."""

    name: str = Field(description="Tokenizer name.")
    fingerprint: str = Field(description="sha256 over ranks, pattern and special tokens.")
    n_vocab: int = Field(gt=0, description="Vocabulary size (ids are below this).")
    eot_token: int = Field(ge=0, description="The end-of-text id put before each document.")


class Manifest(_Strict):
    """The description of a prepared data folder (see module docstring)."""

    format_version: int = Field(FORMAT_VERSION, description="Manifest format version.")
    tokenizer: TokenizerInfo = Field(description="Tokenizer identity.")
    dtype: str = Field(description="uint16 or uint32.")
    shard_tokens: int = Field(gt=0, description="Tokens per full shard.")
    splits: dict[str, SplitInfo] = Field(description="train, val, test.")
    config_hash: str = Field(description="sha256 of the data config and tokenizer fingerprint.")
    data_config: dict[str, Any] = Field(description="The data config that produced the folder.")

    def split(self, split: Split) -> SplitInfo:
        """Return one split's info (empty when the split was not requested)."""
        return self.splits.get(split) or SplitInfo()

    def split_tokens(self, split: Split) -> int:
        """Tokens in ``split``."""
        return self.split(split).tokens

    def split_bytes(self, split: Split) -> int:
        """UTF-8 bytes of the documents in ``split`` (bits per byte = nats/token × tokens / bytes / ln 2)."""
        return self.split(split).bytes

    def text_size(self, split: Split) -> tuple[int, int]:
        """``(tokens, bytes)`` of ``split``: what bits per byte needs (``loss_eval.evaluate``'s ``text_size``)."""
        info = self.split(split)
        return info.tokens, info.bytes

    def shard_paths(self, directory: Path, split: Split) -> list[Path]:
        """Paths of ``split``'s shards inside ``directory``."""
        return [directory / shard.file for shard in self.split(split).shards]

    def save(self, directory: Path) -> Path:
        """Write ``manifest.json`` atomically into ``directory``."""
        return atomic_write_text(directory / MANIFEST, json.dumps(self.model_dump(mode="json"), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        """Read ``directory/manifest.json``.

        Raises:
            MicrogptError: When the folder has no manifest (not prepared, or prepare did not finish) or it is invalid.
        """
        path = Path(directory) / MANIFEST
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MicrogptError(f"{directory}: no {MANIFEST} (run `microgpt data prepare` first)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise MicrogptError(f"{path}: unreadable manifest: {error}") from None
        if isinstance(raw, dict) and raw.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise MicrogptError(f"{path}: manifest version {raw['format_version']}, expected {FORMAT_VERSION}")
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise MicrogptError(f"{path}: invalid manifest:\n{format_validation_error(cls, error)}") from None
