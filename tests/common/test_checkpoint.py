"""Checkpoint step directories: round trips, tied weights, corruption, full disk, pruning, schedules, Muon."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from microgpt.common.checkpoint import (
    CheckpointError,
    CheckpointWriter,
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    resolve_checkpoint,
    restore_rng_state,
)
from microgpt.common.checkpoint_load import load_model_weights, load_optimizer_state
from microgpt.common.optim import build_optimizers, orthogonalize
from microgpt.common.schedule import lr_multiplier
from microgpt.model.config import GPTConfig
from microgpt.model.gpt import GPT


def _model(**options: object) -> GPT:
    return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=40, **options))  # type: ignore[arg-type]


def _train_once(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
    x = torch.randint(0, 40, (2, 8))
    _, loss = model(x, x)
    loss.backward()
    for opt in optimizers:
        opt.step()
        opt.zero_grad()


def _save(
    writer: CheckpointWriter, step: int, model: nn.Module, optimizers: list[torch.optim.Optimizer], **meta: object
) -> Path:
    return writer.save(
        step,
        model=model,
        optimizers=optimizers,
        model_config={"n_layer": 1},
        run_config_yaml="seed: 1\n",
        trainer_state={"step": step},
        rng_states=[capture_rng_state()],
        meta=meta,
    )


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_weights_and_optimizer_round_trip(tmp_path: Path, optimizer: str) -> None:
    torch.manual_seed(0)
    model = _model()
    optimizers = build_optimizers(model, optimizer=optimizer)  # type: ignore[arg-type]
    _train_once(model, optimizers)
    path = _save(CheckpointWriter(tmp_path), 1, model, optimizers)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["aliases"] == {"lm_head.weight": "wte.weight"}  # the tied matrix is stored once
    clone = _model()
    clone_opts = build_optimizers(clone, optimizer=optimizer)  # type: ignore[arg-type]
    load_model_weights(clone, path)
    load_optimizer_state(clone_opts, path)
    assert clone.lm_head.weight is clone.wte.weight
    for a, b in zip(model.state_dict().values(), clone.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(1)
    _train_once(model, optimizers)
    torch.manual_seed(1)
    _train_once(clone, clone_opts)  # the same next step, bit for bit
    for a, b in zip(model.state_dict().values(), clone.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    model = _model()
    path = _save(CheckpointWriter(tmp_path), 1, model, build_optimizers(model))
    with pytest.raises(
        CheckpointError,
        match=r"do not match the model config: wte.weight has shape \(64, 16\), the model expects \(64, 32\)",
    ):
        load_model_weights(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=40)), path)
    with pytest.raises(CheckpointError, match="missing h.1"):
        load_model_weights(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=40)), path)


def test_rng_state_round_trip() -> None:
    state = json.loads(json.dumps(capture_rng_state()))  # must survive JSON
    first = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    restore_rng_state(state)
    again = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]


def test_corruption_is_detected_and_older_offered(tmp_path: Path) -> None:
    model = _model()
    opts = build_optimizers(model)
    writer = CheckpointWriter(tmp_path, keep_last=0)
    for step in (1, 2):
        _save(writer, step, model, opts)
    assert resolve_checkpoint(tmp_path).name == "step-0000002"
    (tmp_path / "step-0000002" / "optimizer.json").write_text("[]")
    with pytest.raises(
        CheckpointError, match=r"optimizer.json is corrupt.*next-older good checkpoint is .*step-0000001"
    ):
        latest_checkpoint(tmp_path)
    (tmp_path / "step-0000002" / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve_checkpoint(tmp_path / "step-0000002")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        resolve_checkpoint(tmp_path / "nowhere")


def test_full_disk_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    model = _model()
    opts = build_optimizers(model)
    writer = CheckpointWriter(tmp_path)
    _save(writer, 1, model, opts)

    def full_disk(directory: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointError, match="out of disk space; the previous checkpoint step-0000001 is intact"):
        writer.save(
            2,
            model=model,
            optimizers=opts,
            model_config={},
            run_config_yaml="",
            trainer_state={},
            rng_states=[],
            meta={},
            write_extra=full_disk,
        )
    assert [p.name for p in tmp_path.iterdir()] == ["step-0000001"]  # no temporary left behind
    assert latest_checkpoint(tmp_path) == tmp_path / "step-0000001"


def test_resaving_a_step_keeps_the_old_one_until_the_new_one_is_complete(tmp_path: Path) -> None:
    model = _model()
    opts = build_optimizers(model)
    writer = CheckpointWriter(tmp_path, keep_last=0)
    old = _save(writer, 3, model, opts, val_loss=1.0)
    before = {p.name: p.read_bytes() for p in old.iterdir()}

    def fail_midway(directory: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(CheckpointError, match=r"Input/output error; the previous checkpoint step-0000003 is intact"):
        writer.save(
            3,
            model=model,
            optimizers=opts,
            model_config={},
            run_config_yaml="",
            trainer_state={},
            rng_states=[],
            meta={},
            write_extra=fail_midway,
        )
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before  # the old step, byte for byte
    assert [p.name for p in tmp_path.iterdir()] == ["step-0000003"]  # no temporary left behind
    _train_once(model, opts)
    again = _save(writer, 3, model, opts, val_loss=0.5)  # a successful re-save replaces it whole
    assert again == old and json.loads((again / "meta.json").read_text())["val_loss"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["step-0000003"]


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ([1, 2], "meta.json holds a JSON list, not an object"),
        ({"format": "microgpt-checkpoint", "version": 1}, "meta.json has no 'files' index"),
        ({"format": "microgpt-checkpoint", "version": 1, "files": ["model.safetensors"]}, "no 'files' index"),
        ({"format": "microgpt-checkpoint", "version": "one", "files": {}}, "'version' is not a number"),
    ],
)
def test_malformed_meta_json_is_a_clear_error(tmp_path: Path, meta: object, message: str) -> None:
    step = _save(CheckpointWriter(tmp_path), 1, _model(), [])
    (step / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        resolve_checkpoint(step)
    with pytest.raises(CheckpointError, match=message):
        latest_checkpoint(tmp_path)


def test_prune_keeps_last_n_and_the_best(tmp_path: Path) -> None:
    model = _model()
    opts = build_optimizers(model)
    writer = CheckpointWriter(tmp_path, keep_last=2, keep_best=True)
    for step, val in ((1, 3.0), (2, 1.0), (3, 2.0), (4, None), (5, 2.5)):
        _save(writer, step, model, opts, val_loss=val)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000002", "step-0000004", "step-0000005"]


def test_schedules() -> None:
    kw = {"max_steps": 100, "warmup_steps": 10, "min_lr_ratio": 0.1}
    assert lr_multiplier(4, **kw) == pytest.approx(0.5)  # type: ignore[arg-type]
    assert lr_multiplier(10, **kw) == pytest.approx(1.0)  # type: ignore[arg-type]
    assert lr_multiplier(55, **kw) == pytest.approx(0.55)  # type: ignore[arg-type]  # cosine midpoint
    assert lr_multiplier(55, schedule="linear", **kw) == pytest.approx(0.55)  # type: ignore[arg-type]
    assert lr_multiplier(70, schedule="wsd", decay_fraction=0.2, **kw) == 1.0  # type: ignore[arg-type]
    assert lr_multiplier(90, schedule="wsd", decay_fraction=0.2, **kw) == pytest.approx(0.55)  # type: ignore[arg-type]
    assert lr_multiplier(100, schedule="wsd", decay_fraction=0.2, **kw) == pytest.approx(0.1)  # type: ignore[arg-type]
    values = [lr_multiplier(s, **kw) for s in range(10, 101)]  # type: ignore[arg-type]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_orthogonalize_pushes_singular_values_toward_one() -> None:
    torch.manual_seed(0)
    grad = torch.randn(32, 96) * torch.logspace(-3, 0, 96)  # badly conditioned
    singular = torch.linalg.svdvals(orthogonalize(grad))
    assert singular.min() > 0.5 and singular.max() < 1.3
    tall = orthogonalize(torch.randn(96, 32))
    assert tall.shape == (96, 32)


def test_adamw_groups_and_muon_split() -> None:
    model = _model()
    (adamw,) = build_optimizers(model)
    decay, no_decay = adamw.param_groups
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0
    adamw2, muon = build_optimizers(model, optimizer="muon")
    muon_ids = {id(p) for p in muon.param_groups[0]["params"]}
    assert id(model.wte.weight) not in muon_ids and muon_ids  # embeddings/head stay on AdamW
    # Every parameter is trained by exactly one optimizer: none twice, none forgotten.
    adamw_ids = [id(p) for group in adamw2.param_groups for p in group["params"]]
    assert not set(adamw_ids) & muon_ids and len(adamw_ids) == len(set(adamw_ids))
    assert set(adamw_ids) | muon_ids == {id(p) for p in model.parameters()}
