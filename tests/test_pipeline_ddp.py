from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from microgpt.common.config import validate_config
from microgpt.pipeline.config import PipelineConfig
from microgpt.pipeline.run import run_pipeline
from tests.model.test_finetune import _restore_threads  # noqa: F401  (autouse fixture, found by name)
from tests.test_pipeline import tiny_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_pipeline_under_torchrun_with_two_ranks(tmp_path: Path) -> None:
    """The same code path as on many GPUs: two gloo ranks train and score, rank 0 alone makes soups and the report."""
    config = tiny_config(tmp_path / "run")
    config["stage2"]["ingredients"] = config["stage2"]["ingredients"][:2]
    config["stage2"]["train"]["checkpoint_interval"] = 1  # the baseline's 6 steps: enough checkpoints to average
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*command, "-m", "microgpt", "pipeline", str(path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    names = [m["name"] for m in report["models"]]
    assert "compute-matched" in names and names[-1] == "trajectory-compute-matched" and "ties" in names
    meta = json.loads(next((tmp_path / "run" / "stage1" / "checkpoints").glob("step-*/trainer.json")).read_text())
    assert meta["world_size"] == 2
    assert done.stdout.count("report:") == 1  # rank 0 alone writes and prints the report
    steps = tmp_path / "run" / "steps"
    scored_on = {json.loads(p.read_text())["rank"] for p in steps.glob("eval-*.json")}
    assert scored_on == {0, 1}  # the models' scoring was spread over both ranks

    # The same pipeline in one process: the same models, steps and tokens, and (the global batch and the data
    # order being the same at any world size) the same losses up to float summation order.
    config["out_dir"] = str(tmp_path / "one")
    single = run_pipeline(validate_config(PipelineConfig, config))
    by_name = {m["name"]: m for m in single["models"]}
    assert [m["name"] for m in report["models"]] == list(by_name)
    for model in report["models"]:
        alone = by_name[model["name"]]
        assert (model["stage2_steps"], model["stage2_tokens"]) == (alone["stage2_steps"], alone["stage2_tokens"])
        assert model["test_loss"] == pytest.approx(alone["test_loss"], rel=1e-3), model["name"]
        assert model["test_bpb"] == pytest.approx(alone["test_bpb"], rel=1e-3), model["name"]
