"""The pipeline config: one YAML file for the whole two-stage job, validated in full before any work starts.

::

    out_dir: runs/demo
    tokenizer: {kind: bpe, vocab_size: 4096}        # trained on stage 1's train split
    stage1:   {data: {...}, model: {...}, train: {...}}
    stage2:
      data: {sources: [...], val_fraction: 0.1, test_fraction: 0.1}
      train: {lr: 3e-4, max_steps: 150, ...}        # shared by every ingredient
      ingredients:                                  # what each one changes
        - {seed: 1, data_seed: 1}
        - {seed: 2, data_seed: 2, lr: 5e-4}
        - {seed: 3, data_seed: 3, weights: [2.0, 1.0]}   # data mix: one weight per stage-2 source
      # or, one line: `ingredients: per-source` — one domain expert per stage-2 source
      compute_matched: {enabled: true}              # one fine-tune given the ingredients' summed steps
    soup: {uniform: true, greedy: true, model_stock: true, task_arithmetic: true, ties: true,
           trajectory: [compute-matched]}
    eval: {batch_size: 16}
    report: {samples: 3, sample_tokens: 80}

``stage2.data`` needs a test split: the report's table is measured there, on documents that neither training
nor any selection (greedy soup, λ and density grids, the baseline's checkpoint: all on the val split) ever saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from microgpt.common.config import ConfigBase
from microgpt.common.trainer import TrainConfig
from microgpt.data.config import DataConfig
from microgpt.model.config import GPTConfig
from microgpt.tokenizer import TokenizerConfig


class Stage1Config(ConfigBase):
    """Pretraining on web text (the same sections as ``microgpt train``)."""

    data: DataConfig = Field(description="Web-text sources and their train/val split.")
    model: GPTConfig = Field(description="The GPT's shape (vocab_size defaults to the trained tokenizer's).")
    train: TrainConfig = Field(description="Optimizer, schedule, eval and checkpoint settings of pretraining.")


class IngredientConfig(ConfigBase):
    """How one fine-tuned ingredient differs from the shared stage-2 settings."""

    name: str | None = Field(None, description="Label in the report (default: ingredient-K).")
    seed: int = Field(0, description="Seed of dropout and samples.")
    data_seed: int = Field(0, description="Seed of the order of training batches.")
    lr: float | None = Field(None, gt=0, description="Peak learning rate (default: stage2.train.lr).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps (default: stage2.train.max_steps).")
    weights: list[float] | None = Field(
        None,
        description="Data mix: one weight per stage-2 source for the train split (default: the sources' own); "
        "0 leaves a source out of this ingredient's training (its val/test documents stay shared).",
    )

    @model_validator(mode="after")
    def _check_weights(self) -> IngredientConfig:
        if self.weights is not None and (any(w < 0 for w in self.weights) or not any(w > 0 for w in self.weights)):
            raise ValueError("weights must be >= 0 with at least one positive (0 leaves a source out)")
        return self


PER_SOURCE = "per-source"
COMPUTE_MATCHED = "compute-matched"


class ComputeMatchedConfig(ConfigBase):
    """The obvious alternative to a soup at equal cost: one fine-tune given all the ingredients' steps."""

    enabled: bool = Field(True, description="Train it and put it in the report (turn off to save its time).")
    lr: float | None = Field(
        None, gt=0, description="Peak learning rate (default: that of the best ingredient by validation loss)."
    )


class Stage2Config(ConfigBase):
    """Fine-tuning several ingredients on high-quality text, all from the stage-1 checkpoint."""

    init_from: Path | None = Field(
        None, description="Use this existing stage-1 checkpoint instead of running stage 1 (its tokenizer too)."
    )
    data: DataConfig = Field(description="High-quality sources with train, val (selection) and test splits.")
    train: TrainConfig = Field(description="Shared fine-tuning settings: a lower learning rate, its own schedule.")
    ingredients: list[IngredientConfig] = Field(
        min_length=1,
        description="One entry per fine-tuned ingredient, or `per-source`: one domain expert per stage-2 source.",
    )
    compute_matched: ComputeMatchedConfig = Field(
        default_factory=ComputeMatchedConfig,
        description="One fine-tune on the whole train split for the ingredients' summed steps (the soups' rival).",
    )

    @model_validator(mode="before")
    @classmethod
    def _per_source(cls, data: Any) -> Any:
        # `ingredients: per-source` → one ingredient per source, trained on that source alone (a domain expert),
        # named after it, each with its own seed and data order.
        if not isinstance(data, dict) or data.get("ingredients") != PER_SOURCE:
            return data
        sources = (data.get("data") or {}).get("sources") if isinstance(data.get("data"), dict) else None
        if not isinstance(sources, list) or len(sources) < 2:
            raise ValueError("ingredients: per-source needs at least 2 stage-2 sources")
        ingredients = []
        for index, source in enumerate(sources):
            name = source.get("name") if isinstance(source, dict) else None
            if not name:
                raise ValueError(f"ingredients: per-source needs a name on every source (data.sources.{index})")
            weights = [1.0 if other == index else 0.0 for other in range(len(sources))]
            ingredients.append({"name": str(name), "seed": index + 1, "data_seed": index + 1, "weights": weights})
        return {**data, "ingredients": ingredients}

    @model_validator(mode="after")
    def _check(self) -> Stage2Config:
        if not self.data.wants("val") or not self.data.wants("test"):
            raise ValueError(
                "data needs a val split (greedy selection) and a test split (the report): "
                "set val_fraction/val_docs and test_fraction/test_docs"
            )
        names = self.ingredient_names
        if len(set(names)) != len(names):
            raise ValueError(f"ingredient names must be unique, got {names}")
        mixed = any(ing.weights is not None for ing in self.ingredients)
        if mixed and (self.data.val_docs is not None or self.data.test_docs is not None):
            # Count splits follow stream order, which a new mix changes: a test document could land in train.
            raise ValueError(
                "ingredients with their own data weights need hash splits: use val_fraction/test_fraction, "
                "not val_docs/test_docs"
            )
        for index, ingredient in enumerate(self.ingredients):
            if ingredient.weights is not None and len(ingredient.weights) != len(self.data.sources):
                raise ValueError(
                    f"ingredients.{index}.weights has {len(ingredient.weights)} entries for "
                    f"{len(self.data.sources)} stage-2 source(s)"
                )
        if COMPUTE_MATCHED in names:
            raise ValueError(f"{COMPUTE_MATCHED!r} is the baseline's name; rename that ingredient")
        return self

    @property
    def ingredient_names(self) -> list[str]:
        """Each ingredient's report label."""
        return [ing.name or f"ingredient-{k}" for k, ing in enumerate(self.ingredients, start=1)]

    def ingredient_steps(self) -> dict[str, int]:
        """Each ingredient's optimizer steps."""
        return {
            name: ing.max_steps or self.train.max_steps
            for name, ing in zip(self.ingredient_names, self.ingredients, strict=True)
        }


def _check_grid(values: list[float], low_open: float, high: float, name: str) -> list[float]:
    if not values:
        raise ValueError(f"{name} needs at least one value")
    bad = [v for v in values if not low_open < v <= high]
    if bad:
        raise ValueError(f"{name} values must lie in ({low_open:g}, {high:g}], got {bad[0]:g}")
    return values


class SoupConfig(ConfigBase):
    """Which soups and merges to make (every grid is searched on the val split, never on test)."""

    uniform: bool = Field(True, description="The mean of all ingredients (Wortsman et al., 2022).")
    greedy: bool = Field(True, description="Best-first, keeping an ingredient only if validation loss improves.")
    model_stock: bool = Field(True, description="Model Stock (Jang et al., 2024): parent-anchored, angle-based ratio.")
    task_arithmetic: bool = Field(True, description="Parent + λ · mean task vector (Ilharco et al., 2023).")
    ties: bool = Field(True, description="TIES-merging (Yadav et al., 2023): trim, elect sign, disjoint mean.")
    lambdas: list[float] = Field(
        default_factory=lambda: [0.5, 1.0, 1.5, 2.0], description="λ grid of task arithmetic and TIES, in (0, 2]."
    )
    densities: list[float] = Field(
        default_factory=lambda: [0.2, 0.5, 1.0], description="TIES density grid (fraction kept), in (0, 1]."
    )
    trajectory: list[str] = Field(
        default_factory=lambda: [COMPUTE_MATCHED],
        description="Runs to trajectory-average (LAWA): compute-matched, ingredient names, or all.",
    )
    trajectory_last: int = Field(4, ge=2, description="Checkpoints averaged per run: the last K saved.")
    weights: list[float] | None = Field(None, description="Mixing weights of the uniform soup (default: equal).")

    @field_validator("lambdas")
    @classmethod
    def _lambdas(cls, values: list[float]) -> list[float]:
        return _check_grid(values, 0.0, 2.0, "lambdas")

    @field_validator("densities")
    @classmethod
    def _densities(cls, values: list[float]) -> list[float]:
        return _check_grid(values, 0.0, 1.0, "densities")

    @property
    def recipes(self) -> list[str]:
        """The ingredient-merging recipes turned on, in report order."""
        on = [
            ("uniform", self.uniform),
            ("greedy", self.greedy),
            ("model-stock", self.model_stock),
            ("task-arithmetic", self.task_arithmetic),
            ("ties", self.ties),
        ]
        return [name for name, enabled in on if enabled]


class EvalConfig(ConfigBase):
    """How the models are scored."""

    batch_size: int = Field(16, ge=1, description="Windows per forward pass.")
    max_batches: int | None = Field(None, ge=1, description="Score only this many test/val batches (None: all).")
    hellaswag: Path | None = Field(
        None, description="A HellaSwag jsonl file; when it exists, the report adds acc_norm for each model."
    )
    hellaswag_limit: int | None = Field(200, ge=1, description="HellaSwag items to score (None: all).")


class ReportConfig(ConfigBase):
    """What the report shows besides the table."""

    samples: int = Field(3, ge=0, description="Samples from the best model.")
    sample_tokens: int = Field(64, ge=1, description="Tokens per sample.")
    prompts: list[str] = Field(
        default_factory=lambda: ["It is a truth universally acknowledged", "The people of the United States", "\n"],
        description="Prompts of the samples (cycled).",
    )
    temperature: float = Field(0.8, ge=0.0, description="Sampling temperature.")
    top_k: int | None = Field(50, ge=1, description="Top-k of the samples.")


class PipelineConfig(ConfigBase):
    """The whole two-stage job (see the module docstring)."""

    out_dir: Path = Field(Path("runs/pipeline"), description="Run directory of the whole pipeline.")
    seed: int = Field(1337, description="Seed of stage 1 (init and data order).")
    tokenizer: TokenizerConfig = Field(
        default_factory=TokenizerConfig, description="Tokenizer: trained on stage-1 train text, or pretrained."
    )
    stage1: Stage1Config | None = Field(description="Pretraining (null only when stage2.init_from is given).")
    stage2: Stage2Config = Field(description="Fine-tuning of the ingredients.")
    soup: SoupConfig = Field(default_factory=SoupConfig, description="Which soups to make.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Scoring of every model.")
    report: ReportConfig = Field(default_factory=ReportConfig, description="Samples and plots of the report.")

    @model_validator(mode="before")
    @classmethod
    def _vocab_from_tokenizer(cls, data: Any) -> Any:
        # As in `microgpt train`: a BPE trained by the run fixes the vocabulary, so the model section may omit it.
        if not isinstance(data, dict):
            return data
        stage1 = data.get("stage1")
        if not isinstance(stage1, dict) or not isinstance(stage1.get("model"), dict) or "vocab_size" in stage1["model"]:
            return data
        tokenizer = data.get("tokenizer") or {}
        if isinstance(tokenizer, dict) and tokenizer.get("kind", "bpe") == "bpe":
            size = tokenizer.get("vocab_size", TokenizerConfig.model_fields["vocab_size"].default)
            data = {**data, "stage1": {**stage1, "model": {**stage1["model"], "vocab_size": size}}}
        return data

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        if self.stage1 is None and self.stage2.init_from is None:
            raise ValueError("stage1 is required unless stage2.init_from names an existing stage-1 checkpoint")
        n = len(self.stage2.ingredients)
        if self.soup.weights is not None and len(self.soup.weights) != n:
            raise ValueError(f"soup.weights has {len(self.soup.weights)} entries for {n} ingredient(s)")
        runs = self.trajectory_runs
        known = [*self.stage2.ingredient_names, COMPUTE_MATCHED]
        unknown = [r for r in self.soup.trajectory if r not in (*known, "all")]
        if unknown:
            raise ValueError(f"soup.trajectory: unknown run {unknown[0]!r} (one of {', '.join(known)}, or all)")
        if COMPUTE_MATCHED in runs and not self.stage2.compute_matched.enabled:
            raise ValueError("soup.trajectory names compute-matched, but stage2.compute_matched.enabled is false")
        steps = {**self.stage2.ingredient_steps(), COMPUTE_MATCHED: sum(self.stage2.ingredient_steps().values())}
        interval = self.stage2.train.checkpoint_interval
        for run in runs:  # refuse now what would fail after all the training
            saved = len(set(range(interval, steps[run] + 1, interval)) | {steps[run]}) if interval else 1
            if saved < self.soup.trajectory_last:
                raise ValueError(
                    f"soup.trajectory: {run} saves {saved} checkpoint(s) in {steps[run]} steps, fewer than "
                    f"soup.trajectory_last={self.soup.trajectory_last}; lower stage2.train.checkpoint_interval"
                )
        return self

    @property
    def trajectory_runs(self) -> list[str]:
        """The runs whose last checkpoints are averaged (``all`` expanded)."""
        if "all" in self.soup.trajectory:
            runs = list(self.stage2.ingredient_names)
            return [*runs, COMPUTE_MATCHED] if self.stage2.compute_matched.enabled else runs
        return list(dict.fromkeys(self.soup.trajectory))
