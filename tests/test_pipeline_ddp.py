from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline import tiny_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_pipeline_under_torchrun_with_two_ranks(tmp_path: Path) -> None:
    """The same code path as on many GPUs: two gloo ranks train, rank 0 alone makes soups and the report."""
    config = tiny_config(tmp_path / "run")
    config["stage2"]["ingredients"] = config["stage2"]["ingredients"][:2]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*command, "-m", "microgpt", "pipeline", str(path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [m["name"] for m in report["models"]][-2:] == ["uniform-soup", "greedy-soup"]
    meta = json.loads(next((tmp_path / "run" / "stage1" / "checkpoints").glob("step-*/trainer.json")).read_text())
    assert meta["world_size"] == 2
    assert done.stdout.count("report:") == 1  # rank 0 alone writes and prints the report
