"""The compute-matched baseline: the obvious alternative to a soup, given the same stage-2 compute.

A soup of N ingredients costs the sum of their optimizer steps. The same steps could instead have gone into one
ordinary fine-tune from the same parent, on the whole stage-2 train split (the union of the ingredients' data), at
the same batch size. That run is the baseline every soup is judged against, with its settings chosen as a careful
user would choose them without the test split:

- the learning rate of the best ingredient by validation loss (unless ``stage2.compute_matched.lr`` is given);
- the shared stage-2 schedule (``stage2.train``), stretched over the summed steps;
- the checkpoint kept is the one with the lowest **validation** loss among those saved every
  ``checkpoint_interval`` steps (early stopping in hindsight: all of them are scored on the same val split).

Every checkpoint is kept (``keep_last=0``), so the run's trajectory can also be averaged (LAWA) at no extra cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from microgpt.common.checkpoint import list_checkpoints, read_meta
from microgpt.common.checkpoint_load import load_model_weights
from microgpt.common.errors import MicrogptError
from microgpt.common.log import get_logger
from microgpt.eval.split_loss import evaluate_split
from microgpt.model.checkpoint_reader import load_gpt
from microgpt.model.finetune import FinetuneConfig
from microgpt.pipeline.config import COMPUTE_MATCHED, PipelineConfig

log = get_logger(__name__)


def baseline_lr(config: PipelineConfig, ingredient_results: dict[str, dict[str, Any]]) -> tuple[float, str]:
    """The baseline's peak learning rate and where it came from (the config, or the best ingredient by val loss).

    Raises:
        MicrogptError: When no ingredient recorded a validation loss to choose by.
    """
    if config.stage2.compute_matched.lr is not None:
        return config.stage2.compute_matched.lr, "stage2.compute_matched.lr"
    scored = {
        name: float(result["val_loss"])
        for name, result in ingredient_results.items()
        if isinstance(result.get("val_loss"), int | float)
    }
    if not scored:
        raise MicrogptError("compute-matched: no ingredient recorded a val loss to pick the learning rate by")
    best = min(scored, key=lambda name: (scored[name], name))
    ingredient = dict(zip(config.stage2.ingredient_names, config.stage2.ingredients, strict=True))[best]
    return ingredient.lr or config.stage2.train.lr, f"{best} (lowest val loss)"


def baseline_config(config: PipelineConfig, parent: Path, data_dir: Path, lr: float) -> FinetuneConfig:
    """The baseline's fine-tuning run: same parent, whole train split, the ingredients' summed steps."""
    steps = sum(config.stage2.ingredient_steps().values())
    train = config.stage2.train.model_copy(update={"lr": lr, "max_steps": steps, "keep_last": 0})
    return FinetuneConfig(
        init_from=parent,
        data_dir=data_dir,
        eval_data_dir=data_dir,
        out_dir=data_dir.parent / COMPUTE_MATCHED,
        train=train,
        seed=config.seed,
        data_seed=config.seed,
    )


def select_checkpoint(
    run_dir: Path,
    data_dir: Path,
    *,
    batch_size: int,
    max_batches: int | None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Score every checkpoint of the baseline run on the val split; keep the lowest.

    Returns:
        ``{"checkpoint", "step", "val_loss", "val_losses": {step: loss}}``.

    Raises:
        MicrogptError: When the run saved no checkpoint.
    """
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if not checkpoints:
        raise MicrogptError(f"{run_dir}: the compute-matched run saved no checkpoint to select from")
    model = load_gpt(checkpoints[0], device)
    losses: dict[int, float] = {}
    for path in checkpoints:
        load_model_weights(model, path)
        step = int(read_meta(path).get("step") or 0)
        score = evaluate_split(model, data_dir, "val", batch_size=batch_size, max_batches=max_batches, device=device)
        losses[step] = score.loss
    best_step = min(losses, key=lambda step: (losses[step], step))
    chosen = next(p for p in checkpoints if int(read_meta(p).get("step") or 0) == best_step)
    log.info(
        "compute-matched: kept step %d (val loss %.4f) of %d checkpoints", best_step, losses[best_step], len(losses)
    )
    return {
        "checkpoint": str(chosen),
        "step": best_step,
        "val_loss": losses[best_step],
        "val_losses": {str(step): loss for step, loss in losses.items()},
    }
