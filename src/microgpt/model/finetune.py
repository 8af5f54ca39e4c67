"""Stage 2: fine-tune a stage-1 checkpoint on high-quality text — the base trainer's loop with other hooks.

Fine-tuning differs from pretraining only in where things come from, so it overrides hooks and never copies the
loop (STYLE.md §5):

- the model's architecture is the parent's (``model_config.json``), and its starting weights are the parent's
  (weights only: the optimizer, its moments and the schedule start fresh, with the lower learning rate of
  ``train``);
- training batches come from a prepared stage-2 data folder, in an order seeded by ``data_seed`` (so ingredients
  can differ by data order alone);
- validation and bits per byte use the stage-2 validation split of ``eval_data_dir`` (by default the training
  folder), so ingredients trained on different mixes are still compared on the same documents.

Every checkpoint records its lineage in ``meta.json``: ``parent`` (the content id of the checkpoint it started
from), ``parent_path``, and ``ancestor`` (the id of the stage-1 checkpoint at the root). Soups refuse
ingredients whose ancestors differ (Wortsman et al. 2022 average models fine-tuned from one initialisation).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field
from torch import nn

from microgpt.common.checkpoint import latest_checkpoint, read_meta, resolve_checkpoint
from microgpt.common.checkpoint_load import load_model_weights
from microgpt.common.config import ConfigBase, flatten_config
from microgpt.common.errors import MicrogptError
from microgpt.common.log import get_logger
from microgpt.common.loss_eval import bits_per_byte
from microgpt.common.trainer import Batch, BatchSource, TrainConfig, Trainer
from microgpt.data.manifest import Manifest
from microgpt.model.checkpoint_reader import (
    TOKENIZER_DIR,
    ancestor_id,
    checkpoint_id,
    read_model_config,
    tokenizer_fingerprint,
)
from microgpt.model.gpt import GPT
from microgpt.model.pretrain import RESUME_SAFE, train_loader, val_loader

log = get_logger(__name__)


class FinetuneConfig(ConfigBase):
    """A stage-2 run: which stage-1 checkpoint, which prepared data, how to train."""

    init_from: Path = Field(description="The parent checkpoint: a step directory, or a run directory (its latest).")
    data_dir: Path = Field(description="Prepared stage-2 data folder (manifest.json) whose train split is used.")
    eval_data_dir: Path | None = Field(
        None, description="Prepared folder whose val split is used for evaluation (default: data_dir)."
    )
    out_dir: Path = Field(description="Run directory of this fine-tuning run (checkpoints, metrics.jsonl).")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1e-4, warmup_steps=10, max_steps=200, min_lr_ratio=0.0),
        description="Training settings: fine-tuning wants a lower learning rate and its own, short schedule.",
    )
    seed: int = Field(1337, description="Seed of dropout and sampling (the weights come from the parent).")
    data_seed: int = Field(0, description="Seed of the order of training batches.")


class FinetuneTrainer(Trainer):
    """Fine-tunes a stage-1 checkpoint: the base loop, with the parent's model and weights and stage-2 data.

    Args:
        config: The stage-2 run.
        run_config: Extra data saved as the run config with each checkpoint (default: ``config``).

    Raises:
        CheckpointError: When the parent checkpoint is missing or corrupt (before any work).
        MicrogptError: When the data was tokenized with another tokenizer than the parent's.
    """

    def __init__(self, config: FinetuneConfig, run_config: dict[str, Any] | None = None) -> None:
        """Resolve and check the parent and the data; nothing heavy happens until :meth:`fit`."""
        super().__init__(config.train, config.out_dir, seed=config.seed)
        self.finetune = config
        self._run_config = run_config if run_config is not None else config.to_dict()
        self.parent_dir = resolve_checkpoint(config.init_from)  # missing or corrupt parent: a clear error, now
        self.parent = checkpoint_id(self.parent_dir)
        self.ancestor = ancestor_id(self.parent_dir)
        self.model_config = read_model_config(self.parent_dir)
        self.fingerprint = tokenizer_fingerprint(self.parent_dir)
        self.eval_dir = config.eval_data_dir or config.data_dir
        for folder in {config.data_dir, self.eval_dir}:
            manifest = Manifest.load(folder)
            if manifest.tokenizer.fingerprint != self.fingerprint:
                raise MicrogptError(
                    f"{folder} was tokenized with {manifest.tokenizer.name!r}, not the tokenizer of the parent "
                    f"checkpoint {self.parent_dir}: prepare the stage-2 data with the parent's tokenizer/"
                )
        self.eval_manifest = Manifest.load(self.eval_dir)
        self._refuse_another_finetune()

    def settings(self) -> dict[str, Any]:
        """What makes this fine-tune this one: the config, flattened, less paths of its own and resume-safe keys.

        ``init_from`` is left out because the parent is compared by content id (a moved folder is the same
        parent); ``train.max_steps`` and the other keys a pretraining resume may change are left out too.
        """
        flat = flatten_config(self.finetune.to_dict())
        return {k: v for k, v in flat.items() if k not in {"out_dir", "init_from"} and k not in RESUME_SAFE}

    def _refuse_another_finetune(self) -> None:
        """Refuse to resume a fine-tune of another parent or with other settings (as pretraining refuses).

        Raises:
            MicrogptError: Naming the folder, what differs and the fix.
        """
        out = Path(self.finetune.out_dir)
        newest = latest_checkpoint(out / "checkpoints", verify=False)
        if newest is None:
            return
        meta = read_meta(newest)
        fix = f"use another out_dir, or delete {out / 'checkpoints'} to start over"
        if meta.get("parent") != self.parent:
            was = meta.get("parent_path") or meta.get("parent") or "no parent"
            raise MicrogptError(f"{out} holds a fine-tune of another parent ({was}), not of {self.parent_dir}: {fix}")
        saved = meta.get("finetune_settings")
        if not isinstance(saved, dict):
            return  # written before settings were recorded: the parent check is all there is
        now = self.settings()
        differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if differ:
            shown = ", ".join(differ[:4]) + (" …" if len(differ) > 4 else "")
            raise MicrogptError(f"{out} holds a fine-tune with other settings (it differs in {shown}): {fix}")

    # ---- hooks of the base loop -------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        """The parent's architecture; its weights arrive in :meth:`init_weights_from`."""
        return GPT(self.model_config)

    def init_weights_from(self, model: nn.Module) -> None:
        """Start from the parent's weights (weights only: optimizer and schedule start fresh)."""
        load_model_weights(model, self.parent_dir)
        log.info("fine-tuning from %s", self.parent_dir)

    def build_train_loader(self, micro_batch_size: int) -> BatchSource:
        """Batches of the stage-2 train split, in the order ``data_seed`` picks."""
        return train_loader(
            self, self.finetune.data_dir, self.model_config.block_size, micro_batch_size, self.finetune.data_seed
        )

    def eval_batches(self, max_batches: int | None) -> Iterable[Batch]:
        """The stage-2 validation split, in order."""
        return val_loader(self, self.eval_dir, self.model_config.block_size).eval_batches(max_batches, pad=True)

    def model_config_dict(self) -> dict[str, Any]:
        """The parent's model config, unchanged (soups need identical architectures)."""
        return self.model_config.to_dict()

    def run_config_yaml(self) -> str:
        """The stage-2 run config as YAML."""
        return yaml.safe_dump(self._run_config, sort_keys=False, allow_unicode=True)

    def bits_per_byte(self, loss: float) -> float | None:
        """Bits per byte of the validation split: nats/token × tokens / bytes / ln 2 (the split's own counts)."""
        return bits_per_byte(loss, *self.eval_manifest.text_size("val"))

    @cached_property
    def _tokenizer(self) -> Any:
        from microgpt.tokenizer import Tokenizer

        return Tokenizer.from_directory(self.parent_dir / TOKENIZER_DIR)

    def sample_text(self, model: nn.Module, prompt: str, max_new_tokens: int) -> str | None:
        """A short sample from the model being trained (needs the parent's ``tokenizer/``)."""
        if not (self.parent_dir / TOKENIZER_DIR).is_dir() or not isinstance(model, GPT):
            return None
        from microgpt.model.generate import generate_ids

        ids = self._tokenizer.encode_ordinary(prompt) or [self._tokenizer.eot_token]
        new = generate_ids(model, ids, max_new_tokens, temperature=0.8, top_k=50, seed=self.seed)
        text: str = self._tokenizer.decode(new)
        return text

    def checkpoint_meta(self) -> dict[str, Any]:
        """Lineage and tokenizer identity for ``meta.json``."""
        return {
            "stage": "finetune",
            "ancestor": self.ancestor,
            "parent_path": str(self.parent_dir),
            "tokenizer_fingerprint": self.fingerprint,
            "finetune_settings": self.settings(),
        }

    def write_checkpoint_extra(self, directory: Path) -> None:
        """Copy the parent's tokenizer so that the checkpoint samples and evaluates on its own."""
        source = self.parent_dir / TOKENIZER_DIR
        if source.is_dir():
            shutil.copytree(source, directory / TOKENIZER_DIR)
