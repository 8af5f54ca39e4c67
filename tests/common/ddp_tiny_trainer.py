"""Run by ``torchrun`` from test_trainer_ddp.py: the tiny trainer with gradient accumulation on 2 gloo ranks.

Each rank draws its own windows (loader seed = rank), so a rank that skipped the gradient sync would end with
weights unlike its peer's. Each rank writes its final weights to ``OUT/rank-<r>.safetensors``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from microgpt.common.checkpoint import split_shared
from microgpt.common.dist import DistInfo
from microgpt.common.trainer import Batch
from tests.common.test_trainer import ListLoader, TinyTrainer, _config


class RankTrainer(TinyTrainer):
    """Records the module the loop calls (DDP or not) and keeps the raw model to dump its weights."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.called: set[str] = set()
        self.model: nn.Module | None = None

    def build_model(self) -> nn.Module:
        self.model = super().build_model()
        return self.model

    def build_train_loader(self, micro_batch_size: int) -> ListLoader:
        return ListLoader(micro_batch_size, seed=self.dist.rank)

    def compute_loss(self, model: nn.Module, batch: Batch) -> Any:
        self.called.add(type(model).__name__)
        return super().compute_loss(model, batch)


def main(out: Path) -> None:
    dist = DistInfo.from_env()
    config = _config(max_steps=4, batch_size=8, micro_batch_size=2, checkpoint_interval=2)
    trainer = RankTrainer(config, out)
    trainer.fit()
    assert trainer.model is not None
    assert "DistributedDataParallel" in trainer.called, trainer.called  # the loop really ran the wrapped module
    unique, _ = split_shared(trainer.model.state_dict())
    save_file(unique, str(out / f"rank-{dist.rank}.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
