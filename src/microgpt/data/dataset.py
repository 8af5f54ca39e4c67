"""A prepared dataset folder from one config: train (or load) the tokenizer, then tokenize into shards.

``out_dir`` ends up holding ``prepare.yaml`` (the config), ``tokenizer/`` and the shards with ``manifest.json``.
Each step is skipped when its output is already there, so rerunning a finished or interrupted prepare is cheap.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from microgpt.common.atomic import atomic_directory, make_out_dir
from microgpt.common.checkpoint import TOKENIZER_DIR
from microgpt.common.config import ConfigBase, differing_settings, dump_config
from microgpt.common.errors import MicrogptError
from microgpt.common.log import get_logger
from microgpt.data.config import DataConfig
from microgpt.data.documents import iter_documents
from microgpt.data.manifest import Manifest
from microgpt.data.prepare import prepare_data
from microgpt.tokenizer import Tokenizer, TokenizerConfig, build_tokenizer

log = get_logger(__name__)
CONFIG_FILE = "prepare.yaml"


class PrepareConfig(ConfigBase):
    """What ``microgpt data prepare CONFIG`` reads."""

    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="The tokenizer to train or load.")
    data: DataConfig = Field(description="Sources, split and shards.")
    out_dir: Path = Field(description="Folder for the tokenizer, shards and manifest.")


def _check_same_config(config: PrepareConfig, out: Path) -> None:
    """Refuse to mix outputs of two different configs in one folder."""
    saved_path = out / CONFIG_FILE
    # data.workers does not change the output
    differ = differing_settings(saved_path, config.to_dict(), sections=("tokenizer", "data"), ignore={"data.workers"})
    if differ:
        section = differ[0].split(".", 1)[0]
        raise MicrogptError(
            f"{out} was prepared with a different {section} config (see {saved_path}): use a new out_dir"
        )


def prepare_dataset(config: PrepareConfig, *, progress: bool = False) -> Manifest:
    """Build the tokenizer (BPE trains on the train split only), save it, and prepare the shards.

    Args:
        config: Tokenizer, data and output folder.
        progress: Show progress bars.

    Returns:
        The manifest of ``config.out_dir``.

    Raises:
        MicrogptError: On bad input, or when ``out_dir`` holds the output of a different config.
    """
    out = Path(config.out_dir)
    make_out_dir(out, "out_dir")
    _check_same_config(config, out)
    dump_config(config, out / CONFIG_FILE)
    tokenizer_dir = out / TOKENIZER_DIR
    if tokenizer_dir.exists():
        log.info("%s: reusing the saved tokenizer", tokenizer_dir)
        tokenizer = Tokenizer.from_directory(tokenizer_dir)
    else:
        # Train on the train split only: validation and test documents must stay unseen by every stage.
        documents = iter_documents(config.data, "train") if config.tokenizer.kind == "bpe" else None
        tokenizer = build_tokenizer(config.tokenizer, documents)
        with atomic_directory(tokenizer_dir) as tmp:
            tokenizer.save(tmp)
        log.info("saved tokenizer %s (%d tokens) to %s", tokenizer.name, tokenizer.n_vocab, tokenizer_dir)
    return prepare_data(config.data, tokenizer, out, progress=progress)
