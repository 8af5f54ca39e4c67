from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from microgpt.cli.main import main
from microgpt.common.checkpoint import read_meta, resolve_checkpoint
from microgpt.common.checkpoint_load import load_weights
from microgpt.common.errors import MicrogptError
from microgpt.common.sources import TextSource
from microgpt.data import prepare_data
from microgpt.data.config import DataConfig
from microgpt.eval.split_loss import evaluate_split
from microgpt.model.checkpoint_reader import ancestor_id, checkpoint_id, load_gpt
from microgpt.model.finetune import FinetuneTrainer
from microgpt.pipeline.soups import last_checkpoints, make_soups, make_trajectory_soup
from microgpt.tokenizer import Tokenizer
from tests.model.test_finetune import (
    _restore_threads,  # noqa: F401  (autouse fixture, found by name)
    documents,
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
    assert exit_info.value.code == 2  # a missing option is a usage error
    assert "pass a prepared data folder (--data)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["soup", str(tmp_path / "missing"), "--out", str(tmp_path / "m"), "--recipe", "uniform"])
    assert exit_info.value.code == 1
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trajectory_run(kitchen: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step fine-tune that keeps a checkpoint at every step."""
    root = tmp_path_factory.mktemp("trajectory")
    trainer = finetune((kitchen["stage1"], kitchen["data"]), root / "run", max_steps=4)
    train = trainer.finetune.train.model_copy(update={"checkpoint_interval": 1, "keep_last": 0})
    FinetuneTrainer(trainer.finetune.model_copy(update={"train": train})).fit()
    return root / "run"


def test_trajectory_soup_is_the_mean_of_the_saved_checkpoints(trajectory_run: Path, tmp_path: Path) -> None:
    last = last_checkpoints(trajectory_run, 3)
    assert [read_meta(p)["step"] for p in last] == [2, 3, 4]
    outcome = make_trajectory_soup(last, out_dir=tmp_path, name="lawa")
    soup = load_weights(outcome.checkpoint)
    states = [load_weights(p) for p in last]
    for key, value in soup.items():
        torch.testing.assert_close(value, (states[0][key] + states[1][key] + states[2][key]) / 3)
    assert read_meta(outcome.checkpoint)["soup"]["settings"] == {"steps": [2, 3, 4]}


def test_parent_recipes_choose_on_val_and_record_it(kitchen: dict[str, Path], tmp_path: Path) -> None:
    outcomes = make_soups(
        ingredients(kitchen),
        out_dir=tmp_path,
        recipes=["model-stock", "task-arithmetic", "ties"],
        data_dir=kitchen["data"],
        parent=kitchen["stage1"],
        lambdas=[0.5, 1.0],
        densities=[0.5, 1.0],
    )
    task = outcomes["task-arithmetic"]
    assert [g[0] for g in task.grid] == ["lambda=0.5", "lambda=1"]
    assert task.val_loss == min(loss for _, loss in task.grid)
    assert len(outcomes["ties"].grid) == 4 and outcomes["ties"].val_loss == min(g[1] for g in outcomes["ties"].grid)
    assert 0.0 <= outcomes["model-stock"].settings["mean_ratio"] <= 1.0
    # What the grid says the chosen soup scores is what the saved soup scores.
    saved = evaluate_split(load_gpt(task.checkpoint), kitchen["data"], "val").loss
    assert saved == pytest.approx(task.val_loss)
    assert read_meta(task.checkpoint)["soup"]["settings"] == task.settings
    assert {p.name for p in tmp_path.iterdir()} == {"model-stock", "task-arithmetic", "ties"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-r", "model-stock"], "needs the checkpoint the ingredients were fine-tuned from (--parent)"),
        (["-r", "task-arithmetic", "--parent", "{stage1}", "--data", "{data}", "--lambdas", "0.5,2.5"], "--lambdas"),
        (["-r", "ties", "--parent", "{stage1}", "--data", "{data}", "--densities", "0"], "--densities"),
        (["-r", "ties", "--parent", "{stage1}"], "--data"),
        (["-r", "stock"], "unknown recipe 'stock'"),
    ],
)
def test_soup_cli_refuses_bad_recipe_settings(
    kitchen: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    fill = {"{stage1}": str(kitchen["stage1"]), "{data}": str(kitchen["data"])}
    args = ["soup", *map(str, ingredients(kitchen)), "--out", str(tmp_path / "s"), *[fill.get(a, a) for a in extra]]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_soup_cli_refusals_that_need_the_checkpoints(
    kitchen: dict[str, Path], trajectory_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s"
    cases = [
        (
            ["soup", str(kitchen["ingredient-1"]), "-r", "model-stock", "--parent", str(kitchen["stage1"])],
            2,
            "at least 2",
        ),
        (["soup", str(kitchen["ingredient-1"]), str(trajectory_run), "-r", "trajectory"], 2, "one training run"),
        (["soup", str(trajectory_run), "-r", "trajectory", "--last", "9"], 1, "needs 9, found"),
        (["soup", str(kitchen["ingredient-1"]), str(kitchen["ingredient-1"]), "-r", "uniform"], 1, "same checkpoint"),
        # The parent of a recipe must be the checkpoint the ingredients started from.
        (["soup", *map(str, ingredients(kitchen)), "-r", "model-stock", "--parent", str(trajectory_run)], 1, "was not"),
    ]
    for args, code, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--out", str(out)])
        err = capsys.readouterr().err
        assert exit_info.value.code == code, (args, err)
        assert message in err and err.count("\n") == 1, (args, err)
        assert not out.exists()


def test_soup_cli_refuses_to_replace_a_soup_unless_told(
    kitchen: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s"
    base = ["soup", *map(str, ingredients(kitchen)), "--out", str(out), "-r", "uniform"]
    with pytest.raises(SystemExit):
        main(base)
    saved = {p: p.read_bytes() for p in (out / "uniform-soup").rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        main(["soup", *map(str, ingredients(kitchen)[:2]), "--out", str(out), "-r", "uniform"])
    assert exit_info.value.code == 1
    assert "--overwrite" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (out / "uniform-soup").rglob("*") if p.is_file()} == saved
    with pytest.raises(SystemExit) as exit_info:
        main(["soup", *map(str, ingredients(kitchen)[:2]), "--out", str(out), "-r", "uniform", "--overwrite"])
    assert exit_info.value.code == 0
    assert len(read_meta(resolve_checkpoint(out / "uniform-soup"))["soup"]["chosen"]) == 2


def test_soup_refuses_selection_data_of_another_tokenizer(kitchen: dict[str, Path], tmp_path: Path) -> None:
    other = Tokenizer.train(documents(3), vocab_size=280)
    other_data = tmp_path / "other-data"
    prepare_data(
        DataConfig(sources=[TextSource(texts=documents(7))], val_docs=3, test_docs=3, workers=1), other, other_data
    )
    with pytest.raises(MicrogptError, match="tokenized with .* not the ingredients' tokenizer"):
        make_soups(ingredients(kitchen), out_dir=tmp_path / "s", recipes=["greedy"], data_dir=other_data)
    assert not (tmp_path / "s").exists()
