"""Hugging Face folders in and out: ``config.json`` + safetensors (+ tokenizer) ↔ a microgpt GPT or checkpoint.

Which family a model becomes is :mod:`microgpt.model.hf.families`; the tensor names are
:mod:`microgpt.model.hf.weights`. Weights are only ever read from safetensors (pickled ``.bin`` files are refused).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from microgpt.common.atomic import atomic_write_text, make_out_dir
from microgpt.common.checkpoint import TOKENIZER_DIR
from microgpt.common.errors import MicrogptError
from microgpt.model.config import GPTConfig
from microgpt.model.gpt import GPT
from microgpt.model.hf.families import Arch, config_from_hf, config_to_hf, export_arch
from microgpt.model.hf.weights import state_dict_from_hf, state_dict_to_hf
from microgpt.model.hf_tokenizer import tokenizer_from_hf_folder, write_hf_tokenizer
from microgpt.tokenizer import Tokenizer
from microgpt.tokenizer.tokenizer import ENDOFTEXT

# OpenAI's four GPT-2 sizes (n_layer, n_head, n_embd), all with 1024 positions and 50257 tokens.
GPT2_SIZES: dict[str, tuple[int, int, int]] = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}
GPT2_HUB_FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt"]


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder's ``model.safetensors`` (or its shards, listed in ``model.safetensors.index.json``).

    Raises:
        MicrogptError: When no safetensors file is there (``pytorch_model.bin`` pickles are refused) or one is
            corrupt.
    """
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError) as error:
            raise MicrogptError(f"{index}: not a valid safetensors index: {error}") from None
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        hint = (
            " (pickled .bin weights are never loaded: convert them to safetensors)" if any(folder.glob("*.bin")) else ""
        )
        raise MicrogptError(f"{folder}: missing model.safetensors{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            tensors |= load_file(folder / name)
        except (SafetensorError, OSError) as error:
            raise MicrogptError(f"{folder / name}: cannot read safetensors: {error}") from None
    return tensors


def model_from_hf(config: GPTConfig, arch: Arch, tensors: Mapping[str, torch.Tensor], source: str) -> GPT:
    """Build a GPT and load ``transformers`` tensors into it.

    Raises:
        MicrogptError: When tensors are missing, unexpected or of the wrong shape (the first few are named).
    """
    model = GPT(config)
    ours = state_dict_from_hf(config, arch, tensors)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    wrong = [
        f"{name} {tuple(ours[name].shape)} (expected {tuple(t.shape)})"
        for name, t in expected.items()
        if name in ours and ours[name].shape != t.shape
    ]
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(items[:3])}" for label, items in (
            ("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]  # fmt: skip
        raise MicrogptError(f"{source}: weights do not match the config ({'; '.join(parts)})")
    model.load_state_dict(ours, strict=True)
    return model


# ---- folders ------------------------------------------------------------------------------------------------


def import_hf(folder: str | Path) -> tuple[GPT, Tokenizer | None]:
    """Load a ``transformers`` folder (``config.json`` + safetensors; GPT-2, Llama, Qwen3, Arcee) into microgpt.

    Args:
        folder: A folder written by ``save_pretrained`` or :func:`export_hf`.

    Returns:
        The model (eval mode, CPU, float32) and the folder's tokenizer, or ``None`` when it has none.

    Raises:
        MicrogptError: For a missing folder or file, an unsupported architecture or option, or weights that do
            not match the config.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MicrogptError(f"{folder}: missing config.json (not a transformers model folder)")
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MicrogptError(f"{config_path}: not valid JSON: {error}") from None
    config, arch = config_from_hf(hf_config)
    model = model_from_hf(config, arch, {k: v.float() for k, v in read_safetensors(folder).items()}, str(folder))
    return model.eval(), tokenizer_from_hf_folder(folder)


def export_hf(model: GPT, tokenizer: Tokenizer | None, out_dir: str | Path) -> Path:
    """Write ``model`` (and ``tokenizer``) as a folder ``transformers.AutoModelForCausalLM`` loads without custom code.

    Args:
        model: The GPT; it becomes the family :func:`~microgpt.model.hf.families.export_arch` names (Llama, Qwen3,
            Arcee or GPT-2).
        tokenizer: Written as ``tokenizer.json`` (+ ``tokenizer_config.json``); ``None`` writes weights only.
        out_dir: Created if needed; files in it are overwritten.

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: When the configuration has no ``transformers`` equivalent (the option is named).
    """
    arch = export_arch(model.config)
    out = make_out_dir(Path(out_dir), "export folder")
    eos = tokenizer.special_tokens.get(ENDOFTEXT) if tokenizer is not None else None
    if tokenizer is not None and tokenizer.n_vocab != model.config.vocab_size:
        raise MicrogptError(f"tokenizer has {tokenizer.n_vocab} tokens, the model {model.config.vocab_size}")
    save_file(state_dict_to_hf(model, arch), str(out / "model.safetensors"), metadata={"format": "pt"})
    atomic_write_text(out / "config.json", json.dumps(config_to_hf(model.config, arch, eos), indent=2) + "\n")
    if tokenizer is not None:
        write_hf_tokenizer(tokenizer, out)
    return out


def load_pretrained_gpt2(name: str, folder: str | Path | None = None) -> tuple[GPT, Tokenizer]:
    """OpenAI's GPT-2 (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``) as a microgpt model.

    Args:
        name: The size.
        folder: A local folder holding the Hugging Face files (``config.json``, ``model.safetensors``,
            ``vocab.json``, ``merges.txt``); without it they are fetched with ``huggingface_hub`` (cached).

    Returns:
        The model (eval mode, CPU) and GPT-2's tokenizer.

    Raises:
        MicrogptError: For an unknown name, a folder missing files, weights whose shapes are not the named size's,
            or a download that fails (e.g. offline without a cached copy).
    """
    if name not in GPT2_SIZES:
        raise MicrogptError(f"unknown GPT-2 model {name!r}; choose one of {', '.join(GPT2_SIZES)}")
    if folder is None:
        folder = _download_gpt2(name)
    folder = Path(folder)
    missing = [f for f in GPT2_HUB_FILES if not (folder / f).is_file()]
    if missing:
        raise MicrogptError(f"{folder}: missing {', '.join(missing)} (needed for {name})")
    n_layer, n_head, n_embd = GPT2_SIZES[name]
    config = GPTConfig(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=1024, vocab_size=50257, pos_encoding="learned",
        norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True,
    )  # fmt: skip
    model = model_from_hf(config, "gpt2", read_safetensors(folder), f"{folder} (as {name})")
    tokenizer = Tokenizer.from_gpt2_files(folder / "vocab.json", folder / "merges.txt", name="gpt2")
    return model.eval(), tokenizer


def _download_gpt2(name: str) -> Path:
    """Fetch GPT-2's files from the Hugging Face Hub (``openai-community/<name>``) into its cache."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(f"openai-community/{name}", allow_patterns=GPT2_HUB_FILES))
    except Exception as error:  # the hub raises many types (offline, HTTP, missing repo); all mean "not here"
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise MicrogptError(f"cannot download {name} from the Hugging Face Hub: {first}") from None


def import_to_checkpoint(source: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write a ``transformers`` model (a GPT-2 name or a folder) as a microgpt checkpoint, e.g. to fine-tune it.

    Args:
        source: ``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl`` (downloaded or cached), or a folder.
        out_dir: A run directory; the checkpoint goes to ``out_dir/checkpoints/step-0000000``, so ``out_dir``
            works wherever a command takes ``CHECKPOINT`` (``sample``, ``eval``, fine-tuning's ``init_from``).
        overwrite: Replace the checkpoints already in ``out_dir`` (refused otherwise; the old ones stay until
            the new one is complete).

    Returns:
        The step directory.

    Raises:
        MicrogptError: As :func:`import_hf` / :func:`load_pretrained_gpt2`, when the folder has no tokenizer, or
            when ``out_dir`` already holds checkpoints or files and ``overwrite`` is false.
    """
    from microgpt.common.checkpoint import CheckpointWriter, capture_rng_state, list_checkpoints

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MicrogptError(f"import folder {out} is a file, not a folder: choose another path")
    occupied = out.is_dir() and any(out.iterdir())
    if occupied and not overwrite:
        held = list_checkpoints(out / "checkpoints")
        what = f"checkpoint {held[-1].name}" if held else "files"
        raise MicrogptError(f"{out} already holds {what}; import into another folder, or pass --overwrite to replace")
    make_out_dir(out / "checkpoints", "import folder")

    folder = Path(source)
    if not folder.is_dir():
        if str(source) not in GPT2_SIZES:
            raise MicrogptError(f"unknown model {str(source)!r}: not a folder, nor one of {', '.join(GPT2_SIZES)}")
        model, tokenizer = load_pretrained_gpt2(str(source))
    else:
        model, maybe_tokenizer = import_hf(folder)
        if maybe_tokenizer is None:
            raise MicrogptError(f"{folder}: no tokenizer.json (or vocab.json + merges.txt); a checkpoint needs one")
        tokenizer = maybe_tokenizer
    if tokenizer.n_vocab != model.config.vocab_size:
        raise MicrogptError(f"{source}: tokenizer has {tokenizer.n_vocab} tokens, the model {model.config.vocab_size}")

    def write_tokenizer(tmp: Path) -> None:
        tokenizer.save(tmp / TOKENIZER_DIR)

    writer = CheckpointWriter(out / "checkpoints", keep_last=0)
    written = writer.save(
        0,
        model=model,
        optimizers=[],
        model_config=model.config.to_dict(),
        run_config_yaml=f"# imported from {source} by microgpt import\n",
        trainer_state={},
        rng_states=[capture_rng_state()],
        meta={"tokens": 0, "tokenizer_fingerprint": tokenizer.fingerprint, "source": str(source)},
        write_extra=write_tokenizer,
    )
    for older in list_checkpoints(out / "checkpoints"):  # --overwrite: the import is now the run's only checkpoint
        if older != written:
            shutil.rmtree(older)
    return written
