"""Pretraining: the run config, and the trainer that feeds token shards to a GPT.

``microgpt train CONFIG`` runs :func:`microgpt.pipeline.pretraining.run_pretraining`, which prepares the tokenizer
and the shards in ``out_dir/data`` and then hands them to :class:`PretrainTrainer` here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, model_validator
from torch import nn

from microgpt.common.checkpoint import TOKENIZER_DIR
from microgpt.common.config import ConfigBase
from microgpt.common.dist import DistInfo
from microgpt.common.log import get_logger
from microgpt.common.loss_eval import bits_per_byte
from microgpt.common.trainer import (
    Batch,
    TrainConfig,
    Trainer,
)
from microgpt.data import DataConfig, Manifest
from microgpt.data.loader import TokenLoader
from microgpt.model.config import GPTConfig
from microgpt.model.generate import generate_ids
from microgpt.model.gpt import GPT
from microgpt.tokenizer import Tokenizer, TokenizerConfig

log = get_logger(__name__)

RUN_CONFIG = "run_config.yaml"
DATA_DIR = "data"
# Settings that may change between a run and its resumption without making it "a different run".
RESUME_SAFE = frozenset(
    {
        "train.max_steps",
        "train.eval_interval",
        "train.eval_batches",
        "train.sample_interval",
        "train.sample_prompt",
        "train.sample_tokens",
        "train.checkpoint_interval",
        "train.keep_last",
        "train.keep_best",
        "train.log_interval",
        "train.progress",
        "train.plot",
        "train.metrics_backends",
        "train.threads",
        "train.device",
        "train.parallel",  # a run may resume under DDP or FSDP, on any number of processes (same global batch)
        "train.activation_checkpointing",
        "train.micro_batch_size",
        "train.deterministic",
        "train.peak_flops",
    }
)


class RunConfig(ConfigBase):
    """A whole pretraining run: where it writes, the tokenizer, the data, the model and how to train it.

    ``model.vocab_size`` may be left out when the tokenizer is a BPE trained by the run: it is then the
    tokenizer's ``vocab_size``.
    """

    out_dir: Path = Field(Path("runs/default"), description="Run directory: data, checkpoints, metrics.")
    seed: int = Field(1337, description="Seed of the model init, the data order and the samples.")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="The tokenizer to train or load.")
    data: DataConfig = Field(description="Sources and the train/val split.")
    model: GPTConfig = Field(description="The GPT's shape and options.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimizer, schedule, eval, checkpoints.")

    @model_validator(mode="before")
    @classmethod
    def _vocab_from_tokenizer(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict) or "vocab_size" in data["model"]:
            return data
        tokenizer = data.get("tokenizer") or {}
        if isinstance(tokenizer, dict) and tokenizer.get("kind", "bpe") == "bpe":
            size = tokenizer.get("vocab_size", TokenizerConfig.model_fields["vocab_size"].default)
            data = {**data, "model": {**data["model"], "vocab_size": size}}
        return data


def train_loader(trainer: Trainer, data_dir: Path, block_size: int, micro_batch: int, seed: int) -> TokenLoader:
    """A trainer's train split: this rank's windows, shuffled in one global order at any world size (``seed``)."""
    return TokenLoader(
        data_dir,
        "train",
        micro_batch,
        block_size,
        rank=trainer.dist.rank,
        world_size=trainer.dist.world_size,
        shuffle=True,
        seed=seed,
        global_batch=trainer.config.batch_size,  # one data order at any world size
        device=trainer.device,
    )


def val_loader(trainer: Trainer, data_dir: Path, block_size: int) -> TokenLoader:
    """A trainer's validation split: this rank's share, in order (``eval_batches(pad=True)`` for one shape)."""
    return TokenLoader(
        data_dir,
        "val",
        trainer.micro_batch,
        block_size,
        rank=trainer.dist.rank,
        world_size=trainer.dist.world_size,
        shuffle=False,
        device=trainer.device,
        prefetch=0,
    )


class PretrainTrainer(Trainer):
    """Next-token prediction on prepared shards (``out_dir/data``)."""

    def __init__(
        self, config: RunConfig, tokenizer: Tokenizer, data_dir: Path, *, dist: DistInfo | None = None
    ) -> None:
        """Bind the run config, the tokenizer and the prepared data folder."""
        super().__init__(config.train, Path(config.out_dir), seed=config.seed, dist=dist)
        self.run_config = config
        self.tokenizer = tokenizer
        self.data_dir = data_dir
        self.manifest = Manifest.load(data_dir)
        self._val: TokenLoader | None = None

    def build_model(self) -> nn.Module:
        """A fresh GPT of ``config.model``."""
        return GPT(self.run_config.model)

    def build_train_loader(self, micro_batch_size: int) -> TokenLoader:
        """Shuffled train windows for this rank, seeded by the run seed."""
        return train_loader(
            self, self.data_dir, self.run_config.model.block_size, micro_batch_size, self.run_config.seed
        )

    def eval_batches(self, max_batches: int | None) -> Iterable[Batch]:
        """The validation split in order; this rank's share."""
        if self._val is None:
            self._val = val_loader(self, self.data_dir, self.run_config.model.block_size)
        return self._val.eval_batches(max_batches, pad=True)  # one shape: no recompile for the last batch

    def bits_per_byte(self, loss: float) -> float | None:
        """Nats per token → bits per UTF-8 byte of the validation split (comparable across tokenizers)."""
        return bits_per_byte(loss, *self.manifest.text_size("val"))

    def sample_text(self, model: nn.Module, prompt: str, max_new_tokens: int) -> str | None:
        """Continue ``prompt`` with top-k sampling (a fixed seed, so samples compare across steps)."""
        assert isinstance(model, GPT)
        ids = self.tokenizer.encode_ordinary(prompt) or [self.tokenizer.eot_token]
        new = generate_ids(model, ids, max_new_tokens, temperature=0.8, top_k=50, seed=self.seed)
        return prompt + self.tokenizer.decode(new)

    def model_config_dict(self) -> dict[str, Any]:
        """The GPT config as JSON data."""
        return self.run_config.model.to_dict()

    def run_config_yaml(self) -> str:
        """The run config as YAML."""
        return yaml.safe_dump(self.run_config.to_dict(), sort_keys=False, allow_unicode=True)

    def checkpoint_meta(self) -> dict[str, Any]:
        """The tokenizer's identity travels with each checkpoint (souping and fine-tuning check it)."""
        return {"tokenizer_name": self.tokenizer.name, "tokenizer_fingerprint": self.tokenizer.fingerprint}

    def write_checkpoint_extra(self, directory: Path) -> None:
        """Save the tokenizer inside the checkpoint, so ``load_model`` needs nothing else."""
        self.tokenizer.save(directory / TOKENIZER_DIR)
