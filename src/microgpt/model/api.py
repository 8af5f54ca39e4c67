"""The short Python API: load a checkpoint (the tokenizer travels with it) and generate text.

>>> from microgpt import load_model
>>> model = load_model("runs/shakespeare")  # a run directory means its newest complete checkpoint  # doctest: +SKIP
>>> print(model.generate_text("ROMEO:", max_new_tokens=50, seed=0))  # doctest: +SKIP
>>> for piece in model.stream_text("JULIET:", max_new_tokens=50):  # doctest: +SKIP
...     print(piece, end="", flush=True)
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from microgpt.common.checkpoint import read_meta, resolve_checkpoint
from microgpt.common.device import pick_device
from microgpt.model.checkpoint_reader import load_gpt, read_tokenizer
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
    model = load_gpt(step_dir, pick_device(device))
    tokenizer = read_tokenizer(step_dir, model.config)
    return LoadedModel(model, tokenizer, step_dir, read_meta(step_dir))


async def load_model_async(path: str | Path, *, device: str = "auto") -> LoadedModel:
    """:func:`load_model` for async callers: the file reads and weight loading run in a worker thread."""
    return await asyncio.to_thread(load_model, path, device=device)
