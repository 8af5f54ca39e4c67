"""Pretraining: the run config, and the trainer that feeds token shards to a GPT.

``microgpt train CONFIG`` calls :func:`run_pretraining`: it makes sure the tokenizer and the shards exist in
``out_dir/data`` (training the tokenizer and tokenizing the corpus the first time), then trains — resuming from
the newest complete checkpoint when ``out_dir`` already holds one of the same run.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import Field, model_validator
from torch import nn

from microgpt.common.atomic import make_out_dir
from microgpt.common.checkpoint import latest_checkpoint
from microgpt.common.config import ConfigBase, dump_config, load_yaml
from microgpt.common.device import pick_device
from microgpt.common.dist import DistInfo, check_shared_dir, destroy_distributed, init_distributed, run_on_main
from microgpt.common.errors import ConfigError, MicrogptError
from microgpt.common.log import get_logger
from microgpt.common.trainer import (
    Batch,
    TrainConfig,
    Trainer,
    TrainResult,
    checkpoint_step,
    refuse_past_max_steps,
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


def flatten_config(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config data as one level of dotted keys (``{"train": {"lr": 1}}`` → ``{"train.lr": 1}``)."""
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten_config(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def check_out_dir(config: RunConfig, *, overwrite: bool) -> None:
    """Refuse an ``out_dir`` that holds a different run's config, unless ``overwrite`` (then clear that run).

    Raises:
        MicrogptError: Naming the settings that differ.
    """
    out = Path(config.out_dir)
    saved_path = out / RUN_CONFIG
    if not saved_path.is_file():
        return
    saved, now = flatten_config(load_yaml(saved_path)), flatten_config(config.to_dict())
    differ = sorted(k for k in set(saved) | set(now) if k not in RESUME_SAFE and saved.get(k) != now.get(k))
    if not differ:
        return
    if not overwrite:
        shown = ", ".join(differ[:4]) + (" …" if len(differ) > 4 else "")
        raise MicrogptError(
            f"{out} holds a different run (it differs in {shown}); use another out_dir, or --overwrite to replace it"
        )
    log.warning("--overwrite: clearing the previous run in %s", out)
    data_changed = any(k.startswith(("tokenizer.", "data.")) for k in differ)
    for name in ("checkpoints", DATA_DIR if data_changed else None):
        if name is not None and (out / name).exists():
            shutil.rmtree(out / name)
    for name in ("metrics.jsonl", "loss.png", RUN_CONFIG):
        (out / name).unlink(missing_ok=True)


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
        return TokenLoader(
            self.data_dir,
            "train",
            micro_batch_size,
            self.run_config.model.block_size,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            seed=self.run_config.seed,
            global_batch=self.config.batch_size,  # one data order at any world size
            device=self.device,
        )

    def eval_batches(self, max_batches: int | None) -> Iterable[Batch]:
        """The validation split in order; this rank's share."""
        if self._val is None:
            self._val = TokenLoader(
                self.data_dir,
                "val",
                self.micro_batch,
                self.run_config.model.block_size,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
                shuffle=False,
                device=self.device,
                prefetch=0,
            )
        return self._val.eval_batches(max_batches, pad=True)  # one shape: no recompile for the last batch

    def bits_per_byte(self, loss: float) -> float | None:
        """Nats per token → bits per UTF-8 byte of the validation split (comparable across tokenizers)."""
        tokens, nbytes = self.manifest.split_tokens("val"), self.manifest.split_bytes("val")
        if nbytes == 0:
            return None
        return loss * tokens / nbytes / math.log(2)

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
        self.tokenizer.save(directory / "tokenizer")


def prepare_run_data(config: RunConfig, *, progress: bool = False) -> tuple[Tokenizer, Path]:
    """Make sure ``out_dir/data`` holds the tokenizer and the shards (prepare them unless complete).

    Returns:
        The tokenizer and the data folder.

    Raises:
        ConfigError: When the tokenizer's vocabulary does not match ``model.vocab_size``.
        MicrogptError: When the shards were made by a different tokenizer.
    """
    from microgpt.data import PrepareConfig, prepare_dataset

    data_dir = Path(config.out_dir) / DATA_DIR
    manifest = prepare_dataset(
        PrepareConfig(tokenizer=config.tokenizer, data=config.data, out_dir=data_dir), progress=progress
    )
    tokenizer = Tokenizer.from_directory(data_dir / "tokenizer")
    if manifest.tokenizer.fingerprint != tokenizer.fingerprint:
        raise MicrogptError(
            f"{data_dir}: the shards were made by tokenizer {manifest.tokenizer.name!r} "
            f"({manifest.tokenizer.fingerprint[:12]}), not by {tokenizer.name!r} ({tokenizer.fingerprint[:12]})"
        )
    if tokenizer.n_vocab != config.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={config.model.vocab_size} does not match the tokenizer's vocabulary "
            f"({tokenizer.n_vocab} tokens): set model.vocab_size={tokenizer.n_vocab}"
        )
    return tokenizer, data_dir


def run_pretraining(config: RunConfig, *, overwrite: bool = False) -> TrainResult:
    """Prepare the data (rank 0; the others wait without a timeout), then train or resume: ``microgpt train``.

    Args:
        config: The run.
        overwrite: Replace a different run found in ``out_dir`` instead of refusing.

    Returns:
        The final step, tokens, validation loss and bits per byte, and the last checkpoint.

    Raises:
        MicrogptError: For bad input: a different run in ``out_dir``, mismatched vocabularies, corrupt
            checkpoints, NaN loss.
    """
    dist = DistInfo.from_env()
    device = pick_device(config.train.device, dist.local_rank)
    joined = dist.is_distributed and not torch.distributed.is_initialized()
    init_distributed(dist, device)
    try:
        # Rank 0 alone checks out_dir and prepares the data (hours, for a big corpus); the others wait on the
        # process group's store, which has no collective timeout, and learn of a failure in one line.
        prepared = run_on_main("preparing the data", lambda: _prepare_on_main(config, overwrite=overwrite))
        check_shared_dir(Path(config.out_dir))  # every node must see what rank 0 wrote
        tokenizer, data_dir = prepared if prepared is not None else _load_prepared(config)
        return PretrainTrainer(config, tokenizer, data_dir, dist=dist).fit()
    finally:
        if joined:
            destroy_distributed()


def _prepare_on_main(config: RunConfig, *, overwrite: bool) -> tuple[Tokenizer, Path]:
    """Rank 0's part: check out_dir (another run, a lowered max_steps, a file in the way), prepare, save config."""
    check_out_dir(config, overwrite=overwrite)
    newest = latest_checkpoint(Path(config.out_dir) / "checkpoints", verify=False)
    if newest is not None:  # before anything is rewritten (run_config.yaml, metrics.jsonl)
        refuse_past_max_steps(newest, checkpoint_step(newest), config.train.max_steps)
    make_out_dir(Path(config.out_dir), "out_dir")
    prepared = prepare_run_data(config, progress=config.train.progress)
    dump_config(config, Path(config.out_dir) / RUN_CONFIG)
    return prepared


def _load_prepared(config: RunConfig) -> tuple[Tokenizer, Path]:
    data_dir = Path(config.out_dir) / DATA_DIR
    return Tokenizer.from_directory(data_dir / "tokenizer"), data_dir
