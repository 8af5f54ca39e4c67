"""The data section of a run config: which sources, how to split them, how to shard them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from microgpt.common.config import ConfigBase
from microgpt.common.sources import SourceConfig

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


class DataConfig(ConfigBase):
    """Sources, the train/val/test split by document, and shard settings.

    The split is deterministic: with fractions each document goes to a split by a seeded hash of its text (so a
    repeated document always lands in the same split); with counts the first ``val_docs`` distinct documents of
    the mixed stream go to val and the next ``test_docs`` to test.
    """

    sources: list[SourceConfig] = Field(min_length=1, description="Where documents come from, mixed round robin.")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of documents for validation (by hash).")
    val_docs: int | None = Field(None, ge=0, description="Exact number of validation documents (beats val_fraction).")
    test_fraction: float = Field(0.0, ge=0, lt=1, description="Share of documents held out for the final test.")
    test_docs: int | None = Field(None, ge=0, description="Exact number of test documents (beats test_fraction).")
    shard_tokens: int = Field(1 << 24, ge=2, description="Tokens per shard file (the last one may be shorter).")
    workers: int = Field(0, ge=0, description="Tokenizer processes (0: one per CPU core; 1: in this process).")
    seed: int = Field(0, description="Seed of the split hash.")

    @model_validator(mode="after")
    def _check_split(self) -> DataConfig:
        val = 0.0 if self.val_docs is not None else self.val_fraction
        test = 0.0 if self.test_docs is not None else self.test_fraction
        if val + test >= 1.0:
            raise ValueError("val_fraction + test_fraction must be below 1 (nothing would be left to train on)")
        return self

    def identity(self) -> dict[str, Any]:
        """The config as data, minus what cannot change the output (``workers``): what manifests record and hash."""
        data = self.to_dict()
        del data["workers"]
        return data

    def wants(self, split: Split) -> bool:
        """Whether the config asks for any documents in ``split`` (train always)."""
        if split == "val":
            return bool(self.val_docs) if self.val_docs is not None else self.val_fraction > 0
        if split == "test":
            return bool(self.test_docs) if self.test_docs is not None else self.test_fraction > 0
        return True
