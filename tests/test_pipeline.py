from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from microgpt.cli.main import main
from microgpt.common.config import load_config, validate_config
from microgpt.common.errors import ConfigError, MicrogptError
from microgpt.data import Manifest
from microgpt.pipeline import run as pipeline_run
from microgpt.pipeline.config import PipelineConfig
from microgpt.pipeline.run import run_pipeline
from tests.model.test_finetune import (
    TINY_MODEL,
    _restore_threads,  # noqa: F401  (autouse fixture, found by name)
    documents,
    make_stage1,
    quiet_train,
)

ROOT = Path(__file__).resolve().parent.parent


def tiny_config(out_dir: Path, **changes: Any) -> dict[str, Any]:
    """A pipeline of seconds: 300-token BPE, a one-layer GPT, 4 pretraining steps, three 3-step ingredients."""
    config: dict[str, Any] = {
        "out_dir": str(out_dir),
        "tokenizer": {"vocab_size": 300},
        "stage1": {
            "data": {"sources": [{"type": "text", "texts": documents(0)}], "val_docs": 3, "workers": 1},
            "model": TINY_MODEL,
            "train": quiet_train(),
        },
        "stage2": {
            "data": {
                "sources": [
                    {"type": "text", "name": "a", "texts": documents(7)},
                    {"type": "text", "name": "b", "texts": documents(8)},
                ],
                "val_fraction": 0.15,
                "test_fraction": 0.15,
                "workers": 1,
            },
            "train": quiet_train(max_steps=3, lr=1e-3, checkpoint_interval=2),
            "ingredients": [
                {"seed": 1, "data_seed": 1},
                {"seed": 2, "data_seed": 2, "lr": 3e-3},
                {"name": "mixed", "seed": 3, "data_seed": 3, "weights": [2.0, 0.0]},  # 0: source b left out
            ],
        },
        "eval": {"batch_size": 4},
        "report": {"samples": 1, "sample_tokens": 8},
    }
    config.update(changes)
    return config


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path: Path) -> None:
    config = validate_config(PipelineConfig, tiny_config(tmp_path / "run"))
    report = run_pipeline(config)
    run = tmp_path / "run"
    saved = json.loads((run / "report.json").read_text())
    names = [m["name"] for m in saved["models"]]
    assert names == [
        "stage1",
        "ingredient-1",
        "ingredient-2",
        "mixed",
        "best-ingredient",
        "compute-matched",
        "uniform-soup",
        "greedy-soup",
        "model-stock",
        "task-arithmetic",
        "ties",
        "trajectory-compute-matched",
    ]
    assert saved["wall_time_s"] > 0 and report["wall_time_s"] == saved["wall_time_s"]
    test_split = Manifest.load(run / "stage2" / "data")  # every model is scored on the one stage-2 test split
    per_byte = test_split.split_tokens("test") / test_split.split_bytes("test") / math.log(2)
    for model in saved["models"]:  # bits per byte = nats/token × the split's tokens per byte / ln 2
        assert model["test_bpb"] == pytest.approx(model["test_loss"] * per_byte, rel=1e-9)
    by_name = {m["name"]: m for m in saved["models"]}
    # Greedy selection optimises val: never worse there than the best ingredient (the recipe's guarantee).
    best_val = min(by_name[n]["val_loss"] for n in ("ingredient-1", "ingredient-2", "mixed"))
    assert by_name["greedy-soup"]["val_loss"] <= best_val + 1e-9
    assert by_name["best-ingredient"]["val_loss"] == best_val
    assert (run / "stage1_loss.png").stat().st_size > 0 and (run / "ingredients_loss.png").stat().st_size > 0
    text = (run / "report.md").read_text()
    assert "| greedy-soup |" in text and "## Samples from" in text
    assert (run / "stage2" / "data-mixed" / "manifest.json").is_file()  # its own mix, its own train split
    # The compute-matched baseline trained the ingredients' summed steps at their batch size, with the learning rate
    # of the best ingredient by val loss, and kept its checkpoint with the lowest val loss.
    baseline = json.loads((run / "steps" / "compute-matched.json").read_text())
    assert baseline["step"] == baseline["max_steps"] == 3 + 3 + 3 and baseline["batch_size"] == 4
    best = min(("ingredient-1", "ingredient-2", "mixed"), key=lambda n: by_name[n]["val_loss"])
    assert baseline["lr"] == {"ingredient-1": 1e-3, "ingredient-2": 3e-3, "mixed": 1e-3}[best]
    select = json.loads((run / "steps" / "compute-matched-select.json").read_text())
    assert sorted(int(s) for s in select["val_losses"]) == [2, 4, 6, 8, 9]
    assert select["val_loss"] == min(select["val_losses"].values())
    assert by_name["compute-matched"]["val_loss"] == pytest.approx(select["val_loss"])
    assert by_name["compute-matched"]["stage2_steps"] == 9 and by_name["compute-matched"]["stage2_tokens"] > 0
    for soup in ("uniform-soup", "greedy-soup", "model-stock", "task-arithmetic", "ties"):
        assert by_name[soup]["stage2_steps"] == 9  # a soup costs all of its ingredients' training
    assert by_name["ingredient-1"]["stage2_steps"] == 3 and by_name["stage1"]["stage2_steps"] == 0
    trajectory = json.loads((run / "steps" / "soups.json").read_text())["soups"]["trajectory-compute-matched"]
    assert trajectory["settings"]["steps"] == [4, 6, 8, 9]
    assert any("compute-matched baseline" in note for note in saved["notes"])
    # The soups are checkpoints the CLI samples from.
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", str(run / "soups" / "greedy-soup"), "--max-new-tokens", "4", "--prompt", "the"])
    assert exit_info.value.code == 0


@pytest.mark.slow
def test_rerun_after_interruption_continues_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = validate_config(PipelineConfig, tiny_config(tmp_path / "run"))
    real_finetune = pipeline_run._finetune
    calls: list[str] = []

    def crash_on_second(finetune: Any, run_config: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        calls.append(run_config["ingredient"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed during the second ingredient
        return real_finetune(finetune, run_config, **kwargs)

    monkeypatch.setattr(pipeline_run, "_finetune", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config)
    steps = tmp_path / "run" / "steps"
    done = sorted(p.stem for p in steps.glob("*.json"))
    assert done == ["ingredient-1", "stage1", "stage1-data", "stage2-data", "tokenizer"]
    stage1_ckpt = sorted((tmp_path / "run" / "stage1" / "checkpoints").iterdir())
    marks = {p.stem: p.stat().st_mtime_ns for p in steps.glob("*.json")}

    calls.clear()

    def record(finetune: Any, run_config: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        calls.append(run_config["ingredient"])
        return real_finetune(finetune, run_config, **kwargs)

    monkeypatch.setattr(pipeline_run, "_finetune", record)
    run_pipeline(config)
    assert calls == ["ingredient-2", "mixed", "compute-matched"]  # finished steps are not redone
    assert {p.stem: p.stat().st_mtime_ns for p in steps.glob("*.json") if p.stem in marks} == marks
    assert sorted((tmp_path / "run" / "stage1" / "checkpoints").iterdir()) == stage1_ckpt
    assert (tmp_path / "run" / "report.json").is_file()


def test_one_ingredient_from_an_existing_stage1_is_a_soup_of_one(tmp_path: Path) -> None:
    stage1 = make_stage1(tmp_path)
    data = tiny_config(tmp_path / "run", stage1=None)
    data["stage2"]["init_from"] = str(stage1)
    data["stage2"]["ingredients"] = [{"seed": 1}]
    data["report"] = {"samples": 0}
    data["soup"] = {"trajectory": []}
    report = run_pipeline(validate_config(PipelineConfig, data))
    by_name = {m["name"]: m for m in report["models"]}
    assert "stage1" in by_name and "ingredient-1" in by_name
    assert by_name["uniform-soup"]["test_loss"] == pytest.approx(by_name["ingredient-1"]["test_loss"])
    assert any("soup of one" in note for note in report["notes"])
    assert not (tmp_path / "run" / "stage1").exists()  # stage 1 reused, not rerun


def test_missing_stage_field_is_a_config_error_before_any_work(tmp_path: Path) -> None:
    data = tiny_config(tmp_path / "run")
    del data["stage2"]["train"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as exit_info:
        main(["pipeline", str(path)])
    assert exit_info.value.code == 2
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="stage1: Field required"):
        data = tiny_config(tmp_path / "run")
        del data["stage1"]
        validate_config(PipelineConfig, data)


def test_per_source_ingredients_are_one_line(tmp_path: Path) -> None:
    data = tiny_config(tmp_path / "run")
    data["stage2"]["ingredients"] = "per-source"
    data["soup"] = {"trajectory": []}
    config = validate_config(PipelineConfig, data)
    assert config.stage2.ingredient_names == ["a", "b"]
    assert [ing.weights for ing in config.stage2.ingredients] == [[1.0, 0.0], [0.0, 1.0]]
    assert len({(ing.seed, ing.data_seed) for ing in config.stage2.ingredients}) == 2
    del data["stage2"]["data"]["sources"][1]["name"]
    with pytest.raises(ConfigError, match=r"per-source needs a name on every source \(data.sources.1\)"):
        validate_config(PipelineConfig, data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"soup": {"lambdas": [0.5, 2.5]}}, "lambdas values must lie in"),
        ({"soup": {"densities": [0.0]}}, "densities values must lie in"),
        ({"soup": {"trajectory": ["nobody"]}}, "unknown run 'nobody'"),
        ({"soup": {"trajectory": ["ingredient-1"]}}, "ingredient-1 saves 2 checkpoint"),
        ({"soup": {"trajectory_last": 1}}, "trajectory_last"),
    ],
)
def test_bad_soup_settings_are_refused_before_any_work(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(PipelineConfig, tiny_config(tmp_path / "run", **change))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"test_fraction": 0.0}, "test split"),
        ({"ingredients": []}, "ingredients"),
        ({"ingredients": [{"weights": [1.0]}]}, "weights has 1 entries for 2"),
        ({"ingredients": [{"weights": [0.0, 0.0]}]}, "at least one positive"),
        ({"ingredients": [{"name": "compute-matched"}]}, "the baseline's name"),
        ({"ingredients": [{"name": "x"}, {"name": "x"}]}, "unique"),
        ({"val_docs": 2}, "need hash splits"),
    ],
)
def test_bad_stage2_settings_are_refused(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    data = tiny_config(tmp_path / "run")
    if "test_fraction" in change or "val_docs" in change:
        data["stage2"]["data"].update(change)
    else:
        data["stage2"].update(change)
    with pytest.raises(ConfigError, match=message):
        validate_config(PipelineConfig, data)


def test_missing_stage1_checkpoint_is_refused_before_any_work(tmp_path: Path) -> None:
    data = tiny_config(tmp_path / "run", stage1=None)
    data["stage2"]["init_from"] = str(tmp_path / "no-such-run")
    with pytest.raises(MicrogptError, match="stage2.init_from: checkpoint not found"):
        run_pipeline(validate_config(PipelineConfig, data))
    assert not (tmp_path / "run").exists()


def test_missing_data_file_is_refused_before_any_work(tmp_path: Path) -> None:
    data = tiny_config(tmp_path / "run")
    data["stage2"]["data"]["sources"] = [{"type": "file", "paths": [str(tmp_path / "absent.parquet")]}] * 2
    with pytest.raises(MicrogptError, match=r"stage2.data.sources.0: .*file not found"):
        run_pipeline(validate_config(PipelineConfig, data))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"type": "file", "paths": ["{tmp}/rows.jsonl"], "text_field": "text"}, "line 1: no field 'text'"),
        ({"type": "url", "urls": ["{base}/status/404"], "retries": 0}, "404"),
        ({"type": "url", "urls": ["{base}/files/page.txt"], "retries": 0}, "sent a web page"),
    ],
    ids=["wrong-column", "dead-url", "html-at-txt-url"],
)
def test_unreadable_stage2_source_is_refused_before_stage1_trains(
    tmp_path: Path, http_server: tuple[str, Any], source: dict[str, Any], message: str
) -> None:
    base, state = http_server
    state.files["page.txt"] = b"<html><body>Sign in</body></html>"
    state.types["page.txt"] = "text/html"
    (tmp_path / "rows.jsonl").write_text(json.dumps({"body": "a document under another name"}) + "\n")
    filled = {
        k: [v.replace("{tmp}", str(tmp_path)).replace("{base}", base) for v in value]
        if isinstance(value, list)
        else value
        for k, value in source.items()
    }
    data = tiny_config(tmp_path / "run")
    data["stage2"]["data"]["sources"] = [data["stage2"]["data"]["sources"][0], filled]
    with pytest.raises(MicrogptError, match=r"stage2.data.sources.1: ") as error:
        run_pipeline(validate_config(PipelineConfig, data))
    assert message in str(error.value)
    assert not (tmp_path / "run").exists()  # refused before the tokenizer or stage 1 ran


def test_a_different_pipeline_in_the_run_dir_is_refused(tmp_path: Path) -> None:
    config = validate_config(PipelineConfig, tiny_config(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    other = config.model_copy(update={"seed": 99})
    (tmp_path / "run" / "pipeline.yaml").write_text(yaml.safe_dump(other.to_dict()))
    with pytest.raises(MicrogptError, match="different seed settings"):
        run_pipeline(config)


@pytest.mark.parametrize("name", ["demo.yaml", "pipeline-fineweb.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    config = load_config(PipelineConfig, ROOT / "configs" / name)
    assert len(config.stage2.ingredients) >= 2  # a soup needs two
    assert config.stage2.compute_matched.enabled  # every shipped pipeline sets its soups against the baseline
