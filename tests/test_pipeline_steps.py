"""The pipeline's step records: a dry run writes nothing, a corrupt record reruns its step alone, and changed soup
or eval settings redo only the soups and the evaluation (issue 16's untested paths)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from microgpt.cli.main import main
from microgpt.common.config import validate_config
from microgpt.pipeline import run as pipeline_run
from microgpt.pipeline.config import PipelineConfig
from microgpt.pipeline.run import run_pipeline
from tests.model.test_finetune import _restore_threads  # noqa: F401  (autouse fixture, found by name)
from tests.test_pipeline import tiny_config


def _cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def test_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path / "run")))
    capsys.readouterr()
    assert _cli(["pipeline", str(path), "--dry-run"]) == 0
    assert capsys.readouterr().out.strip()  # the plan is shown
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["p.yaml"]  # and nothing else exists


def _marks(steps: Path) -> dict[str, int]:
    return {p.stem: p.stat().st_mtime_ns for p in steps.glob("*.json")}


@pytest.mark.slow
def test_corrupt_record_reruns_its_step_and_new_eval_settings_redo_only_soups_and_eval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_config(tmp_path / "run")
    data["stage2"]["ingredients"] = data["stage2"]["ingredients"][:2]
    data["stage2"]["train"]["checkpoint_interval"] = 1  # the baseline's 6 steps: enough checkpoints to average
    data["report"] = {"samples": 0}
    run_pipeline(validate_config(PipelineConfig, data))
    steps = tmp_path / "run" / "steps"
    real_finetune = pipeline_run._finetune
    calls: list[str] = []

    def record(finetune: Any, run_config: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        calls.append(run_config["ingredient"])
        return real_finetune(finetune, run_config, **kwargs)

    monkeypatch.setattr(pipeline_run, "_finetune", record)

    # A torn record (a hand edit, a disk fault): that step alone runs again; its trainer resumes at the end.
    (steps / "ingredient-1.json").write_text('{"step": 3, "checkpo')
    before = _marks(steps)
    run_pipeline(validate_config(PipelineConfig, data))
    assert calls == ["ingredient-1"]
    assert json.loads((steps / "ingredient-1.json").read_text())["step"] == 3
    after = _marks(steps)
    assert {k: v for k, v in after.items() if k != "ingredient-1"} == {
        k: v for k, v in before.items() if k != "ingredient-1"
    }

    # New evaluation settings: no training step reruns; the soups and every evaluation are redone.
    calls.clear()
    data["eval"] = {**data["eval"], "batch_size": 2}
    before = _marks(steps)
    run_pipeline(validate_config(PipelineConfig, data))
    assert calls == []
    after = _marks(steps)
    redone = sorted(k for k in before if after.get(k) != before[k])
    derived = ("soups", "compute-matched-select")  # every choice made by scoring on val is redone too
    assert redone == sorted(k for k in before if k in derived or k.startswith("eval-"))
    assert "soups" in redone and "eval-stage1" in redone
