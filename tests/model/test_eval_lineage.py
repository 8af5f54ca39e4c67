"""``microgpt eval`` on every checkpoint kind, through the real CLI: stage-1 run, fine-tune, soup, import."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from microgpt.cli.main import main
from microgpt.common.checkpoint import resolve_checkpoint
from microgpt.common.config import validate_config
from microgpt.common.trainer import TrainConfig
from microgpt.eval.lineage import recorded_data
from microgpt.model.finetune import FinetuneConfig, FinetuneTrainer
from tests.model.test_finetune import make_stage1, make_stage2_data, quiet_train


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def loss_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith(("val:", "test:"))]
    assert len(lines) == 1, out
    return lines[0]


def test_eval_every_checkpoint_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stage1 = make_stage1(tmp_path)
    data = make_stage2_data(tmp_path, stage1)  # val and test splits

    # Stage 1: its own data, as before.
    code, out, err = cli(capsys, "eval", str(stage1), "--device", "cpu")
    assert code == 0, err
    assert loss_line(out) == loss_line(cli(capsys, "eval", str(stage1), "--data", str(stage1 / "data"))[1])

    # A fine-tune made by `microgpt finetune`, its config written with paths relative to where it ran.
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "ft.yaml"
    train = "".join(f"  {key}: {value}\n" for key, value in quiet_train(max_steps=2).items())
    for seed, name in enumerate(("ft-1", "ft-2")):
        config.write_text(f"init_from: stage1\ndata_dir: stage2-data\nout_dir: {name}\ntrain:\n{train}")
        assert cli(capsys, "finetune", str(config), f"data_seed={seed}", "train.lr=2e-3")[0] == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the recorded "stage2-data" is found from the checkpoint upwards
    found = recorded_data(tmp_path / "ft-1").folder
    assert found is not None and found.resolve() == (tmp_path / "stage2-data").resolve()
    explicit = {split: loss_line(cli(capsys, "eval", str(tmp_path / "ft-1"), "--data", str(data), "--split",
                                     split)[1]) for split in ("val", "test")}  # fmt: skip
    for split in ("val", "test"):
        code, out, err = cli(capsys, "eval", str(tmp_path / "ft-1"), "--split", split)
        assert code == 0, err
        assert loss_line(out) == explicit[split]
    assert explicit["val"] != explicit["test"]

    # A fine-tune made the pipeline's way (its run config nests the fine-tuning config under `finetune:`).
    pipe = FinetuneConfig(
        init_from=stage1, data_dir=data, out_dir=tmp_path / "pipe-ing",
        train=validate_config(TrainConfig, quiet_train(max_steps=1)),
    )  # fmt: skip
    FinetuneTrainer(pipe, {"pipeline": {}, "ingredient": "a", "finetune": pipe.to_dict()}).fit()
    record = recorded_data(tmp_path / "pipe-ing")
    assert (record.kind, record.folder) == ("finetune", data)

    # A soup: the data of its ingredients.
    soups = tmp_path / "soups"
    code, _, err = cli(capsys, "soup", str(tmp_path / "ft-1"), str(tmp_path / "ft-2"), "--out", str(soups),
                       "-r", "uniform")  # fmt: skip
    assert code == 0, err
    soup = soups / "uniform-soup"
    code, out, err = cli(capsys, "eval", str(soup), "--split", "test")
    assert code == 0, err
    assert loss_line(out) == loss_line(cli(capsys, "eval", str(soup), "--split", "test", "--data", str(data))[1])
    assert recorded_data(soup).kind == "soup"

    # An import records no data: a one-line error naming what is missing and the fix; --data works.
    assert cli(capsys, "export", str(stage1), str(tmp_path / "hf"))[0] == 0
    assert cli(capsys, "import", str(tmp_path / "hf"), str(tmp_path / "imported"))[0] == 0
    code, out, err = cli(capsys, "eval", str(tmp_path / "imported"))
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "records no data (imported from" in err and "pass --data" in err
    imported = loss_line(cli(capsys, "eval", str(tmp_path / "imported"), "--data", str(stage1 / "data"))[1])
    assert imported == loss_line(cli(capsys, "eval", str(stage1))[1])  # the same weights, the same data
    yaml_data = loss_line(cli(capsys, "eval", str(tmp_path / "imported"), "--data",
                              str(resolve_checkpoint(stage1) / "run_config.yaml"))[1])  # fmt: skip
    assert yaml_data == imported  # the run's data config, prepared again, gives the same shards

    # A folder that is not prepared data, and a recorded folder that is gone.
    code, _, err = cli(capsys, "eval", str(stage1), "--data", str(tmp_path / "elsewhere"))
    assert code == 1 and "not a prepared data folder (no manifest.json)" in err
    os.rename(data, tmp_path / "moved")
    code, _, err = cli(capsys, "eval", str(soup))
    assert code == 1 and "stage-2 data folder stage2-data is gone" in err and "pass --data" in err
