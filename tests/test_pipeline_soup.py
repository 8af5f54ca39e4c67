from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from microgpt.cli.main import main
from microgpt.common.checkpoint import load_weights, read_meta, resolve_checkpoint
from microgpt.common.errors import MicrogptError
from microgpt.model.finetune import FinetuneTrainer, ancestor_id, checkpoint_id
from microgpt.pipeline.evaluate import evaluate_split, load_gpt
from microgpt.pipeline.soups import make_soups
from tests.model.test_finetune import (
    _restore_threads,  # noqa: F401  (autouse fixture, found by name)
    finetune,
    make_stage1,
    make_stage2_data,
)


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A stage-1 run, stage-2 data and three fine-tuned ingredients that differ by learning rate and data order."""
    root = tmp_path_factory.mktemp("kitchen")
    stage1 = make_stage1(root)
    data = make_stage2_data(root, stage1)
    paths = {"stage1": stage1, "data": data}
    for index, lr in enumerate((3e-3, 1e-3, 3e-4), start=1):
        trainer = finetune((stage1, data), root / f"ingredient-{index}", max_steps=3, lr=lr)
        trainer = FinetuneTrainer(trainer.finetune.model_copy(update={"data_seed": index}))
        result = trainer.fit()
        assert result.checkpoint is not None
        paths[f"ingredient-{index}"] = result.checkpoint
    return paths


def ingredients(kitchen: dict[str, Path]) -> list[Path]:
    return [kitchen[f"ingredient-{i}"] for i in (1, 2, 3)]


def test_uniform_soup_checkpoint_is_the_mean_and_records_lineage(kitchen: dict[str, Path], tmp_path: Path) -> None:
    outcomes = make_soups(ingredients(kitchen), out_dir=tmp_path, recipes=["uniform"])
    soup_dir = outcomes["uniform"].checkpoint
    soup = load_weights(soup_dir)
    states = [load_weights(p) for p in ingredients(kitchen)]
    for key, value in soup.items():
        torch.testing.assert_close(value, torch.stack([s[key] for s in states]).mean(0))
    meta = read_meta(soup_dir)
    stage1 = resolve_checkpoint(kitchen["stage1"])
    assert meta["ancestor"] == checkpoint_id(stage1) == ancestor_id(soup_dir)
    assert len(meta["soup"]["chosen"]) == 3 and meta["soup"]["recipe"] == "uniform"
    assert (soup_dir / "tokenizer").is_dir()


def test_greedy_soup_is_never_worse_than_its_best_ingredient(kitchen: dict[str, Path], tmp_path: Path) -> None:
    names = ["ingredient-1", "ingredient-2", "ingredient-3"]
    outcomes = make_soups(ingredients(kitchen), out_dir=tmp_path, names=names, data_dir=kitchen["data"])
    greedy = outcomes["greedy"]
    paths = dict(zip(names, ingredients(kitchen), strict=True))
    val = {n: evaluate_split(load_gpt(p), kitchen["data"], "val").loss for n, p in paths.items()}
    assert greedy.val_loss is not None and greedy.val_loss <= min(val.values()) + 1e-9
    assert greedy.trace[0][0] == min(val, key=lambda n: val[n])  # best first
    assert greedy.chosen[0] == greedy.trace[0][0]
    # The soup on disk scores what the recipe said it scores.
    assert evaluate_split(load_gpt(greedy.checkpoint), kitchen["data"], "val").loss == pytest.approx(greedy.val_loss)


def test_a_soup_can_be_fine_tuned_further(kitchen: dict[str, Path], tmp_path: Path) -> None:
    soup_dir = make_soups(ingredients(kitchen), out_dir=tmp_path, recipes=["uniform"])["uniform"].checkpoint
    trainer = finetune((soup_dir, kitchen["data"]), tmp_path / "more", max_steps=2)
    result = trainer.fit()
    assert result.checkpoint is not None
    meta = read_meta(result.checkpoint)
    assert meta["parent"] == checkpoint_id(soup_dir)
    assert meta["ancestor"] == checkpoint_id(resolve_checkpoint(kitchen["stage1"]))


def test_ingredients_of_different_stage1_parents_are_refused(kitchen: dict[str, Path], tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    shutil.copytree(kitchen["ingredient-2"], stranger)
    meta = json.loads((stranger / "meta.json").read_text())
    meta["ancestor"] = "sha256:another-stage-1"
    (stranger / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(MicrogptError, match="do not share a stage-1 parent"):
        make_soups([kitchen["ingredient-1"], stranger], out_dir=tmp_path / "soups", recipes=["uniform"])
    assert not (tmp_path / "soups").exists()


def test_soup_cli_and_its_refusals(
    kitchen: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["soup", *map(str, ingredients(kitchen)[:2]), "--out", str(tmp_path / "s"), "--data", str(kitchen["data"])]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "uniform soup of" in out and "greedy soup of" in out
    assert (tmp_path / "s" / "greedy-soup" / "checkpoints").is_dir()
    with pytest.raises(SystemExit) as exit_info:
        main(["soup", str(kitchen["ingredient-1"]), "--out", str(tmp_path / "g"), "--recipe", "greedy"])
    assert exit_info.value.code == 1
    assert "needs a data folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["soup", str(tmp_path / "missing"), "--out", str(tmp_path / "m"), "--recipe", "uniform"])
    assert exit_info.value.code == 1
    assert "checkpoint not found" in capsys.readouterr().err
