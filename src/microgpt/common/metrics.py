"""Run metrics: ``metrics.jsonl``, a loss-curve PNG, and optional TensorBoard or W&B mirrors.

``metrics.jsonl`` holds one JSON object per logged step; the backends are used only when installed.

Only rank 0 constructs a :class:`MetricsLog`; other ranks get ``None`` and log nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from microgpt.common.atomic import atomic_write_bytes, atomic_write_text
from microgpt.common.log import get_logger

log = get_logger(__name__)

Backend = Literal["tensorboard", "wandb"]


class MetricsLog:
    """Appends one JSON line per logged step to ``metrics.jsonl`` and mirrors scalars to optional backends.

    Args:
        out_dir: The run directory.
        backends: Extra sinks; each is skipped with a warning when its package is not installed.
        run_name: Name shown by the backends.
    """

    def __init__(self, out_dir: Path, backends: tuple[Backend, ...] = (), run_name: str = "microgpt") -> None:
        """Open (append to) ``out_dir/metrics.jsonl``."""
        self.path = out_dir / "metrics.jsonl"
        self.png_path = out_dir / "loss.png"
        out_dir.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._sinks: list[Any] = []
        for backend in backends:
            sink = _open_backend(backend, out_dir, run_name)
            if sink is not None:
                self._sinks.append(sink)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a killed run may have logged steps its last checkpoint does not hold)."""
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        self._handle.close()
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (flushed, so ``tail -f`` and a SIGKILL both see whole lines)."""
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        for sink in self._sinks:
            sink.log(record)

    def plot(self) -> None:
        """Redraw ``loss.png`` from the records so far (train and validation loss against step)."""
        try:
            save_loss_plot(read_metrics(self.path), self.png_path)
        except ImportError:  # matplotlib is a dependency, but a broken install must not stop training
            log.warning("matplotlib is not importable; loss.png is not drawn")

    def close(self) -> None:
        """Close the file and the backends."""
        self._handle.close()
        for sink in self._sinks:
            sink.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl``; a torn last line (killed mid-write) is ignored."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def save_loss_plot(records: list[dict[str, Any]], png_path: Path) -> None:
    """Draw train and validation loss (nats/token) against step into ``png_path`` (atomically)."""
    # A bare Figure draws with the Agg canvas and leaves pyplot's global backend alone (notebooks keep inline plots).
    from matplotlib.figure import Figure

    train = [(r["step"], r["train_loss"]) for r in records if _finite(r.get("train_loss"))]
    val = [(r["step"], r["val_loss"]) for r in records if _finite(r.get("val_loss"))]
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train, strict=True), label="train", linewidth=1.0, alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=True), label="validation", marker="o", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    atomic_write_bytes(png_path, buffer.getvalue())


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


class _TensorBoardSink:
    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def log(self, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key != "step" and _finite(value):
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.writer.close()


class _WandbSink:
    def __init__(self, run: Any) -> None:
        self.run = run

    def log(self, record: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        self.run.finish()


def _open_backend(backend: Backend, out_dir: Path, run_name: str) -> Any:
    try:
        if backend == "tensorboard":
            module = importlib.import_module("torch.utils.tensorboard")
            return _TensorBoardSink(module.SummaryWriter(log_dir=str(out_dir / "tensorboard")))
        wandb = importlib.import_module("wandb")
        return _WandbSink(wandb.init(project="microgpt", name=run_name, dir=str(out_dir)))
    except ImportError:
        log.warning("%s is not installed; metrics go to metrics.jsonl only", backend)
        return None


def estimate_mfu(flops_per_tok: float, tokens_per_sec: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: the fraction of ``peak_flops`` that ``tokens_per_sec`` tokens per second achieve.

    Args:
        flops_per_tok: From :func:`microgpt.model.flops.flops_per_token`.
        tokens_per_sec: Measured training throughput (all ranks together, if peak is summed over ranks).
        peak_flops: The hardware's peak FLOPs per second for the dtype used.

    >>> round(estimate_mfu(1e9, 1e4, 1e14), 3)
    0.1
    """
    if peak_flops <= 0:
        raise ValueError("peak_flops must be positive")
    return flops_per_tok * tokens_per_sec / peak_flops


class Throughput:
    """Training tokens per second between two log lines, leaving out the time that is not training.

    Time inside :meth:`paused` (evaluation, samples, checkpoints) does not count, and the clock starts after the
    run's first optimizer step (:meth:`restart`), which on CUDA includes ``torch.compile`` — so every rate is one
    of steady training. Rates are reported for the whole job and per device; MFU is the per-device rate's model
    FLOPs over one device's peak (:func:`estimate_mfu`), when both are known.

    Args:
        world_size: Processes (devices) sharing the tokens.
        flops_per_token: Training FLOPs per token of the model, or None (no MFU).
        peak_flops: One device's peak FLOP/s for the dtype used, or None (no MFU).
        clock: Seconds from an arbitrary origin (``time.perf_counter``).
    """

    def __init__(
        self,
        world_size: int,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
        clock: Any = None,
    ) -> None:
        """Start an interval now."""
        import time

        self.world_size = world_size
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self._clock = clock or time.perf_counter
        self.tokens, self.excluded = 0, 0.0
        self.start = self._clock()

    def restart(self) -> None:
        """Begin a fresh interval (forget the tokens and time so far)."""
        self.tokens, self.excluded, self.start = 0, 0.0, self._clock()

    def add(self, tokens: int) -> None:
        """Count ``tokens`` trained (all ranks together)."""
        self.tokens += tokens

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the time spent inside the block out of the current interval."""
        begin = self._clock()
        try:
            yield
        finally:
            self.excluded += self._clock() - begin

    def record(self) -> dict[str, float]:
        """The interval's rates, then start the next interval; empty when no token was counted since the start.

        Returns:
            ``tokens_per_sec`` (all devices), ``tokens_per_sec_per_device`` and, when computable, ``mfu``.
        """
        elapsed = max(self._clock() - self.start - self.excluded, 1e-9)
        tokens = self.tokens
        self.restart()
        if tokens == 0:
            return {}
        rate = tokens / elapsed
        out = {"tokens_per_sec": rate, "tokens_per_sec_per_device": rate / self.world_size}
        if self.flops_per_token and self.peak_flops:
            out["mfu"] = estimate_mfu(self.flops_per_token, rate / self.world_size, self.peak_flops)
        return out
