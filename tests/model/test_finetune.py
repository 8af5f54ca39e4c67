from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from microgpt.common.checkpoint import CheckpointError, read_meta, resolve_checkpoint
from microgpt.common.checkpoint_load import load_weights
from microgpt.common.config import validate_config
from microgpt.common.errors import MicrogptError
from microgpt.common.sources import TextSource
from microgpt.common.trainer import TrainConfig
from microgpt.data import DataConfig, prepare_data
from microgpt.model.checkpoint_reader import ancestor_id, checkpoint_id
from microgpt.model.finetune import FinetuneConfig, FinetuneTrainer
from microgpt.model.pretrain import RunConfig
from microgpt.pipeline.pretraining import run_pretraining
from microgpt.tokenizer import Tokenizer

WORDS = "the cat sat on a mat while dogs ran far away from home and birds sang over green hills".split()
TINY_MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16}


def documents(seed: int, n: int = 24, words: int = 80) -> list[str]:
    """Pseudo-text: seeded word salad, distinct per seed (so stage 1 and stage 2 differ)."""
    rng = random.Random(seed)
    vocab = WORDS[seed % 5 :] + WORDS[: seed % 5]
    return [" ".join(rng.choice(vocab[: 10 + i % 8]) for _ in range(words)) + "." for i in range(n)]


def quiet_train(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "max_steps": 4,
        "batch_size": 4,
        "warmup_steps": 0,
        "eval_interval": 0,
        "eval_batches": 2,
        "checkpoint_interval": 0,
        "sample_tokens": 0,
        "progress": False,
        "plot": False,
        "device": "cpu",
        "lr": 3e-3,
        "threads": 1,  # tiny models: one thread is as fast, and immune to busy neighbours (TOOLCHAIN.md)
    }
    base.update(changes)
    return base


def make_stage1(root: Path, seed: int = 1) -> Path:
    """A tiny pretrained stage-1 run (BPE with 300 tokens, a one-layer GPT, 4 steps); returns its run dir."""
    config = validate_config(
        RunConfig,
        {
            "out_dir": str(root / "stage1"),
            "seed": seed,
            "tokenizer": {"vocab_size": 300},
            "data": {"sources": [{"type": "text", "texts": documents(0)}], "val_docs": 3, "workers": 1},
            "model": TINY_MODEL,
            "train": quiet_train(),
        },
    )
    run_pretraining(config)
    return root / "stage1"


def make_stage2_data(root: Path, stage1: Path, seed: int = 7) -> Path:
    tokenizer = Tokenizer.from_directory(stage1 / "data" / "tokenizer")
    config = DataConfig(sources=[TextSource(texts=documents(seed))], val_docs=3, test_docs=3, workers=1)
    prepare_data(config, tokenizer, root / "stage2-data")
    return root / "stage2-data"


@pytest.fixture(autouse=True, scope="module")
def _restore_threads() -> Iterator[None]:
    """The trainer sets torch's process-wide thread count; give later tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stage")
    stage1 = make_stage1(root)
    return stage1, make_stage2_data(root, stage1)


def finetune(stage: tuple[Path, Path], out: Path, **train: object) -> FinetuneTrainer:
    stage1, data = stage
    config = FinetuneConfig(
        init_from=stage1,
        data_dir=data,
        out_dir=out,
        train=validate_config(TrainConfig, quiet_train(**{"lr": 1e-3, **train})),
    )
    return FinetuneTrainer(config)


def test_finetune_starts_from_the_parent_and_records_lineage(stage: tuple[Path, Path], tmp_path: Path) -> None:
    stage1, _ = stage
    parent = resolve_checkpoint(stage1)
    trainer = finetune(stage, tmp_path / "ft", max_steps=3)
    model = trainer.build_model()
    trainer.init_weights_from(model)
    for name, tensor in load_weights(parent).items():  # weights only: exactly the parent's at step 0
        torch.testing.assert_close(model.state_dict()[name], tensor)
    result = trainer.fit()
    assert result.step == 3 and result.checkpoint is not None
    assert result.val_loss is not None and math.isfinite(result.val_loss)
    assert result.val_bpb is not None and result.val_bpb > 0
    meta = read_meta(result.checkpoint)
    assert meta["parent"] == checkpoint_id(parent)
    assert meta["ancestor"] == ancestor_id(parent) == checkpoint_id(parent)  # stage 1 is its own root
    assert meta["tokenizer_fingerprint"] == read_meta(parent)["tokenizer_fingerprint"]
    assert (result.checkpoint / "tokenizer").is_dir()
    changed = load_weights(result.checkpoint)
    assert any(not torch.equal(changed[k], v) for k, v in load_weights(parent).items())
    # The optimizer starts fresh: 3 steps of moments, not stage 1's 4 + 3. AdamW keeps `step` as a tensor, so
    # it is stored in optimizer.safetensors ("<opt>.<param>.step"), one per parameter.
    tensors = load_file(str(result.checkpoint / "optimizer.safetensors"))
    steps = [float(t) for name, t in tensors.items() if name.endswith(".step")]
    assert len(steps) == len(list(trainer.build_model().parameters())) and set(steps) == {3.0}
    parent_state = load_file(str(parent / "optimizer.safetensors"))
    parent_steps = {float(t) for name, t in parent_state.items() if name.endswith(".step")}
    assert parent_steps == {4.0}  # the parent's count, which a carried-over optimizer would continue from


def test_finetune_data_seed_changes_the_order(stage: tuple[Path, Path], tmp_path: Path) -> None:
    a = finetune(stage, tmp_path / "a").build_train_loader(4)
    b = FinetuneTrainer(
        finetune(stage, tmp_path / "b").finetune.model_copy(update={"data_seed": 5, "out_dir": tmp_path / "b"})
    ).build_train_loader(4)
    assert not torch.equal(next(a)[0], next(b)[0])


def test_rerun_in_an_out_dir_of_another_finetune_is_refused(stage: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "ft"
    finetune(stage, out, max_steps=2).fit()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(MicrogptError, match=r"holds a fine-tune with other settings \(it differs in train.lr\)"):
        finetune(stage, out, max_steps=2, lr=5e-4)
    other_parent = finetune(stage, tmp_path / "other", max_steps=1).fit().checkpoint
    assert other_parent is not None
    config = finetune(stage, out, max_steps=2).finetune.model_copy(update={"init_from": other_parent})
    with pytest.raises(MicrogptError, match=r"another parent .*delete .*checkpoints to start over"):
        FinetuneTrainer(config)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert finetune(stage, out, max_steps=3).fit().step == 3  # the same fine-tune with more steps resumes


def test_missing_parent_is_a_clear_error(stage: tuple[Path, Path], tmp_path: Path) -> None:
    _, data = stage
    config = FinetuneConfig(init_from=tmp_path / "nope", data_dir=data, out_dir=tmp_path / "ft")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        FinetuneTrainer(config)
    assert not (tmp_path / "ft").exists()


def test_data_from_another_tokenizer_is_refused(stage: tuple[Path, Path], tmp_path: Path) -> None:
    stage1, _ = stage
    other = Tokenizer.train(documents(3), vocab_size=280)
    data = tmp_path / "other"
    prepare_data(DataConfig(sources=[TextSource(texts=documents(3))], val_docs=2, workers=1), other, data)
    config = FinetuneConfig(init_from=stage1, data_dir=data, out_dir=tmp_path / "ft")
    with pytest.raises(MicrogptError, match="not the tokenizer of the parent"):
        FinetuneTrainer(config)


def test_finetune_command_trains_from_a_parent_and_reports_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from microgpt.cli.main import main

    stage1 = make_stage1(tmp_path)
    data = make_stage2_data(tmp_path, stage1)
    config = tmp_path / "finetune.yaml"
    config.write_text(
        f"init_from: {stage1}\ndata_dir: {data}\nout_dir: {tmp_path / 'ft'}\n"
        + "train:\n"
        + "".join(f"  {key}: {value}\n" for key, value in quiet_train(max_steps=3).items())
    )
    with pytest.raises(SystemExit) as done:
        main(["finetune", str(config), "train.lr=1e-3"])
    assert done.value.code in (0, None)
    assert "step 3:" in capsys.readouterr().out
    assert read_meta(resolve_checkpoint(tmp_path / "ft"))["step"] == 3

    with pytest.raises(SystemExit) as failed:
        main(["finetune", str(config), f"init_from={tmp_path / 'missing'}"])
    assert failed.value.code == 1
    assert capsys.readouterr().err.startswith("error: ")
