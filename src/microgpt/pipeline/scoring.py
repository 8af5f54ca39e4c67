"""Scoring every model of a pipeline run and turning the scores into the report.

Each model — stage 1, every ingredient, each soup — is measured the same way: loss and bits per byte on the
stage-2 **test** split (the report's table; no training run and no selection ever saw it) and loss on the
stage-2 **val** split (what the greedy soup optimised, shown for comparison). The "best ingredient" is the one
with the lowest *val* loss, as a practitioner without the test split would pick it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from microgpt.common.log import get_logger
from microgpt.model.generate import generate_ids
from microgpt.pipeline.config import PipelineConfig
from microgpt.pipeline.evaluate import evaluate_split, load_gpt
from microgpt.pipeline.report import ModelScore, Report, write_report
from microgpt.tokenizer import Tokenizer

log = get_logger(__name__)


def score_models(config: PipelineConfig, checkpoint: Path, data_dir: Path) -> dict[str, Any]:
    """Test and val scores of one checkpoint (plus HellaSwag when its file exists).

    Returns:
        ``{"checkpoint", "test_loss", "test_bpb", "val_loss", "val_bpb", "hellaswag"}``.
    """
    model = load_gpt(checkpoint)
    batch, limit = config.eval.batch_size, config.eval.max_batches
    test = evaluate_split(model, data_dir, "test", batch_size=batch, max_batches=limit)
    val = evaluate_split(model, data_dir, "val", batch_size=batch, max_batches=limit)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "test_loss": test.loss,
        "test_bpb": test.bpb,
        "test_tokens": test.tokens,
        "val_loss": val.loss,
        "val_bpb": val.bpb,
        "hellaswag": None,
    }
    path = config.eval.hellaswag
    if path is not None and Path(path).is_file():
        from microgpt.model.hellaswag import evaluate_hellaswag

        tokenizer = Tokenizer.from_directory(checkpoint / "tokenizer")
        result["hellaswag"] = evaluate_hellaswag(model, tokenizer, path, limit=config.eval.hellaswag_limit).to_dict()
    elif path is not None:
        _warn_missing_hellaswag(str(path))
    return result


@functools.cache
def _warn_missing_hellaswag(path: str) -> None:
    """Say once per process, not once per scored model, that the HellaSwag file is missing."""
    log.warning("eval.hellaswag: %s not found; the report has no HellaSwag column", path)


def _row(name: str, score: dict[str, Any], note: str = "") -> ModelScore:
    hellaswag = score.get("hellaswag")
    return ModelScore(
        name=name,
        test_loss=float(score["test_loss"]),
        test_bpb=float(score["test_bpb"]),
        val_loss=float(score["val_loss"]),
        checkpoint=str(score["checkpoint"]),
        note=note,
        hellaswag_acc_norm=float(hellaswag["acc_norm"]) if isinstance(hellaswag, dict) else None,
    )


def findings(rows: dict[str, ModelScore], n_ingredients: int, soups: dict[str, Any]) -> list[str]:
    """Plain-language comparisons for the report: do the soups beat the best ingredient on test?"""
    notes: list[str] = []
    best = rows.get("best-ingredient")
    if n_ingredients == 1:
        notes.append("The sweep has one ingredient: both soups are that ingredient (a soup of one).")
    if best is None:
        return notes
    for recipe in ("uniform-soup", "greedy-soup"):
        soup = rows.get(recipe)
        if soup is None:
            continue
        delta = soup.test_loss - best.test_loss
        verdict = "beats" if delta < 0 else ("ties" if delta == 0 else "does not beat")
        notes.append(
            f"{recipe} {verdict} the best ingredient on test: {soup.test_loss:.4f} vs {best.test_loss:.4f} "
            f"nats/token ({delta:+.4f}; {soup.test_bpb:.4f} vs {best.test_bpb:.4f} bits/byte)."
        )
    stage1 = rows.get("stage1")
    if stage1 is not None:
        notes.append(
            f"Fine-tuning moved test loss from {stage1.test_loss:.4f} (stage 1) to {best.test_loss:.4f} "
            f"(best ingredient)."
        )
    greedy = soups.get("soups", {}).get("greedy")
    if greedy is not None:
        notes.append(f"The greedy soup kept {len(greedy['chosen'])} of {n_ingredients}: {', '.join(greedy['chosen'])}.")
    return notes


def _samples(config: PipelineConfig, checkpoint: Path, tokenizer: Tokenizer) -> list[tuple[str, str]]:
    if config.report.samples == 0 or not config.report.prompts:
        return []
    model = load_gpt(checkpoint)
    samples = []
    for index in range(config.report.samples):
        prompt = config.report.prompts[index % len(config.report.prompts)]
        ids = tokenizer.encode_ordinary(prompt) or [tokenizer.eot_token]
        new = generate_ids(
            model,
            ids[-model.config.block_size :],
            config.report.sample_tokens,
            temperature=config.report.temperature,
            top_k=config.report.top_k,
            stop_tokens={tokenizer.eot_token},
            seed=config.seed + index,
        )
        samples.append((prompt, tokenizer.decode(new)))
    return samples


def write_pipeline_report(
    config: PipelineConfig,
    run_dir: Path,
    *,
    scores: dict[str, dict[str, Any]],
    soups: dict[str, Any],
    tokenizer: Tokenizer,
    checkpoints: dict[str, Path],
    step_seconds: dict[str, float],
    invocation_s: float,
    stage1_metrics: Path | None,
    ingredient_metrics: dict[str, Path],
) -> dict[str, Any]:
    """Assemble the table, findings and samples, and write ``report.md``, ``report.json`` and the plots.

    Returns:
        The ``report.json`` content.
    """
    names = config.stage2.ingredient_names
    rows: dict[str, ModelScore] = {}
    if "stage1" in scores:
        rows["stage1"] = _row("stage1", scores["stage1"], "stage-1 parent (web text only)")
    for name, ingredient in zip(names, config.stage2.ingredients, strict=True):
        lr = ingredient.lr or config.stage2.train.lr
        steps = ingredient.max_steps or config.stage2.train.max_steps
        mix = f", mix {ingredient.weights}" if ingredient.weights is not None else ""
        note = f"seed {ingredient.seed}, data order {ingredient.data_seed}, lr {lr:g}, {steps} steps{mix}"
        rows[name] = _row(name, scores[name], note)
    best_name = min(names, key=lambda n: (float(scores[n]["val_loss"]), n))
    rows["best-ingredient"] = _row("best-ingredient", scores[best_name], f"= {best_name} (lowest val loss)")
    for recipe in ("uniform", "greedy"):
        key = f"{recipe}-soup"
        if key in scores:
            chosen = soups["soups"][recipe]["chosen"]
            rows[key] = _row(key, scores[key], f"mean of {len(chosen)}: {', '.join(chosen)}")
    # Samples from the model a practitioner would ship: the lowest val loss among all of them.
    sample_from = min(
        (n for n in rows if n != "best-ingredient"), key=lambda n: (rows[n].val_loss, n)
    )  # stage1 included: if fine-tuning hurt, that shows
    samples = _samples(config, checkpoints[sample_from], tokenizer)
    # A fresh run's wall time is this invocation; a resumed one also spent the recorded time of earlier steps.
    wall = max(invocation_s, sum(step_seconds.values()))
    trace = soups.get("soups", {}).get("greedy", {}).get("trace", [])
    report = Report(
        run_dir=run_dir,
        wall_time_s=wall,
        models=list(rows.values()),
        step_seconds=step_seconds,
        greedy_trace=[(str(n), float(v), bool(k)) for n, v, k in trace],
        samples=samples,
        best_model=sample_from,
        notes=findings(rows, len(names), soups),
        config=config.to_dict(),
        invocation_s=invocation_s,
    )
    write_report(report, stage1_metrics, ingredient_metrics)
    document = report.to_json()
    log.info("report: %s", run_dir / "report.md")
    return document
