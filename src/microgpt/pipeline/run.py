"""``microgpt pipeline CONFIG``: the two-stage job, step by step, each step skipped once it is complete.

Steps, in order, with their outputs under ``out_dir``::

    tokenizer      stage1/data/tokenizer/            trained on stage 1's train split (or a pretrained encoding)
    stage1-data    stage1/data/ (shards, manifest)   the web text, tokenized
    stage1         stage1/checkpoints/               pretraining (resumes from its last checkpoint)
    stage2-data    stage2/data/ (+ data-<name>/)     the high-quality text: train / val / test
    <ingredient>   stage2/<name>/checkpoints/        one fine-tuning run per ingredient (each resumes)
    compute-matched  stage2/compute-matched/         one fine-tune given the ingredients' summed steps (resumes)
    compute-matched-select                           its checkpoint with the lowest stage-2 val loss
    soups          soups/<recipe>/                   uniform, greedy, model-stock, task-arithmetic, ties,
                                                     trajectory-<run>; every choice made on stage-2 val
    eval-<model>   steps/eval-<model>.json           test (and val) loss and bits per byte of every model
    report         report.md, report.json, *.png     always redrawn (cheap)

A step writes ``steps/<step>.json`` (atomically) only after its output is complete; a rerun skips every step that
has one, and a step killed halfway resumes from what it left (trainers from their newest checkpoint, data
preparation from its finished shards). Nothing already produced is deleted.

Under ``torchrun`` the training steps run on every rank; preparation, soups and the report run on
rank 0 — on the training device — while the others wait on the process group's store (no collective timeout);
the scoring of the models is spread over the ranks, each on its own device.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from microgpt.common.checkpoint import resolve_checkpoint
from microgpt.common.config import differing_settings, dump_config
from microgpt.common.device import pick_device
from microgpt.common.dist import DistInfo, barrier, process_group
from microgpt.common.errors import MicrogptError
from microgpt.common.log import get_logger
from microgpt.common.sources import FileSource, check_readable, expand_paths, source_label
from microgpt.data.config import DataConfig
from microgpt.model.checkpoint_reader import TOKENIZER_DIR
from microgpt.model.finetune import FinetuneConfig, FinetuneTrainer
from microgpt.pipeline.config import COMPUTE_MATCHED, PipelineConfig
from microgpt.pipeline.scoring import score_models, scoring_device, write_pipeline_report
from microgpt.pipeline.steps import StepLog
from microgpt.tokenizer import Tokenizer

log = get_logger(__name__)

CONFIG_FILE = "pipeline.yaml"
# Sections whose change makes the run directory a different run (later sections only change soups/eval/report).
TRAINING_SECTIONS = ("seed", "tokenizer", "stage1", "stage2")
DERIVED_STEPS_PREFIXES = ("soups", "eval-", "compute-matched-select")


def check_inputs(config: PipelineConfig, *, read: bool = True) -> None:
    """Check what can be checked before any work: the stage-1 checkpoint to reuse, and every data source.

    With ``read``, the first document of every source is read (a wrong column, a dead URL, a broken file fail
    here, not after minutes of pretraining); without it, only that local files exist.

    Raises:
        MicrogptError: Naming the missing checkpoint or file and the config field that points at it.
    """
    if config.stage2.init_from is not None:
        try:
            parent = resolve_checkpoint(config.stage2.init_from)
        except MicrogptError as error:
            raise MicrogptError(f"stage2.init_from: {error}") from None
        if not (parent / TOKENIZER_DIR).is_dir():
            raise MicrogptError(f"stage2.init_from: {parent} holds no tokenizer/ to prepare stage-2 data with")
    sections: list[tuple[str, DataConfig]] = [("stage2.data", config.stage2.data)]
    if config.stage1 is not None and config.stage2.init_from is None:
        sections.insert(0, ("stage1.data", config.stage1.data))
    for where, data in sections:
        for index, source in enumerate(data.sources):
            try:
                if isinstance(source, FileSource):
                    expand_paths(source.paths, source_label(source, index))
                if read:
                    check_readable(source, index)
            except MicrogptError as error:
                raise MicrogptError(f"{where}.sources.{index}: {error}") from None


def check_run_dir(config: PipelineConfig, run_dir: Path, steps: StepLog) -> None:
    """Refuse a run directory holding a different pipeline; forget derived steps whose settings changed.

    Raises:
        MicrogptError: When a training section (tokenizer, stage1, stage2, seed) differs from the saved one.
    """
    saved_path, now = run_dir / CONFIG_FILE, config.to_dict()
    differ = differing_settings(saved_path, now, sections=TRAINING_SECTIONS)
    if differ is None:
        return
    if differ:
        changed = [key for key in TRAINING_SECTIONS if any(k.split(".", 1)[0] == key for k in differ)]
        raise MicrogptError(
            f"{run_dir} holds a pipeline with different {', '.join(changed)} settings (see {saved_path}); "
            "use another out_dir, or delete that folder to start over"
        )
    if differing_settings(saved_path, now, sections=("soup", "eval")):
        log.info("pipeline: soup or eval settings changed; redoing soups and evaluation")
        steps.forget(DERIVED_STEPS_PREFIXES)


def _stage1_run_config(config: PipelineConfig) -> Any:
    from microgpt.model.pretrain import RunConfig

    assert config.stage1 is not None
    return RunConfig(
        out_dir=Path(config.out_dir) / "stage1",
        seed=config.seed,
        tokenizer=config.tokenizer,
        data=config.stage1.data,
        model=config.stage1.model,
        train=config.stage1.train,
    )


def run_pipeline(config: PipelineConfig) -> dict[str, Any]:
    """Run the whole two-stage job (see the module docstring); return ``report.json``'s content.

    Raises:
        MicrogptError: For bad input — found before any work where it can be (missing stage-1 checkpoint or data
            files, a run directory holding another pipeline) — or when a step fails; finished steps are kept.
    """
    dist = DistInfo.from_env()
    check_inputs(config, read=dist.local_rank == 0)  # one download of a URL per machine, not one per process
    run_dir = Path(config.out_dir)
    device = pick_device(config.stage2.train.device, dist.local_rank)
    with process_group(dist, device):
        return _run(config, run_dir, dist)


def _run(config: PipelineConfig, run_dir: Path, dist: DistInfo) -> dict[str, Any]:
    started = time.perf_counter()
    steps = StepLog(run_dir, dist)
    if dist.is_main:
        check_run_dir(config, run_dir, steps)
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, run_dir / CONFIG_FILE)
    barrier()

    # ---- stage 1: tokenizer, web-text shards, pretraining ----
    if config.stage2.init_from is None:
        from microgpt.pipeline.pretraining import prepare_run_data, run_pretraining

        stage1 = _stage1_run_config(config)
        tokenizer_dir = Path(stage1.out_dir) / "data" / TOKENIZER_DIR
        steps.run("tokenizer", lambda: _train_tokenizer(config, tokenizer_dir))
        steps.run("stage1-data", lambda: _prepared(prepare_run_data(stage1, progress=False)[1]))
        steps.run("stage1", lambda: _trained(run_pretraining(stage1)), all_ranks=True)
        parent = resolve_checkpoint(stage1.out_dir)
    else:
        parent = resolve_checkpoint(config.stage2.init_from)
        tokenizer_dir = parent / TOKENIZER_DIR
    tokenizer = Tokenizer.from_directory(tokenizer_dir)

    # ---- stage 2: high-quality shards (one folder per distinct data mix), then the ingredients ----
    stage2_dir = run_dir / "stage2"
    data_dir = stage2_dir / "data"
    steps.run("stage2-data", lambda: _prepare_stage2(config, tokenizer, data_dir))
    ingredients: dict[str, Path] = {}
    curves: dict[str, Path] = {}
    trained: dict[str, dict[str, Any]] = {}
    trajectory_runs = config.trajectory_runs
    for name, ingredient in zip(config.stage2.ingredient_names, config.stage2.ingredients, strict=True):
        keep_last = config.stage2.train.keep_last
        if name in trajectory_runs and keep_last != 0:
            keep_last = max(keep_last, config.soup.trajectory_last)  # its last checkpoints make a trajectory soup
        train = config.stage2.train.model_copy(
            update={
                "lr": ingredient.lr or config.stage2.train.lr,
                "max_steps": ingredient.max_steps or config.stage2.train.max_steps,
                "keep_last": keep_last,
            }
        )
        finetune = FinetuneConfig(
            init_from=parent,
            data_dir=_mix_dir(stage2_dir, name) if ingredient.weights is not None else data_dir,
            eval_data_dir=data_dir,
            out_dir=stage2_dir / name,
            train=train,
            seed=ingredient.seed,
            data_seed=ingredient.data_seed,
        )
        run_config = {"pipeline": config.to_dict(), "ingredient": name, "finetune": finetune.to_dict()}
        trained[name] = steps.run(name, partial(_finetune, finetune, run_config), all_ranks=True)
        ingredients[name] = resolve_checkpoint(stage2_dir / name)
        curves[name] = stage2_dir / name / "metrics.jsonl"

    # ---- the compute-matched baseline: the same steps in one fine-tune (all ranks train; rank 0 selects) ----
    baseline: dict[str, Any] | None = None
    if config.stage2.compute_matched.enabled:
        from microgpt.pipeline.baseline import baseline_config, baseline_lr, select_checkpoint

        lr, lr_from = baseline_lr(config, trained)
        finetune = baseline_config(config, parent, data_dir, lr)
        run_config = {"pipeline": config.to_dict(), "ingredient": COMPUTE_MATCHED, "finetune": finetune.to_dict()}
        trained[COMPUTE_MATCHED] = steps.run(
            COMPUTE_MATCHED, partial(_finetune, finetune, run_config, lr_from=lr_from), all_ranks=True
        )
        baseline = steps.run(
            f"{COMPUTE_MATCHED}-select",
            lambda: select_checkpoint(
                finetune.out_dir,
                data_dir,
                batch_size=config.eval.batch_size,
                max_batches=config.eval.max_batches,
                device=scoring_device(config),
            ),
        )
        curves[COMPUTE_MATCHED] = finetune.out_dir / "metrics.jsonl"

    # ---- soups and report: rank 0; scoring: spread over the ranks ----
    soups: dict[str, Any] = steps.run(
        "soups", lambda: _make_soups(config, ingredients, parent, data_dir, stage2_dir, run_dir / "soups")
    )
    models = {"stage1": parent, **ingredients}
    if baseline is not None:
        models[COMPUTE_MATCHED] = Path(baseline["checkpoint"])
    for soup_name, outcome in soups.get("soups", {}).items():
        models[soup_name] = Path(outcome["checkpoint"])
    spread = steps.run_spread(
        {f"eval-{name}": partial(score_models, config, path, data_dir) for name, path in models.items()}
    )
    scores = {name: spread[f"eval-{name}"] for name in models}
    report: dict[str, Any] = {}
    if dist.is_main:
        report = write_pipeline_report(
            config,
            run_dir,
            scores=scores,
            soups=soups,
            tokenizer=tokenizer,
            checkpoints=models,
            step_seconds=dict(steps.seconds),
            invocation_s=time.perf_counter() - started,
            stage1_metrics=None if config.stage2.init_from is not None else run_dir / "stage1" / "metrics.jsonl",
            ingredient_metrics=curves,
            trained=trained,
            baseline=baseline,
        )
    barrier()
    return report


def _train_tokenizer(config: PipelineConfig, tokenizer_dir: Path) -> dict[str, Any]:
    """Train (or load) the tokenizer into ``stage1/data/tokenizer``, where stage-1 data preparation reuses it."""
    from microgpt.common.atomic import atomic_directory
    from microgpt.data import iter_documents
    from microgpt.tokenizer import build_tokenizer

    if not tokenizer_dir.is_dir():
        assert config.stage1 is not None
        # Train split only: validation and test documents stay unseen by every stage.
        documents = iter_documents(config.stage1.data, "train") if config.tokenizer.kind == "bpe" else None
        tokenizer = build_tokenizer(config.tokenizer, documents)
        with atomic_directory(tokenizer_dir) as tmp:
            tokenizer.save(tmp)
    tokenizer = Tokenizer.from_directory(tokenizer_dir)
    return {"name": tokenizer.name, "n_vocab": tokenizer.n_vocab, "fingerprint": tokenizer.fingerprint}


def _prepared(data_dir: Path) -> dict[str, Any]:
    from microgpt.data import Manifest

    manifest = Manifest.load(data_dir)
    return {
        "data_dir": str(data_dir),
        "splits": {
            name: {"tokens": split.tokens, "bytes": split.bytes, "documents": split.documents}
            for name, split in manifest.splits.items()
        },
    }


def _trained(result: Any) -> dict[str, Any]:
    return {
        "step": result.step,
        "tokens": result.tokens,
        "val_loss": result.val_loss,
        "val_bpb": result.val_bpb,
        "checkpoint": str(result.checkpoint) if result.checkpoint is not None else None,
        "train_seconds": result.seconds,
    }


def _finetune(config: FinetuneConfig, run_config: dict[str, Any], lr_from: str | None = None) -> dict[str, Any]:
    result = _trained(FinetuneTrainer(config, run_config).fit())
    result.update({"lr": config.train.lr, "max_steps": config.train.max_steps, "batch_size": config.train.batch_size})
    if lr_from is not None:
        result["lr_from"] = lr_from
    return result


def _mix_dir(stage2_dir: Path, name: str) -> Path:
    return stage2_dir / f"data-{name}"


def _prepare_stage2(config: PipelineConfig, tokenizer: Tokenizer, data_dir: Path) -> dict[str, Any]:
    """Tokenize stage-2 data; an ingredient with its own mix gets a folder whose train split uses its weights."""
    from microgpt.data import prepare_data

    prepare_data(config.stage2.data, tokenizer, data_dir)
    result = _prepared(data_dir)
    stage2_dir = data_dir.parent
    for name, ingredient in zip(config.stage2.ingredient_names, config.stage2.ingredients, strict=True):
        if ingredient.weights is None:
            continue
        sources = [  # a weight of 0 leaves the source out of this ingredient's train split (a domain expert)
            source.model_copy(update={"weight": weight})
            for source, weight in zip(config.stage2.data.sources, ingredient.weights, strict=True)
            if weight > 0
        ]
        # Fraction splits hash each document, so a re-weighted stream keeps every val/test document out of train.
        prepare_data(config.stage2.data.model_copy(update={"sources": sources}), tokenizer, _mix_dir(stage2_dir, name))
        result[f"mix-{name}"] = _prepared(_mix_dir(stage2_dir, name))
    return result


def _make_soups(
    config: PipelineConfig,
    ingredients: dict[str, Path],
    parent: Path,
    data_dir: Path,
    stage2_dir: Path,
    out: Path,
) -> dict[str, Any]:
    """Every recipe the config turns on; the pipeline's own soups folder is rewritten when this step reruns."""
    from microgpt.pipeline.soups import last_checkpoints, make_soups, make_trajectory_soup, soup_dir_name

    soup, made = config.soup, {}
    recipes = soup.recipes
    if len(ingredients) < 2 and "model-stock" in recipes:
        log.warning("soup.model_stock: one ingredient has no angle to measure; no Model Stock soup")
        recipes = [r for r in recipes if r != "model-stock"]
    if recipes:
        outcomes = make_soups(
            list(ingredients.values()),
            out_dir=out,
            recipes=recipes,  # type: ignore[arg-type]
            names=list(ingredients),
            weights=soup.weights,
            data_dir=data_dir,
            parent=parent,
            lambdas=soup.lambdas,
            densities=soup.densities,
            batch_size=config.eval.batch_size,
            max_batches=config.eval.max_batches,
            overwrite=True,
            device=scoring_device(config),
        )
        made = {soup_dir_name(o.recipe): o.to_dict() for o in outcomes.values()}
    for run in config.trajectory_runs:
        name = f"trajectory-{run}"
        outcome = make_trajectory_soup(
            last_checkpoints(stage2_dir / run, soup.trajectory_last),
            out_dir=out,
            name=name,
            data_dir=data_dir,
            batch_size=config.eval.batch_size,
            max_batches=config.eval.max_batches,
            overwrite=True,
            device=scoring_device(config),
        )
        made[name] = {**outcome.to_dict(), "run": run}
    return {"soups": made}


def describe(config: PipelineConfig) -> str:
    """A short YAML summary of the plan (for ``--dry-run``)."""
    plan = {
        "out_dir": str(config.out_dir),
        "stage1": "reuse " + str(config.stage2.init_from) if config.stage2.init_from else "pretrain",
        "ingredients": config.stage2.ingredient_names,
        "compute_matched": (
            f"{sum(config.stage2.ingredient_steps().values())} steps"
            if config.stage2.compute_matched.enabled
            else "off"
        ),
        "soups": config.soup.recipes + [f"trajectory-{run}" for run in config.trajectory_runs],
    }
    return yaml.safe_dump(plan, sort_keys=False)
