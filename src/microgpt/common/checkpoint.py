"""Self-describing checkpoint step directories, written atomically, verified on read, pruned by policy.

Layout of ``out_dir/checkpoints/step-0000100/``::

    model.safetensors      weights, the unwrapped module's names (tied tensors stored once, see meta.aliases)
    model_config.json      the model config
    run_config.yaml        the whole run config
    optimizer.safetensors  every optimizer's tensors ("<opt>.<param>.<key>")
    optimizer.json         the rest of each optimizer's state and its param_groups
    trainer.json           loop state: step, tokens, best val loss, data-loader state per rank
    rng.json               Python, NumPy and torch RNG states, per rank
    tokenizer/             (written by the pretraining trainer)
    meta.json              written last: step, tokens, val loss, parent, tokenizer fingerprint, sha256 per file

The directory is filled under a temporary name and renamed when complete, so a crash or a full disk never
leaves a half checkpoint under a real name; the sha256 index in ``meta.json`` catches later corruption.
Nothing is ever unpickled: tensors are safetensors, the rest JSON. Reading the weights and optimizer state back
is :mod:`microgpt.common.checkpoint_load`; FSDP runs write sharded step directories (:mod:`microgpt.common.sharded`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as st_save
from torch import nn

from microgpt.common.atomic import atomic_directory
from microgpt.common.errors import MicrogptError
from microgpt.common.log import get_logger

log = get_logger(__name__)

FORMAT = "microgpt-checkpoint"
VERSION = 1
META = "meta.json"
TOKENIZER_DIR = "tokenizer"  # the tokenizer beside a checkpoint's weights, and beside prepared shards
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(MicrogptError):
    """A checkpoint is missing, corrupt, truncated or does not fit the model."""


def step_dir_name(step: int) -> str:
    """The directory name of the checkpoint at ``step`` (``step-0000100``)."""
    return f"step-{step:07d}"


def _write(path: Path, data: bytes) -> str:
    """Write and fsync ``data`` to ``path``; return its sha256 (computed from memory, not re-read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return hashlib.sha256(data).hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode("utf-8")


def _sha256_path(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- weights and optimizer state, as written (read back by checkpoint_load.py) -----------------------------


def split_shared(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop tensors that alias an earlier one (tied embeddings); return (unique tensors, alias → kept name).

    safetensors refuses shared storage, and storing a tied matrix twice would double the file.
    """
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()), tuple(tensor.shape), tensor.stride())
        if tensor.numel() > 0 and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        unique[name] = tensor.detach().contiguous().cpu()
    return unique, aliases


def weights_to_bytes(model: nn.Module) -> tuple[bytes, dict[str, str]]:
    """Serialise ``model.state_dict()`` (unwrapped names) to safetensors bytes plus the alias map."""
    unique, aliases = split_shared(model.state_dict())
    return st_save(unique), aliases


def optimizer_state_to_files(optimizers: Sequence[torch.optim.Optimizer]) -> tuple[bytes, bytes]:
    """Split the optimizers' state into safetensors bytes (tensors) and JSON bytes (everything else)."""
    tensors: dict[str, torch.Tensor] = {}
    described: list[dict[str, Any]] = []
    for index, opt in enumerate(optimizers):
        state = opt.state_dict()
        plain: dict[str, dict[str, Any]] = {}
        for pid, values in state["state"].items():
            plain[str(pid)] = {}
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{index}.{pid}.{key}"] = value.detach().contiguous().cpu()
                else:
                    plain[str(pid)][key] = value
        described.append({"type": type(opt).__name__, "state": plain, "param_groups": state["param_groups"]})
    return st_save(tensors) if tensors else st_save({}), _json_bytes(described)


# ---- RNG state ---------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """Return this process's Python, NumPy and torch (CPU and CUDA) RNG states as JSON-able data."""
    np_state = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],  # type: ignore[index]  # legacy tuple form
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore RNG states captured by :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ---- reading and finding checkpoints -----------------------------------------------------------------------


def read_meta(path: Path) -> dict[str, Any]:
    """Read ``meta.json`` of a step directory.

    Raises:
        CheckpointError: When it is missing or not a microgpt checkpoint.
    """
    try:
        meta: dict[str, Any] = json.loads((path / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a complete checkpoint (no {META})") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable {META}: {error}") from None
    if not isinstance(meta, dict):
        kind = type(meta).__name__
        raise CheckpointError(f"{path}: {META} holds a JSON {kind}, not an object: the checkpoint is corrupt")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: {META} is not a microgpt checkpoint")
    version = meta.get("version", 0)
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: {META} 'version' is not a number: the checkpoint is corrupt")
    if version > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version} is newer than this microgpt")
    return meta


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check every file of a step directory against the sha256 index in its ``meta.json``; return the meta.

    Raises:
        CheckpointError: On a missing, truncated or altered file.
    """
    meta = read_meta(path)
    files = meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise CheckpointError(f"{path}: {META} has no 'files' index of sha256 digests: the checkpoint is corrupt")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if _sha256_path(file) != expected:
            raise CheckpointError(f"{path}: {name} is corrupt or truncated (sha256 mismatch)")
    return meta


def list_checkpoints(root: Path) -> list[Path]:
    """Step directories under ``root`` (complete or not; temporary ones excluded), oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path, *, verify: bool = True) -> Path | None:
    """The newest complete checkpoint under ``root``, or None when there is none.

    Raises:
        CheckpointError: When the newest one is corrupt: the message names the next-older good one, and
            nothing is deleted (a person decides).
    """
    candidates = list_checkpoints(root)
    for position in range(len(candidates) - 1, -1, -1):
        path = candidates[position]
        try:
            if verify:
                verify_checkpoint(path)
            else:
                read_meta(path)
            return path
        except CheckpointError as error:
            older = next((p for p in reversed(candidates[:position]) if _is_good(p)), None)
            hint = ""
            if older is not None:
                hint = f"; the next-older good checkpoint is {older} — delete {path.name} to resume from it"
            raise CheckpointError(f"{error}{hint}") from None
    return None


def _is_good(path: Path) -> bool:
    try:
        verify_checkpoint(path)
    except CheckpointError:
        return False
    return True


def resolve_checkpoint(path: str | Path) -> Path:
    """Turn a step directory or a run directory (meaning its latest complete checkpoint) into a step directory.

    Raises:
        CheckpointError: When ``path`` holds no checkpoint, or the newest one is corrupt.
    """
    path = Path(path)
    if (path / META).is_file() or (path.is_dir() and _STEP_DIR.match(path.name)):
        verify_checkpoint(path)  # a step directory without meta.json is an incomplete one: say so
        return path
    for root in (path / "checkpoints", path):
        if list_checkpoints(root):
            found = latest_checkpoint(root)
            if found is not None:
                return found
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    raise CheckpointError(f"{path}: no checkpoint here (expected a step directory or a run directory)")


def finish_step_dir(
    tmp: Path,
    files: dict[str, str],
    *,
    step: int,
    model_config: Mapping[str, Any],
    run_config_yaml: str,
    trainer_state: Mapping[str, Any],
    rng_states: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    write_extra: Callable[[Path], None] | None = None,
) -> None:
    """Write what every checkpoint kind shares into ``tmp``, then ``meta.json`` last with a sha256 per file.

    Args:
        tmp: The step directory being written (renamed into place by the caller).
        files: File name → sha256 of what the caller already wrote (weights, optimizer state); completed here.
        step: Optimizer steps taken so far.
        model_config: The model config as JSON data.
        run_config_yaml: The run config as YAML text.
        trainer_state: Loop state (JSON-able).
        rng_states: RNG state of every rank, rank 0 first.
        meta: Extra fields for ``meta.json``.
        write_extra: Called with ``tmp`` to add files (e.g. the tokenizer); their hashes are recorded too.
    """
    files["model_config.json"] = _write(tmp / "model_config.json", _json_bytes(dict(model_config)))
    files["run_config.yaml"] = _write(tmp / "run_config.yaml", run_config_yaml.encode("utf-8"))
    files["trainer.json"] = _write(tmp / "trainer.json", _json_bytes(dict(trainer_state)))
    files["rng.json"] = _write(tmp / "rng.json", _json_bytes([dict(s) for s in rng_states]))
    if write_extra is not None:
        write_extra(tmp)
        for extra in sorted(tmp.rglob("*")):
            name = extra.relative_to(tmp).as_posix()
            if extra.is_file() and name not in files:
                files[name] = _sha256_path(extra)
    record = {"format": FORMAT, "version": VERSION, "step": step, "created": time.time(), **meta, "files": files}
    _write(tmp / META, _json_bytes(record))


# ---- writing -----------------------------------------------------------------------------------------------


@dataclass
class CheckpointWriter:
    """Writes step directories under ``root`` and prunes old ones (keep the last N and the best).

    Attributes:
        root: The folder of step directories (``out_dir/checkpoints``).
        keep_last: How many of the newest checkpoints to keep (0 keeps all).
        keep_best: Also keep the checkpoint with the lowest validation loss.
    """

    root: Path
    keep_last: int = 2
    keep_best: bool = True

    def save(
        self,
        step: int,
        *,
        model: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        model_config: Mapping[str, Any],
        run_config_yaml: str,
        trainer_state: Mapping[str, Any],
        rng_states: Sequence[Mapping[str, Any]],
        meta: Mapping[str, Any],
        write_extra: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write the checkpoint of ``step`` atomically and prune; return its directory.

        Args:
            step: Optimizer steps taken so far.
            model: The unwrapped model.
            optimizers: Its optimizers.
            model_config: The model config as JSON data.
            run_config_yaml: The run config as YAML text.
            trainer_state: Loop state (JSON-able).
            rng_states: RNG state of every rank, rank 0 first.
            meta: Extra fields for ``meta.json`` (tokens, val_loss, best_val_loss, parent, tokenizer_fingerprint).
            write_extra: Called with the temporary directory to add files (e.g. the tokenizer).

        Raises:
            CheckpointError: When the disk is full or the write fails; the previous checkpoints are untouched.
        """
        target = self.root / step_dir_name(step)
        try:
            # An existing step (re-saving the final step on a rerun, a re-import) stays whole until the new one
            # is complete and renamed in: a failure mid-write keeps the old checkpoint.
            with atomic_directory(target, replace=True) as tmp:
                files: dict[str, str] = {}
                weights, aliases = weights_to_bytes(model)
                files["model.safetensors"] = _write(tmp / "model.safetensors", weights)
                opt_tensors, opt_json = optimizer_state_to_files(optimizers)
                files["optimizer.safetensors"] = _write(tmp / "optimizer.safetensors", opt_tensors)
                files["optimizer.json"] = _write(tmp / "optimizer.json", opt_json)
                finish_step_dir(
                    tmp,
                    files,
                    step=step,
                    model_config=model_config,
                    run_config_yaml=run_config_yaml,
                    trainer_state=trainer_state,
                    rng_states=rng_states,
                    meta={**meta, "aliases": aliases},
                    write_extra=write_extra,
                )
        except OSError as error:
            reason = "out of disk space" if error.errno == errno.ENOSPC else str(error)
            previous = list_checkpoints(self.root)
            kept = f"; the previous checkpoint {previous[-1].name} is intact" if previous else ""
            raise CheckpointError(f"cannot save checkpoint {target.name}: {reason}{kept}") from None
        self.prune()
        return target

    def prune(self) -> list[Path]:
        """Delete checkpoints outside the policy (never the newest); return what was deleted."""
        paths = list_checkpoints(self.root)
        if self.keep_last <= 0 or len(paths) <= self.keep_last:
            return []
        keep = set(paths[-self.keep_last :])
        if self.keep_best:
            scored = []
            for path in paths:
                try:
                    value = read_meta(path).get("val_loss")
                except CheckpointError:
                    continue
                if isinstance(value, int | float):
                    scored.append((float(value), path))
            if scored:
                keep.add(min(scored, key=lambda item: item[0])[1])
        removed = [p for p in paths if p not in keep]
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        return removed
