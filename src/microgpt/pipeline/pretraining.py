"""Running ``microgpt train``: check the run folder, prepare its data on rank 0, then train or resume stage 1.

The trainer (``model/pretrain.py``) learns from prepared shards; this module decides what a run folder may hold
and makes the data it trains on, before the process group's collectives start.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from microgpt.common.atomic import make_out_dir
from microgpt.common.checkpoint import TOKENIZER_DIR, latest_checkpoint
from microgpt.common.config import differing_settings, dump_config
from microgpt.common.device import pick_device
from microgpt.common.dist import DistInfo, check_shared_dir, process_group, run_on_main
from microgpt.common.errors import ConfigError, MicrogptError
from microgpt.common.log import get_logger
from microgpt.common.loop_state import TrainResult, checkpoint_step, refuse_past_max_steps
from microgpt.model.pretrain import DATA_DIR, RESUME_SAFE, RUN_CONFIG, PretrainTrainer, RunConfig
from microgpt.tokenizer import Tokenizer

log = get_logger(__name__)


def check_out_dir(config: RunConfig, *, overwrite: bool) -> None:
    """Refuse an ``out_dir`` that holds a different run's config, unless ``overwrite`` (then clear that run).

    Raises:
        MicrogptError: Naming the settings that differ.
    """
    out = Path(config.out_dir)
    differ = differing_settings(out / RUN_CONFIG, config.to_dict(), ignore=RESUME_SAFE)
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
    tokenizer = Tokenizer.from_directory(data_dir / TOKENIZER_DIR)
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
    with process_group(dist, device):
        # Rank 0 alone checks out_dir and prepares the data (hours, for a big corpus); the others wait on the
        # process group's store, which has no collective timeout, and learn of a failure in one line.
        prepared = run_on_main("preparing the data", lambda: _prepare_on_main(config, overwrite=overwrite))
        check_shared_dir(Path(config.out_dir))  # every node must see what rank 0 wrote
        tokenizer, data_dir = prepared if prepared is not None else _load_prepared(config)
        return PretrainTrainer(config, tokenizer, data_dir, dist=dist).fit()


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
    return Tokenizer.from_directory(data_dir / TOKENIZER_DIR), data_dir
