"""Sharded checkpoints of FSDP runs: written by every rank, consolidated into one folder; never pickled.

A sharded step directory holds what a single-folder one holds, except the tensors::

    model-00000-of-00002.safetensors      rank 0's shard of every weight (its rows along dim 0), one file per rank
    optimizer-00000-of-00002.safetensors  rank 0's shard of every optimizer tensor ("<opt>.<param>.<key>")
    shards.json                           for every tensor: its full shape, dtype and the files holding its pieces
    optimizer.json, model_config.json, run_config.yaml, trainer.json, rng.json, tokenizer/, meta.json  (as today)

FSDP2 shards each tensor along dim 0 into ``world_size`` pieces (``torch.chunk``'s split, the last ones possibly
shorter or empty); tensors that are not sharded (AdamW's step counters) are written once, by rank 0. A tensor is
rebuilt by concatenating its pieces in rank order, so a checkpoint written on N ranks loads into M ranks or into one
process (:mod:`microgpt.common.checkpoint_load` reads both kinds), or becomes today's format (:func:`consolidate`).
We write our own safetensors shards plus a JSON index rather than ``torch.distributed.checkpoint``: its default
metadata file is a pickle, which microgpt never reads from a file a user may have received, and the index stays a
few lines of JSON anyone can check.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from safetensors.torch import save as st_save
from torch import nn

from microgpt.common.checkpoint import (
    META,
    CheckpointError,
    _json_bytes,
    _write,
    finish_step_dir,
    step_dir_name,
    verify_checkpoint,
)
from microgpt.common.checkpoint_load import SHARDS, TensorReader, is_sharded_checkpoint
from microgpt.common.dist import DistInfo
from microgpt.common.parallel import is_sharded

# ---- writing -----------------------------------------------------------------------------------------------


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's piece of ``tensor`` (its local shard if sharded), detached, contiguous, on the CPU."""
    if is_sharded(tensor):
        from torch.distributed.tensor import DTensor, Shard

        assert isinstance(tensor, DTensor)
        assert tuple(tensor.placements) == (Shard(0),), f"only dim-0 sharding is saved, got {tensor.placements}"
        tensor = tensor.to_local()
    return tensor.detach().contiguous().cpu()


def _unique_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's state (parameters and persistent buffers) with tied tensors once, and alias → kept name."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[int, str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            aliases[name] = seen[id(tensor)]
            continue
        seen[id(tensor)] = name
        unique[name] = tensor
    return unique, aliases


def save_sharded(
    root: Path,
    step: int,
    *,
    dist: DistInfo,
    model: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    model_config: Mapping[str, Any],
    run_config_yaml: str,
    trainer_state: Mapping[str, Any],
    rng_states: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write the sharded checkpoint of ``step`` (every rank calls this; rank 0 writes the shared files).

    The directory is filled under a temporary name and renamed by rank 0 when every rank has written its shards.

    Returns:
        The step directory.

    Raises:
        CheckpointError: On every rank, when any rank's write fails; earlier checkpoints are untouched.
    """
    world = dist.world_size
    target = root / step_dir_name(step)
    box: list[Any] = [None]
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        box[0] = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=root)
    if dist.is_distributed:
        torch_dist.broadcast_object_list(box, src=0)
    tmp = Path(box[0])
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():  # the root stays gathered after a forward without backward (eval, sampling)
        if isinstance(module, FSDPModule):
            module.reshard()
    unique, aliases = _unique_state(model)
    model_file = f"model-{dist.rank:05d}-of-{world:05d}.safetensors"
    opt_file = f"optimizer-{dist.rank:05d}-of-{world:05d}.safetensors"
    index: dict[str, dict[str, Any]] = {}
    model_tensors: dict[str, torch.Tensor] = {}
    for name, tensor in unique.items():
        if is_sharded(tensor) or dist.is_main:
            model_tensors[name] = _local(tensor)
        index[f"model/{name}"] = _describe(tensor, model_file, world)
    opt_tensors: dict[str, torch.Tensor] = {}
    described: list[dict[str, Any]] = []
    for number, opt in enumerate(optimizers):
        state = opt.state_dict()
        plain: dict[str, dict[str, Any]] = {}
        for pid, values in state["state"].items():
            plain[str(pid)] = {}
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    name = f"{number}.{pid}.{key}"
                    if is_sharded(value) or dist.is_main:
                        opt_tensors[name] = _local(value)
                    index[f"optimizer/{name}"] = _describe(value, opt_file, world)
                else:
                    plain[str(pid)][key] = value
        described.append({"type": type(opt).__name__, "state": plain, "param_groups": state["param_groups"]})
    outcome: dict[str, str] | str
    try:
        outcome = {
            model_file: _write(tmp / model_file, st_save(model_tensors)),
            opt_file: _write(tmp / opt_file, st_save(opt_tensors)),
        }
    except OSError as error:
        outcome = f"rank {dist.rank}: {error}"
    outcomes: list[Any] = [outcome]
    if dist.is_distributed:
        outcomes = [None] * world
        torch_dist.all_gather_object(outcomes, outcome)
    failed = [o for o in outcomes if isinstance(o, str)]
    error_text: list[Any] = [None]
    if dist.is_main:
        try:
            if failed:
                raise OSError("; ".join(failed))
            files: dict[str, str] = {}
            for part in outcomes:
                files.update(part)
            files[SHARDS] = _write(tmp / SHARDS, _json_bytes({"world_size": world, "tensors": index}))
            files["optimizer.json"] = _write(tmp / "optimizer.json", _json_bytes(described))
            finish_step_dir(
                tmp,
                files,
                step=step,
                model_config=model_config,
                run_config_yaml=run_config_yaml,
                trainer_state=trainer_state,
                rng_states=rng_states,
                meta={**meta, "aliases": aliases, "sharded": {"world_size": world}},
                write_extra=write_extra,
            )
            _replace_dir(tmp, target)
        except OSError as error:
            shutil.rmtree(tmp, ignore_errors=True)
            error_text[0] = f"cannot save checkpoint {target.name}: {error}"
    if dist.is_distributed:
        torch_dist.broadcast_object_list(error_text, src=0)
    if error_text[0] is not None:
        raise CheckpointError(str(error_text[0]))
    return target


def _describe(tensor: torch.Tensor, file: str, world: int) -> dict[str, Any]:
    """Index entry of a tensor: full shape, dtype, and its pieces (rank order) as file names."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    if is_sharded(tensor):
        stem = file.rsplit("-", 3)[0]  # "model" or "optimizer"
        pieces = [f"{stem}-{rank:05d}-of-{world:05d}.safetensors" for rank in range(world)]
    else:
        pieces = [f"{file.rsplit('-', 3)[0]}-00000-of-{world:05d}.safetensors"]  # written once, by rank 0
    return {"shape": list(tensor.shape), "dtype": dtype, "pieces": pieces}


def _replace_dir(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is moved aside first and deleted after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---- consolidation -----------------------------------------------------------------------------------------


def consolidate(path: Path, out: Path) -> Path:
    """Write a sharded checkpoint as today's single-folder checkpoint (for export, soups, sampling, DDP).

    Args:
        path: A sharded step directory (verified first).
        out: The new step directory (must not exist; written under a temporary name and renamed).

    Returns:
        ``out``.

    Raises:
        CheckpointError: When ``path`` is not a sharded checkpoint, is corrupt, or ``out`` exists.
    """
    path, out = Path(path), Path(out)
    meta = verify_checkpoint(path)
    if not is_sharded_checkpoint(path):
        raise CheckpointError(f"{path} is already a single-folder checkpoint: nothing to consolidate")
    if out.exists():
        raise CheckpointError(f"{out} already exists: pick a new folder for the consolidated checkpoint")
    reader = TensorReader(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        files: dict[str, str] = {}
        model = {name: reader.read("model", name) for name in reader.names("model") if name not in reader.aliases}
        files["model.safetensors"] = _write(tmp / "model.safetensors", st_save(model))
        del model
        optimizer = {name: reader.read("optimizer", name) for name in reader.names("optimizer")}
        files["optimizer.safetensors"] = _write(tmp / "optimizer.safetensors", st_save(optimizer))
        del optimizer
        for name, digest in meta["files"].items():
            if name == SHARDS or name.startswith(("model-", "optimizer-")) and name.endswith(".safetensors"):
                continue
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path / name, tmp / name)
            files[name] = digest
        record = {k: v for k, v in meta.items() if k not in ("sharded", "files")}
        record.update({"consolidated_from": str(path), "files": files})
        _write(tmp / META, _json_bytes(record))
        os.replace(tmp, out)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write {out}: {error}") from None
    return out
