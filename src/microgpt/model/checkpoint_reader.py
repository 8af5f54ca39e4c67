"""Reading a checkpoint step folder into a model: its config, weights, tokenizer and lineage.

The files (``model.safetensors``, ``model_config.json``, ``meta.json``, ``tokenizer/``) are written by
``common/checkpoint.py``; this module is the one place that turns them back into a :class:`GPT`. Lineage is
content-addressed: a checkpoint's id is the hash of its weights file, so it survives moving or copying runs.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from microgpt.common.checkpoint import TOKENIZER_DIR, CheckpointError, read_meta
from microgpt.common.checkpoint_load import load_model_weights
from microgpt.common.config import validate_config
from microgpt.common.errors import MicrogptError
from microgpt.model.config import GPTConfig
from microgpt.model.gpt import GPT
from microgpt.tokenizer import Tokenizer

__all__ = [
    "TOKENIZER_DIR",
    "ancestor_id",
    "checkpoint_id",
    "load_gpt",
    "read_model_config",
    "read_tokenizer",
    "tokenizer_fingerprint",
]


def checkpoint_id(step_dir: Path) -> str:
    """The content id of a checkpoint: ``sha256:`` plus the hash of its weights file (from ``meta.json``).

    Content addressing keeps lineage valid when run folders are moved or copied.
    """
    meta = read_meta(step_dir)
    digest = meta.get("files", {}).get("model.safetensors")
    if not isinstance(digest, str):
        raise CheckpointError(f"{step_dir}: meta.json does not list model.safetensors")
    return f"sha256:{digest}"


def ancestor_id(step_dir: Path) -> str:
    """The stage-1 root of a checkpoint's lineage: its recorded ``ancestor``, or itself when it has no parent."""
    meta = read_meta(step_dir)
    ancestor = meta.get("ancestor")
    if isinstance(ancestor, str) and ancestor:
        return ancestor
    return checkpoint_id(step_dir)


def tokenizer_fingerprint(step_dir: Path) -> str:
    """The fingerprint of the tokenizer a checkpoint was trained with (``meta.json``, else its ``tokenizer/``).

    Raises:
        CheckpointError: When the checkpoint records no tokenizer at all.
    """
    value = read_meta(step_dir).get("tokenizer_fingerprint")
    if isinstance(value, str) and value:
        return value
    if (step_dir / TOKENIZER_DIR).is_dir():
        return Tokenizer.from_directory(step_dir / TOKENIZER_DIR).fingerprint
    raise CheckpointError(f"{step_dir}: the checkpoint records no tokenizer (no tokenizer_fingerprint, no tokenizer/)")


def read_model_config(step_dir: Path) -> GPTConfig:
    """The :class:`GPTConfig` saved in a checkpoint.

    Raises:
        CheckpointError: When ``model_config.json`` is missing or invalid.
    """
    path = step_dir / "model_config.json"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML; one reader for both
    except (OSError, yaml.YAMLError) as error:
        raise CheckpointError(f"{step_dir}: cannot read model_config.json: {error}") from None
    try:
        return validate_config(GPTConfig, data)
    except MicrogptError as error:
        raise CheckpointError(f"{path}: invalid model config: {error}") from None


def load_gpt(step_dir: Path, device: torch.device | str = "cpu") -> GPT:
    """Build the GPT of a checkpoint step directory and load its weights, in eval mode.

    Raises:
        CheckpointError: When the config or the weights are missing, corrupt or do not fit.
    """
    model = GPT(read_model_config(step_dir))
    load_model_weights(model, step_dir)
    return model.to(device).eval()


def read_tokenizer(step_dir: Path, config: GPTConfig) -> Tokenizer:
    """The tokenizer saved beside a checkpoint's weights, checked against ``meta.json`` and the model's vocabulary.

    Raises:
        CheckpointError: When it is missing, is not the one the model was trained with, or has another vocab size.
    """
    tokenizer = Tokenizer.from_directory(step_dir / TOKENIZER_DIR)
    expected = read_meta(step_dir).get("tokenizer_fingerprint")
    if expected is not None and tokenizer.fingerprint != expected:
        raise CheckpointError(f"{step_dir}: the saved tokenizer does not match the one the model was trained with")
    if tokenizer.n_vocab != config.vocab_size:
        raise CheckpointError(
            f"{step_dir}: tokenizer has {tokenizer.n_vocab} tokens, the model's vocab_size is {config.vocab_size}"
        )
    return tokenizer
