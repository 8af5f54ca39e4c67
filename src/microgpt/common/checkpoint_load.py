"""Loading a checkpoint's tensors back: weights into a model, saved state into its optimizers.

Both kinds of step directory are read here: the single-folder one of :mod:`microgpt.common.checkpoint` and the
sharded one of :mod:`microgpt.common.sharded`, into a plain or an FSDP-sharded model. Names and shapes must match
the model exactly; a mismatch is one line naming the first tensor that differs.

A sharded checkpoint is read one full tensor at a time on the CPU, of which each rank copies in its own shard, so
host memory peaks at the largest tensor, not the model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from torch import nn

from microgpt.common.checkpoint import META, CheckpointError, read_meta
from microgpt.common.parallel import copy_full_into, is_sharded

SHARDS = "shards.json"  # the index of a sharded checkpoint's tensors (see microgpt.common.sharded)


def is_sharded_checkpoint(path: Path) -> bool:
    """True when ``path`` is a sharded step directory (it has ``shards.json``)."""
    return (Path(path) / SHARDS).is_file()


# ---- single-folder checkpoints -----------------------------------------------------------------------------


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint's weights (aliases restored) onto the CPU.

    Raises:
        CheckpointError: When the file is missing or not valid safetensors.
    """
    meta = read_meta(path)
    if (path / "shards.json").is_file():  # a sharded (FSDP) checkpoint: its pieces, concatenated
        reader = TensorReader(path)
        return {name: reader.read("model", name) for name in reader.names("model")}
    try:
        tensors = st_load((path / "model.safetensors").read_bytes())
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"{path}: cannot read model.safetensors: {error}") from None
    aliases = meta.get("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(n, str) and n in tensors for n in aliases.values()):
        raise CheckpointError(f"{path}: {META} 'aliases' does not name tensors of model.safetensors")
    for alias, name in aliases.items():
        tensors[alias] = tensors[name]
    return tensors


def refuse_other_names(path: Path, expected: Iterable[str], stored: Iterable[str]) -> None:
    """Refuse a checkpoint whose weight names are not the model's, naming the first few either way.

    Raises:
        CheckpointError: ``weights do not match the model config: missing …; unexpected …``.
    """
    expected, stored = set(expected), set(stored)
    missing, unexpected = sorted(expected - stored), sorted(stored - expected)
    if not (missing or unexpected):
        return
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
    if unexpected:
        parts.append(f"unexpected {', '.join(unexpected[:3])}{' …' if len(unexpected) > 3 else ''}")
    raise CheckpointError(f"{path}: weights do not match the model config: {'; '.join(parts)}")


def load_model_weights(model: nn.Module, path: Path) -> None:
    """Load a checkpoint's weights into ``model``; every name and shape must match.

    Raises:
        CheckpointError: Naming the first missing, unexpected or wrongly shaped tensor.
    """
    if any(type(p).__name__ == "DTensor" for p in model.parameters()):  # an FSDP-sharded model
        load_model_state(model, path)
        return
    tensors = load_weights(path)
    expected = model.state_dict()
    refuse_other_names(path, expected, tensors)
    for name in expected:  # the model's own order, so the first mismatch named is the first layer's
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{path}: weights do not match the model config: {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(expected[name].shape)}"
            )
    model.load_state_dict(tensors, strict=True)


def load_optimizer_state(optimizers: Sequence[torch.optim.Optimizer], path: Path) -> None:
    """Restore the state :func:`~microgpt.common.checkpoint.optimizer_state_to_files` saved into new optimizers.

    Raises:
        CheckpointError: When the number or type of optimizers or their parameter groups differ.
    """
    try:
        described = json.loads((path / "optimizer.json").read_text(encoding="utf-8"))
        tensors = st_load((path / "optimizer.safetensors").read_bytes())
    except (OSError, ValueError, SafetensorError) as error:
        raise CheckpointError(f"{path}: cannot read the optimizer state: {error}") from None
    if len(described) != len(optimizers):
        raise CheckpointError(f"{path}: holds {len(described)} optimizer(s), the run builds {len(optimizers)}")
    for index, (opt, saved) in enumerate(zip(optimizers, described, strict=True)):
        if saved["type"] != type(opt).__name__:
            raise CheckpointError(f"{path}: optimizer {index} is {saved['type']}, the run builds {type(opt).__name__}")
        state: dict[int, dict[str, Any]] = {int(pid): dict(values) for pid, values in saved["state"].items()}
        prefix = f"{index}."
        for name, tensor in tensors.items():
            if name.startswith(prefix):
                _, pid, key = name.split(".", 2)
                state.setdefault(int(pid), {})[key] = tensor
        groups = []
        for group in saved["param_groups"]:
            group = dict(group)
            if isinstance(group.get("betas"), list):  # JSON has no tuples; AdamW expects one
                group["betas"] = tuple(group["betas"])
            groups.append(group)
        try:
            opt.load_state_dict({"state": state, "param_groups": groups})
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"{path}: optimizer {index} does not fit the model: {error}") from None


# ---- either kind -------------------------------------------------------------------------------------------


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
    refuse_other_names(path, expected, reader.names("model"))
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
