"""Every shipped config validates, and its batches split over 1, 8 and 2 × 8 processes (or the ones it names).

A config made for other process counts says so in a header comment line ``# processes: 1, 2, 4, 8``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from microgpt.common.config import ConfigBase, load_config
from microgpt.common.errors import ConfigError
from microgpt.common.train_config import TrainConfig
from microgpt.model.finetune import FinetuneConfig
from microgpt.model.pretrain import RunConfig
from microgpt.pipeline.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
DEFAULT_WORLD_SIZES = (1, 8, 16)


def _kind(raw: dict[str, Any]) -> type[ConfigBase]:
    if "stage1" in raw:
        return PipelineConfig
    if "init_from" in raw:
        return FinetuneConfig
    return RunConfig


def _world_sizes(text: str) -> tuple[int, ...]:
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        match = re.match(r"#\s*processes:\s*([\d,\s]+)", line)
        if match:
            return tuple(int(n) for n in match.group(1).replace(",", " ").split())
    return DEFAULT_WORLD_SIZES


def _train_configs(node: Any, path: str = "") -> Iterator[tuple[str, TrainConfig]]:
    if isinstance(node, TrainConfig):
        yield path.rstrip("."), node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _train_configs(getattr(node, name), f"{path}{name}.")
    elif isinstance(node, list | tuple):
        for index, item in enumerate(node):
            yield from _train_configs(item, f"{path}{index}.")


def test_there_are_configs() -> None:
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates_and_splits_over_its_process_counts(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    config = load_config(_kind(yaml.safe_load(text)), path)
    trains = list(_train_configs(config))
    assert trains, f"{path.name} has no train section"
    for world_size in _world_sizes(text):
        for where, train in trains:
            try:
                accum = train.grad_accum_steps(world_size)
            except ConfigError as error:
                pytest.fail(f"{path.name}: {where} on {world_size} process(es): {error}")
            assert accum * train.micro_batch(world_size) * world_size == train.batch_size


def test_a_batch_that_cannot_split_is_found() -> None:
    # The check above can fail: the old gpt2-124m batch (480, micro-batch 12) does not split over 2 × 8 GPUs.
    train = TrainConfig(batch_size=480, micro_batch_size=12)
    assert train.grad_accum_steps(8) == 5
    with pytest.raises(ConfigError, match="does not split into 16 rank"):
        train.grad_accum_steps(16)
