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
    soup: {uniform: true, greedy: true}
    eval: {batch_size: 16}
    report: {samples: 3, sample_tokens: 80}

``stage2.data`` needs a test split: the report's table is measured there, on documents that neither training
nor the greedy soup's selection (the val split) ever saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

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
        None, description="Data mix: one weight per stage-2 source for the train split (default: the sources' own)."
    )

    @model_validator(mode="after")
    def _check_weights(self) -> IngredientConfig:
        if self.weights is not None and any(w <= 0 for w in self.weights):
            raise ValueError("weights must all be positive (drop a source by leaving it out of stage2.data)")
        return self


class Stage2Config(ConfigBase):
    """Fine-tuning several ingredients on high-quality text, all from the stage-1 checkpoint."""

    init_from: Path | None = Field(
        None, description="Use this existing stage-1 checkpoint instead of running stage 1 (its tokenizer too)."
    )
    data: DataConfig = Field(description="High-quality sources with train, val (selection) and test splits.")
    train: TrainConfig = Field(description="Shared fine-tuning settings: a lower learning rate, its own schedule.")
    ingredients: list[IngredientConfig] = Field(min_length=1, description="One entry per fine-tuned ingredient.")

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
        return self

    @property
    def ingredient_names(self) -> list[str]:
        """Each ingredient's report label."""
        return [ing.name or f"ingredient-{k}" for k, ing in enumerate(self.ingredients, start=1)]


class SoupConfig(ConfigBase):
    """Which soups to make."""

    uniform: bool = Field(True, description="The mean of all ingredients.")
    greedy: bool = Field(True, description="Best-first, keeping an ingredient only if validation loss improves.")
    weights: list[float] | None = Field(None, description="Mixing weights of the uniform soup (default: equal).")


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
        return self
