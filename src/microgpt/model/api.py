"""The short Python API: load a checkpoint (the tokenizer travels with it), generate text, evaluate.

>>> from microgpt import load_model
>>> model = load_model("runs/shakespeare")  # a run directory means its newest complete checkpoint  # doctest: +SKIP
>>> print(model.generate_text("ROMEO:", max_new_tokens=50, seed=0))  # doctest: +SKIP
>>> for piece in model.stream_text("JULIET:", max_new_tokens=50):  # doctest: +SKIP
...     print(piece, end="", flush=True)
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from microgpt.common.checkpoint import CheckpointError, load_model_weights, read_meta, resolve_checkpoint
from microgpt.common.config import load_yaml, validate_config
from microgpt.common.device import pick_device
from microgpt.common.errors import MicrogptError
from microgpt.model.config import GPTConfig
from microgpt.model.generate import generate
from microgpt.model.gpt import GPT
from microgpt.tokenizer import Tokenizer


class LoadedModel:
    """A GPT with its tokenizer, ready to generate (see :func:`load_model`).

    Attributes:
        model: The GPT, in eval mode.
        tokenizer: The tokenizer it was trained with.
        checkpoint: The step directory it was loaded from.
        meta: The checkpoint's ``meta.json`` (step, tokens, validation loss, ...).
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, checkpoint: Path, meta: dict[str, Any]) -> None:
        """Wrap a loaded model; use :func:`load_model` rather than calling this."""
        self.model = model
        self.tokenizer = tokenizer
        self.checkpoint = checkpoint
        self.meta = meta

    @property
    def config(self) -> GPTConfig:
        """The model config."""
        return self.model.config

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return next(self.model.parameters()).device

    def stream_text(
        self,
        prompt: str,
        max_new_tokens: int = 100,
        *,
        temperature: float = 0.8,
        top_k: int | None = 200,
        top_p: float | None = None,
        seed: int | None = None,
        stop_at_eot: bool = True,
    ) -> Iterator[str]:
        """Yield the continuation of ``prompt`` piece by piece, as tokens are sampled.

        Pieces are whole UTF-8 characters: bytes of a character split across tokens are held until complete.

        Args:
            prompt: Text to continue (empty: start from the end-of-text token).
            max_new_tokens: Upper bound on sampled tokens.
            temperature: Softmax temperature (0: greedy).
            top_k: Sample among the k most likely tokens (None: all).
            top_p: Nucleus sampling threshold (None: off).
            seed: Seed for reproducible samples (None: the global RNG).
            stop_at_eot: Stop at the end-of-text token (it is not yielded).

        Yields:
            Text pieces.
        """
        ids = self.tokenizer.encode_ordinary(prompt) or [self.tokenizer.eot_token]
        eot = self.tokenizer.eot_token
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = (eot,) if stop_at_eot else ()
        for token in generate(
            self.model,
            ids,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            stop_tokens=stops,
            seed=seed,
        ):
            if token == eot and stop_at_eot:
                break
            piece = decoder.decode(self.tokenizer.decode_bytes([token]))
            if piece:
                yield piece
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def generate_text(self, prompt: str, max_new_tokens: int = 100, **options: Any) -> str:
        """Return the continuation of ``prompt`` (the prompt not included); options as :meth:`stream_text`."""
        return "".join(self.stream_text(prompt, max_new_tokens, **options))


def load_model(path: str | Path, *, device: str = "auto") -> LoadedModel:
    """Load a checkpoint: a step directory, or a run directory (its newest complete checkpoint).

    Args:
        path: The checkpoint or run directory.
        device: ``auto`` (cuda → mps → cpu), ``cpu``, ``cuda``...

    Returns:
        The model with its tokenizer.

    Raises:
        CheckpointError: When there is no checkpoint, it is corrupt, or its weights do not fit its config.
    """
    step_dir = resolve_checkpoint(path)
    meta = read_meta(step_dir)
    try:
        raw = json.loads((step_dir / "model_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{step_dir}: cannot read model_config.json: {error}") from None
    config = validate_config(GPTConfig, raw)
    model = GPT(config)
    load_model_weights(model, step_dir)
    tokenizer = Tokenizer.from_directory(step_dir / "tokenizer")
    expected = meta.get("tokenizer_fingerprint")
    if expected is not None and tokenizer.fingerprint != expected:
        raise CheckpointError(f"{step_dir}: the saved tokenizer does not match the one the model was trained with")
    if tokenizer.n_vocab != config.vocab_size:
        raise CheckpointError(
            f"{step_dir}: tokenizer has {tokenizer.n_vocab} tokens, the model's vocab_size is {config.vocab_size}"
        )
    model.to(pick_device(device)).eval()
    return LoadedModel(model, tokenizer, step_dir, meta)


async def load_model_async(path: str | Path, *, device: str = "auto") -> LoadedModel:
    """:func:`load_model` for async callers: the file reads and weight loading run in a worker thread."""
    return await asyncio.to_thread(load_model, path, device=device)


def eval_data_dir(loaded: LoadedModel, data: str | Path | None = None) -> Path:
    """The prepared data folder to evaluate a checkpoint on.

    Args:
        loaded: The checkpoint (its tokenizer prepares data when shards must be made).
        data: A prepared data folder (used as is), a YAML with a ``data:`` section or a bare data config
            (prepared once into microgpt's cache), or ``None`` for what the checkpoint's lineage records
            (:func:`~microgpt.model.lineage.recorded_data`: a stage-1 run's data, a fine-tune's or a soup's stage-2
            folder).

    Raises:
        MicrogptError: When ``data`` is a folder without ``manifest.json``, or nothing is given or recorded.
    """
    from microgpt.common.aio import default_cache_dir
    from microgpt.data import DataConfig, prepare_data
    from microgpt.data.manifest import MANIFEST
    from microgpt.model.lineage import recorded_data

    if data is not None and Path(data).is_dir():
        if not (Path(data) / MANIFEST).is_file():
            raise MicrogptError(
                f"{data}: not a prepared data folder (no {MANIFEST}): pass a folder `microgpt data prepare` wrote, "
                "or a YAML with a data section"
            )
        return Path(data)
    if data is not None:
        raw = load_yaml(data)
        config = validate_config(DataConfig, raw["data"] if isinstance(raw.get("data"), dict) else raw)
    else:
        record = recorded_data(loaded.checkpoint)
        if record.folder is not None:
            return record.folder
        assert record.config is not None  # a stage-1 record without its shards
        config = record.config
    key = json.dumps([config.to_dict(), loaded.tokenizer.fingerprint], sort_keys=True)
    data_dir = default_cache_dir() / "eval-data" / hashlib.sha256(key.encode()).hexdigest()[:16]
    prepare_data(config, loaded.tokenizer, data_dir)
    return data_dir


@dataclass
class EvalResult:
    """Validation loss of a checkpoint on a split (or its first batches).

    Attributes:
        loss: Mean loss over the scored target tokens, nats/token.
        bits_per_byte: ``loss`` converted with the split's bytes per token.
        tokens: Target tokens scored (fewer than the split's with ``max_batches``).
        split_tokens: Tokens in the whole split.
        split_bytes: UTF-8 bytes of the whole split.
    """

    loss: float
    bits_per_byte: float
    tokens: int
    split_tokens: int
    split_bytes: int

    @property
    def partial(self) -> bool:
        """Whether fewer targets were scored than the split has (``max_batches`` stopped early)."""
        return self.tokens < self.split_tokens - 1  # a split of n tokens has n - 1 targets at most


@torch.no_grad()
def evaluate_checkpoint(
    path: str | Path,
    *,
    data_config: Path | None = None,
    split: Literal["val", "test"] = "val",
    batch_size: int = 16,
    max_batches: int | None = None,
    device: str = "auto",
) -> EvalResult:
    """Mean loss (nats/token) and bits per byte of a checkpoint on a split of a data config.

    Args:
        path: Checkpoint or run directory.
        data_config: A prepared data folder (``manifest.json``), or a YAML with a ``data:`` section (a run or
            prepare config) or a bare data config; default: the data the checkpoint's lineage records
            (:func:`eval_data_dir`).
        split: ``val`` or ``test``.
        batch_size: Sequences per batch.
        max_batches: Evaluate only this many batches (None: the whole split).
        device: Where to run.

    Raises:
        MicrogptError: When no data is given or recorded, the config has no data section, or the split is empty.
    """
    from microgpt.data import Manifest
    from microgpt.data.loader import TokenLoader

    if split not in {"val", "test"}:
        raise MicrogptError(f"split must be val or test, got {split!r}")
    loaded = load_model(path, device=device)
    data_dir = eval_data_dir(loaded, data_config)
    manifest = Manifest.load(data_dir)
    if manifest.tokenizer.fingerprint != loaded.tokenizer.fingerprint:
        raise MicrogptError(f"{data_dir}: shards were made by another tokenizer than the checkpoint's")
    loader = TokenLoader(
        data_dir, split, batch_size, loaded.config.block_size, shuffle=False, device=loaded.device, prefetch=0
    )
    total, count = 0.0, 0
    for x, y in loader.eval_batches(max_batches):
        _, loss = loaded.model(x, y)
        assert loss is not None
        n = int((y != -1).sum())
        total += float(loss) * n
        count += n
    if count == 0:
        raise MicrogptError(f"the {split} split is empty")
    mean = total / count
    tokens, nbytes = manifest.split_tokens(split), manifest.split_bytes(split)
    bpb = mean * tokens / nbytes / math.log(2)
    return EvalResult(loss=mean, bits_per_byte=bpb, tokens=count, split_tokens=tokens, split_bytes=nbytes)
