"""Sharded checkpoints of FSDP runs: written by every rank, read into any world size, consolidated; never pickled.

A sharded step directory holds what a single-folder one holds, except the tensors::

    model-00000-of-00002.safetensors      rank 0's shard of every weight (its rows along dim 0), one file per rank
    optimizer-00000-of-00002.safetensors  rank 0's shard of every optimizer tensor ("<opt>.<param>.<key>")
    shards.json                           for every tensor: its full shape, dtype and the files holding its pieces
    optimizer.json, model_config.json, run_config.yaml, trainer.json, rng.json, tokenizer/, meta.json  (as today)

FSDP2 shards each tensor along dim 0 into ``world_size`` pieces (``torch.chunk``'s split, the last ones possibly
shorter or empty); tensors that are not sharded (AdamW's step counters) are written once, by rank 0. A tensor is
rebuilt by concatenating its pieces in rank order, so a checkpoint written on N ranks loads into M ranks, into one
process, or into today's format (:func:`consolidate`). We write our own safetensors shards plus a JSON index rather
than ``torch.distributed.checkpoint``: its default metadata file is a pickle, which microgpt never reads from a file
a user may have received, and the index stays a few lines of JSON anyone can check.

Loading reads one full tensor at a time on the CPU and copies in this rank's shard, so host memory peaks at the
largest tensor, not the model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from microgpt.common.checkpoint import (
    META,
    CheckpointError,
    _json_bytes,
    _write,
    finish_step_dir,
    load_model_weights,
    load_optimizer_state,
    read_meta,
    step_dir_name,
    verify_checkpoint,
)
from microgpt.common.dist import DistInfo
from microgpt.common.parallel import copy_full_into, is_sharded

SHARDS = "shards.json"


def is_sharded_checkpoint(path: Path) -> bool:
    """True when ``path`` is a sharded step directory (it has ``shards.json``)."""
    return (Path(path) / SHARDS).is_file()


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


# ---- reading -----------------------------------------------------------------------------------------------


class TensorReader:
    """Full tensors of a checkpoint of either kind, read by name (``model/<name>``, ``optimizer/<key>``).

    Args:
        path: A step directory (single-folder or sharded).

    Raises:
        CheckpointError: When an index or a file is missing or unreadable.
    """

    def __init__(self, path: Path) -> None:
        """Read the index (sharded) or the two safetensors files (single-folder)."""
        self.path = Path(path)
        self.meta = read_meta(self.path)
        self.aliases: dict[str, str] = dict(self.meta.get("aliases", {}))
        self._tensors: dict[str, torch.Tensor] | None = None
        self._index: dict[str, dict[str, Any]] = {}
        try:
            if is_sharded_checkpoint(self.path):
                self._index = json.loads((self.path / SHARDS).read_text(encoding="utf-8"))["tensors"]
            else:
                tensors = {f"model/{k}": v for k, v in st_load((self.path / "model.safetensors").read_bytes()).items()}
                optimizer = st_load((self.path / "optimizer.safetensors").read_bytes())
                tensors.update({f"optimizer/{k}": v for k, v in optimizer.items()})
                self._tensors = tensors
        except (OSError, ValueError, KeyError, SafetensorError) as error:
            raise CheckpointError(f"{self.path}: cannot read the checkpoint's tensors: {error}") from None

    def names(self, kind: str) -> list[str]:
        """Names of the stored ``model`` or ``optimizer`` tensors (model aliases included)."""
        source = self._tensors if self._tensors is not None else self._index
        prefix = f"{kind}/"
        found = [k.removeprefix(prefix) for k in source if k.startswith(prefix)]
        return found + (list(self.aliases) if kind == "model" else [])

    def shape(self, kind: str, name: str) -> tuple[int, ...]:
        """Full shape of a stored tensor."""
        key = f"{kind}/{self.aliases.get(name, name) if kind == 'model' else name}"
        if self._tensors is not None:
            return tuple(self._tensors[key].shape)
        return tuple(self._index[key]["shape"])

    def read(self, kind: str, name: str) -> torch.Tensor:
        """The full tensor on the CPU (its pieces concatenated along dim 0 for a sharded checkpoint)."""
        stored = self.aliases.get(name, name) if kind == "model" else name
        key = f"{kind}/{stored}"
        if self._tensors is not None:
            return self._tensors[key]
        entry = self._index[key]
        pieces = []
        try:
            for file in entry["pieces"]:
                with safe_open(str(self.path / file), framework="pt") as handle:
                    pieces.append(handle.get_tensor(stored))
        except (OSError, SafetensorError) as error:
            raise CheckpointError(f"{self.path}: cannot read {stored}: {error}") from None
        full = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
        if list(full.shape) != entry["shape"]:
            raise CheckpointError(f"{self.path}: the pieces of {stored} make {list(full.shape)}, not {entry['shape']}")
        return full


def load_model_state(model: nn.Module, path: Path) -> None:
    """Load a checkpoint's weights (single-folder or sharded) into a plain or an FSDP-sharded model.

    Raises:
        CheckpointError: One line naming the first missing, unexpected or wrongly shaped tensor.
    """
    expected = model.state_dict(keep_vars=True)
    if not is_sharded_checkpoint(path) and not any(is_sharded(t) for t in expected.values()):
        load_model_weights(model, path)  # today's path, unchanged
        return
    reader = TensorReader(path)
    stored = set(reader.names("model"))
    missing = sorted(set(expected) - stored)
    unexpected = sorted(stored - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' …' if len(unexpected) > 3 else ''}")
        raise CheckpointError(f"{path}: weights do not match the model config: {'; '.join(parts)}")
    for name, tensor in expected.items():
        if reader.shape("model", name) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: weights do not match the model config: {name} has shape {reader.shape('model', name)}, "
                f"the model expects {tuple(tensor.shape)}"
            )
    done: set[int] = set()
    for name, tensor in expected.items():
        if id(tensor) not in done:  # a tied matrix once
            done.add(id(tensor))
            copy_full_into(tensor, reader.read("model", name).to(tensor.dtype))


def load_optimizer_states(optimizers: Sequence[torch.optim.Optimizer], path: Path) -> None:
    """Restore optimizer state from a checkpoint of either kind into optimizers of a plain or sharded model.

    Raises:
        CheckpointError: When the number or type of optimizers, or their tensors' shapes, differ.
    """
    params = [p for opt in optimizers for group in opt.param_groups for p in group["params"]]
    if not is_sharded_checkpoint(path) and not any(is_sharded(p) for p in params):
        load_optimizer_state(optimizers, path)  # today's path, unchanged
        return
    try:
        described = json.loads((path / "optimizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot read the optimizer state: {error}") from None
    if len(described) != len(optimizers):
        raise CheckpointError(f"{path}: holds {len(described)} optimizer(s), the run builds {len(optimizers)}")
    reader = TensorReader(path)
    stored = reader.names("optimizer")
    for number, (opt, saved) in enumerate(zip(optimizers, described, strict=True)):
        if saved["type"] != type(opt).__name__:
            raise CheckpointError(f"{path}: optimizer {number} is {saved['type']}, the run builds {type(opt).__name__}")
        own = [p for group in opt.param_groups for p in group["params"]]
        state: dict[int, dict[str, Any]] = {int(pid): dict(values) for pid, values in saved["state"].items()}
        for name in stored:
            index, pid, key = name.split(".", 2)
            if int(index) != number:
                continue
            if int(pid) >= len(own):
                raise CheckpointError(f"{path}: optimizer {number} has state for parameter {pid}, the run has fewer")
            param, full = own[int(pid)], reader.read("optimizer", name)
            if is_sharded(param) and tuple(full.shape) == tuple(param.shape):
                from torch.distributed.tensor import distribute_tensor

                value: torch.Tensor = distribute_tensor(
                    full.to(param.device), param.device_mesh, param.placements, src_data_rank=None
                )
            elif full.ndim and tuple(full.shape) != tuple(param.shape):
                raise CheckpointError(
                    f"{path}: optimizer {number} state {key} of parameter {pid} has shape {tuple(full.shape)}, "
                    f"the parameter {tuple(param.shape)}: the model shape changed"
                )
            else:
                value = full
            state.setdefault(int(pid), {})[key] = value
        groups = []
        for group in saved["param_groups"]:
            group = dict(group)
            if isinstance(group.get("betas"), list):
                group["betas"] = tuple(group["betas"])
            groups.append(group)
        try:
            opt.load_state_dict({"state": state, "param_groups": groups})
        except (ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"{path}: optimizer {number} does not fit the model: {error}") from None


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
