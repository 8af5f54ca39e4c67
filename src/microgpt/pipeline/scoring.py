"""Scoring every model of a pipeline run and turning the scores into the report.

Each model — stage 1, every ingredient, the compute-matched baseline, each soup — is measured the same way: loss
and bits per byte on the stage-2 **test** split (the report's table; no training run and no selection ever saw
it) and loss on the stage-2 **val** split (what every selection optimised, shown for comparison). The "best
ingredient" is the one with the lowest *val* loss, as a practitioner without the test split would pick it.

The findings judge every soup against the obvious alternative at equal cost — the compute-matched baseline — and
against the best ingredient, in nats/token and bits/byte; a HellaSwag difference smaller than two standard errors
is reported as no difference.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import torch

from microgpt.common.device import pick_device
from microgpt.common.dist import DistInfo
from microgpt.common.log import get_logger
from microgpt.eval.split_loss import evaluate_split
from microgpt.model.checkpoint_reader import TOKENIZER_DIR, load_gpt
from microgpt.model.generate import generate_ids
from microgpt.pipeline.config import COMPUTE_MATCHED, PipelineConfig
from microgpt.pipeline.report import ModelScore, Report, write_report
from microgpt.tokenizer import Tokenizer

log = get_logger(__name__)


def _float(value: float | None) -> float:
    """Bits per byte for the report's table: NaN where the split records no bytes."""
    return value if value is not None else float("nan")


def scoring_device(config: PipelineConfig) -> torch.device:
    """Where rank 0 scores models: the stage-2 training device (a GPU when training used one), not the CPU."""
    return pick_device(config.stage2.train.device, DistInfo.from_env().local_rank)


def score_models(config: PipelineConfig, checkpoint: Path, data_dir: Path) -> dict[str, Any]:
    """Test and val scores of one checkpoint (plus HellaSwag when its file exists), on :func:`scoring_device`.

    Returns:
        ``{"checkpoint", "test_loss", "test_bpb", "val_loss", "val_bpb", "hellaswag"}``.
    """
    device = scoring_device(config)
    model = load_gpt(checkpoint, device)
    batch, limit = config.eval.batch_size, config.eval.max_batches
    test = evaluate_split(model, data_dir, "test", batch_size=batch, max_batches=limit, device=device)
    val = evaluate_split(model, data_dir, "val", batch_size=batch, max_batches=limit, device=device)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "test_loss": test.loss,
        "test_bpb": _float(test.bits_per_byte),
        "test_tokens": test.tokens,
        "val_loss": val.loss,
        "val_bpb": _float(val.bits_per_byte),
        "hellaswag": None,
    }
    path = config.eval.hellaswag
    if path is not None and Path(path).is_file():
        from microgpt.eval.hellaswag import evaluate_hellaswag

        tokenizer = Tokenizer.from_directory(checkpoint / TOKENIZER_DIR)
        result["hellaswag"] = evaluate_hellaswag(model, tokenizer, path, limit=config.eval.hellaswag_limit).to_dict()
    elif path is not None:
        _warn_missing_hellaswag(str(path))
    return result


@functools.cache
def _warn_missing_hellaswag(path: str) -> None:
    """Say once per process, not once per scored model, that the HellaSwag file is missing."""
    log.warning("eval.hellaswag: %s not found; the report has no HellaSwag column", path)


def _row(name: str, score: dict[str, Any], note: str = "", cost: tuple[int, int] = (0, 0)) -> ModelScore:
    hellaswag = score.get("hellaswag")
    acc = float(hellaswag["acc_norm"]) if isinstance(hellaswag, dict) else None
    se = None
    if isinstance(hellaswag, dict) and acc is not None and int(hellaswag.get("n_items") or 0) > 0:
        se = math.sqrt(acc * (1 - acc) / int(hellaswag["n_items"]))
    return ModelScore(
        name=name,
        test_loss=float(score["test_loss"]),
        test_bpb=float(score["test_bpb"]),
        val_loss=float(score["val_loss"]),
        checkpoint=str(score["checkpoint"]),
        note=note,
        hellaswag_acc_norm=acc,
        hellaswag_se=se,
        stage2_steps=cost[0],
        stage2_tokens=cost[1],
    )


def _versus(model: ModelScore, rival: ModelScore, rival_label: str) -> str:
    delta, delta_bpb = model.test_loss - rival.test_loss, model.test_bpb - rival.test_bpb
    verdict = "beats" if delta < 0 else ("ties" if delta == 0 else "does not beat")
    return (
        f"{model.name} {verdict} {rival_label} on test: {model.test_loss:.4f} vs {rival.test_loss:.4f} nats/token "
        f"({delta:+.4f}), {model.test_bpb:.4f} vs {rival.test_bpb:.4f} bits/byte ({delta_bpb:+.4f}), "
        f"at {model.stage2_steps:,} vs {rival.stage2_steps:,} stage-2 steps."
    )


def _hellaswag_finding(a: ModelScore, b: ModelScore) -> str | None:
    """Compare two HellaSwag accuracies; a gap under two standard errors of the difference is no result."""
    if a.hellaswag_acc_norm is None or b.hellaswag_acc_norm is None:
        return None
    diff = a.hellaswag_acc_norm - b.hellaswag_acc_norm
    se = math.sqrt((a.hellaswag_se or 0.0) ** 2 + (b.hellaswag_se or 0.0) ** 2)
    head = f"HellaSwag acc_norm, {a.name} vs {b.name}: {a.hellaswag_acc_norm:.3f} vs {b.hellaswag_acc_norm:.3f}"
    if abs(diff) < 2 * se:
        return f"{head} ({diff:+.3f}, under 2 standard errors = {2 * se:.3f}: no difference can be read)."
    return f"{head} ({diff:+.3f}, more than 2 standard errors = {2 * se:.3f})."


def findings(rows: dict[str, ModelScore], n_ingredients: int, soups: dict[str, Any]) -> list[str]:
    """Plain-language comparisons for the report: does each soup beat the compute-matched baseline on test?

    Each soup is also set against the best ingredient; the soup "a user would ship" is the one with the lowest val
    loss (never chosen by test).
    """
    notes: list[str] = []
    best = rows.get("best-ingredient")
    baseline = rows.get(COMPUTE_MATCHED)
    soup_rows = [row for name, row in rows.items() if name in soups.get("soups", {})]
    if n_ingredients == 1:
        notes.append("The sweep has one ingredient: the ingredient soups are that ingredient (a soup of one).")
    if baseline is not None and soup_rows:
        winner = min(soup_rows, key=lambda row: (row.val_loss, row.name))  # chosen as a user would: by val
        best_test = min(soup_rows, key=lambda row: (row.test_loss, row.name))
        wins = [row.name for row in soup_rows if row.test_loss < baseline.test_loss]
        summary = f"Equal compute: {len(wins)} of {len(soup_rows)} soups beat the compute-matched baseline on test" + (
            f" ({', '.join(wins)})." if wins else "."
        )
        notes.append(summary)
        notes.append(
            f"The soup a user would ship (lowest val loss) is {winner.name}: "
            + _versus(winner, baseline, "the compute-matched baseline")
        )
        if best_test.name != winner.name:
            notes.append(
                f"Best soup on test (not a selection, for the record): {best_test.name}, {best_test.test_loss:.4f}."
            )
        for row in soup_rows:
            notes.append(_versus(row, baseline, "the compute-matched baseline"))
        hellaswag = _hellaswag_finding(winner, baseline)
        if hellaswag:
            notes.append(hellaswag)
    if best is not None:
        for row in soup_rows:
            if row.name.startswith("trajectory-"):
                continue
            notes.append(_versus(row, best, "the best ingredient"))
        if baseline is not None:
            notes.append(_versus(baseline, best, "the best ingredient"))
        stage1 = rows.get("stage1")
        if stage1 is not None:
            notes.append(
                f"Fine-tuning moved test loss from {stage1.test_loss:.4f} (stage 1) to {best.test_loss:.4f} "
                f"(best ingredient)."
            )
    greedy = soups.get("soups", {}).get("greedy-soup")
    if greedy is not None:
        notes.append(f"The greedy soup kept {len(greedy['chosen'])} of {n_ingredients}: {', '.join(greedy['chosen'])}.")
    return notes


def _soup_note(name: str, outcome: dict[str, Any]) -> str:
    settings = outcome.get("settings") or {}
    chosen = outcome.get("chosen") or []
    if outcome.get("recipe") == "model-stock":
        return f"parent + {len(chosen)} ingredients, mean ratio t = {float(settings.get('mean_ratio', 0.0)):.3f}"
    if outcome.get("recipe") == "task-arithmetic":
        return f"parent + λ·mean task vector, λ = {settings.get('lambda')} (chosen on val)"
    if outcome.get("recipe") == "ties":
        return f"density {settings.get('density')}, λ = {settings.get('lambda')} (chosen on val)"
    if outcome.get("recipe") == "trajectory":
        return f"mean of {outcome.get('run')}'s checkpoints at steps {settings.get('steps')}"
    return f"mean of {len(chosen)}: {', '.join(chosen)}"


def _cost(result: dict[str, Any] | None) -> tuple[int, int]:
    if not result:
        return (0, 0)
    return int(result.get("step") or 0), int(result.get("tokens") or 0)


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
    trained: dict[str, dict[str, Any]] | None = None,
    baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the table, findings and samples, and write ``report.md``, ``report.json`` and the plots.

    Returns:
        The ``report.json`` content.
    """
    names = config.stage2.ingredient_names
    trained = trained or {}
    rows: dict[str, ModelScore] = {}
    if "stage1" in scores:
        rows["stage1"] = _row("stage1", scores["stage1"], "stage-1 parent (web text only)")
    for name, ingredient in zip(names, config.stage2.ingredients, strict=True):
        lr = ingredient.lr or config.stage2.train.lr
        steps = ingredient.max_steps or config.stage2.train.max_steps
        mix = f", mix {ingredient.weights}" if ingredient.weights is not None else ""
        note = f"seed {ingredient.seed}, data order {ingredient.data_seed}, lr {lr:g}, {steps} steps{mix}"
        rows[name] = _row(name, scores[name], note, _cost(trained.get(name)))
    best_name = min(names, key=lambda n: (float(scores[n]["val_loss"]), n))
    rows["best-ingredient"] = _row(
        "best-ingredient", scores[best_name], f"= {best_name} (lowest val loss)", _cost(trained.get(best_name))
    )
    if COMPUTE_MATCHED in scores and baseline is not None:
        run = trained.get(COMPUTE_MATCHED, {})
        note = (
            f"one fine-tune on the whole train split, {run.get('max_steps')} steps, lr {run.get('lr')} "
            f"(from {run.get('lr_from')}); kept step {baseline['step']} (lowest val loss)"
        )
        rows[COMPUTE_MATCHED] = _row(COMPUTE_MATCHED, scores[COMPUTE_MATCHED], note, _cost(run))
    ingredient_cost = (
        sum(_cost(trained.get(n))[0] for n in names),
        sum(_cost(trained.get(n))[1] for n in names),
    )
    for soup_name, outcome in soups.get("soups", {}).items():
        if soup_name in scores:
            run_name = outcome.get("run")
            cost = _cost(trained.get(run_name)) if run_name else ingredient_cost
            rows[soup_name] = _row(soup_name, scores[soup_name], _soup_note(soup_name, outcome), cost)
    # Samples from the model a practitioner would ship: the lowest val loss among all of them.
    sample_from = min(
        (n for n in rows if n != "best-ingredient"), key=lambda n: (rows[n].val_loss, n)
    )  # stage1 included: if fine-tuning hurt, that shows
    samples = _samples(config, checkpoints[sample_from], tokenizer)
    # A fresh run's wall time is this invocation; a resumed one also spent the recorded time of earlier steps.
    wall = max(invocation_s, sum(step_seconds.values()))
    trace = soups.get("soups", {}).get("greedy-soup", {}).get("trace", [])
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
