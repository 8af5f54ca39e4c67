"""The pipeline's report: ``report.md`` for people, ``report.json`` for tools, PNG plots of the curves.

``report.json`` is a stable, small contract other tools read::

    {"wall_time_s": 312.4,
     "models": [{"name": "stage1", "test_loss": 4.91, "test_bpb": 1.73, ...}, ...],
     ...}

Model names are ``stage1``, ``ingredient-1`` … ``ingredient-N``, ``best-ingredient``, ``compute-matched`` (one
fine-tune given the ingredients' summed steps), and one per soup recipe: ``uniform-soup``, ``greedy-soup``,
``model-stock``, ``task-arithmetic``, ``ties``, ``trajectory-<run>``. Test figures come from the held-out test
split that no training and no selection ever saw; ``val_loss`` is the selection split's loss (what greedy
selection, the λ/density grids and the baseline's checkpoint choice optimised), shown so the two can be compared.
``stage2_steps``/``stage2_tokens`` are the stage-2 training a model cost (a soup costs all its ingredients).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from microgpt.common.atomic import atomic_write_bytes, atomic_write_text
from microgpt.common.log import get_logger
from microgpt.common.metrics import read_metrics

log = get_logger(__name__)


@dataclass(frozen=True)
class ModelScore:
    """One row of the report table.

    Attributes:
        name: ``stage1``, ``ingredient-k``, ``best-ingredient``, ``uniform-soup`` or ``greedy-soup``.
        test_loss: Mean loss on the stage-2 test split (nats/token).
        test_bpb: Bits per byte on the stage-2 test split.
        val_loss: Mean loss on the stage-2 validation (selection) split.
        checkpoint: The checkpoint directory evaluated.
        note: A short remark (which ingredient is best, what a soup holds).
        hellaswag_acc_norm: HellaSwag accuracy (length-normalised), when it was measured.
        hellaswag_se: The standard error of that accuracy, ``sqrt(p(1 − p) / n)``.
        stage2_steps: Stage-2 optimizer steps spent to make this model (a soup: all its ingredients').
        stage2_tokens: Stage-2 training tokens spent to make it.
    """

    name: str
    test_loss: float
    test_bpb: float
    val_loss: float
    checkpoint: str
    note: str = ""
    hellaswag_acc_norm: float | None = None
    hellaswag_se: float | None = None
    stage2_steps: int = 0
    stage2_tokens: int = 0


@dataclass
class Report:
    """Everything the report shows.

    Attributes:
        run_dir: The pipeline's run directory.
        wall_time_s: Seconds the whole pipeline took (steps skipped on a rerun count as their original time).
        models: The table rows, in display order.
        step_seconds: Seconds per pipeline step.
        greedy_trace: The greedy recipe's candidates: ``(name, val loss of the soup with it, kept?)``.
        samples: Text samples from the best model by test loss: ``(prompt, completion)``.
        best_model: Name of the model the samples come from.
        notes: Lines for the findings section (e.g. a soup of one ingredient).
        config: The pipeline config as plain data.
        invocation_s: Seconds of this invocation (less than ``wall_time_s`` when earlier runs did some steps).
    """

    run_dir: Path
    wall_time_s: float
    models: list[ModelScore]
    step_seconds: dict[str, float] = field(default_factory=dict)
    greedy_trace: list[tuple[str, float, bool]] = field(default_factory=list)
    samples: list[tuple[str, str]] = field(default_factory=list)
    best_model: str = ""
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    invocation_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The ``report.json`` document."""
        return {
            "wall_time_s": self.wall_time_s,
            "invocation_s": self.invocation_s,
            "models": [asdict(m) for m in self.models],
            "best_model": self.best_model,
            "step_seconds": self.step_seconds,
            "greedy_trace": [{"name": n, "val_loss": v, "kept": k} for n, v, k in self.greedy_trace],
            "samples": [{"prompt": p, "completion": c} for p, c in self.samples],
            "notes": self.notes,
            "config": self.config,
        }


def render_markdown(report: Report, plots: Sequence[str]) -> str:
    """Render ``report.md``: the table, the findings, the curves and the samples."""
    lines = ["# microgpt pipeline report", ""]
    lines.append(
        f"Wall time: **{report.wall_time_s:.1f} s** ({report.wall_time_s / 60:.1f} min) for the pipeline's steps "
        "(Python start-up and imports not included)."
    )
    lines.append("")
    lines.append("## Held-out test split (never seen by training or greedy selection)")
    lines.append("")
    show_hs = any(m.hellaswag_acc_norm is not None for m in report.models)
    header = "| model | test loss (nats/token) | test bits/byte | val loss (selection) | stage-2 steps |"
    header += " stage-2 tokens |"
    rule = "| --- | ---: | ---: | ---: | ---: | ---: |"
    if show_hs:
        header += " HellaSwag acc_norm ± se |"
        rule += " ---: |"
    lines += [header + " note |", rule + " --- |"]
    for m in report.models:
        row = f"| {m.name} | {m.test_loss:.4f} | {m.test_bpb:.4f} | {m.val_loss:.4f} | {m.stage2_steps:,} |"
        row += f" {m.stage2_tokens:,} |"
        if show_hs:
            if m.hellaswag_acc_norm is not None:
                row += f" {m.hellaswag_acc_norm:.3f} ± {m.hellaswag_se or 0.0:.3f} |"
            else:
                row += " – |"
        lines.append(row + f" {m.note} |")
    lines.append("")
    if report.notes:
        lines += ["## Findings", ""]
        lines += [f"- {note}" for note in report.notes]
        lines.append("")
    if report.greedy_trace:
        lines += ["## Greedy soup selection (validation split)", ""]
        lines += ["| candidate (best first) | val loss of soup with it | kept |", "| --- | ---: | --- |"]
        lines += [f"| {n} | {v:.4f} | {'yes' if k else 'no'} |" for n, v, k in report.greedy_trace]
        lines.append("")
    if report.step_seconds:
        lines += ["## Time per step", "", "| step | seconds |", "| --- | ---: |"]
        lines += [f"| {name} | {sec:.1f} |" for name, sec in report.step_seconds.items()]
        lines.append("")
    if plots:
        lines += ["## Curves", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in plots]
        lines.append("")
    if report.samples:
        lines += [f"## Samples from {report.best_model}", ""]
        for prompt, completion in report.samples:
            lines += ["```text", (prompt + completion).rstrip("\n"), "```", ""]
    return "\n".join(lines)


def _curve(records: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [
        (float(r["step"]), float(r[key]))
        for r in records
        if isinstance(r.get(key), int | float) and math.isfinite(r[key])
    ]


def plot_curves(curves: Mapping[str, Path], png_path: Path, title: str) -> bool:
    """Draw train (thin) and validation (dots) loss of several runs into one PNG; return whether it was drawn.

    Args:
        curves: Run label → its ``metrics.jsonl``.
        png_path: Where to write the PNG (atomically).
        title: The plot's title.
    """
    try:
        # A bare Figure draws with the Agg canvas and leaves pyplot's global backend alone (inline plots in
        # notebooks keep working).
        from matplotlib.figure import Figure
    except ImportError:  # a broken matplotlib must not cost the report its table
        log.warning("matplotlib is not importable; %s is not drawn", png_path.name)
        return False
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    drawn = False
    for index, (label, path) in enumerate(curves.items()):
        records = read_metrics(path)
        color = f"C{index % 10}"
        train, val = _curve(records, "train_loss"), _curve(records, "val_loss")
        if train:
            ax.plot(*zip(*train, strict=True), color=color, linewidth=1.0, alpha=0.6, label=f"{label} train")
            drawn = True
        if val:
            ax.plot(*zip(*val, strict=True), color=color, marker="o", linewidth=1.5, label=f"{label} val")
            drawn = True
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    atomic_write_bytes(png_path, buffer.getvalue())
    return drawn


def write_report(
    report: Report, stage1_metrics: Path | None = None, ingredient_metrics: Mapping[str, Path] | None = None
) -> list[Path]:
    """Write ``report.md``, ``report.json`` and the PNG plots into ``report.run_dir``; return the files written.

    Args:
        report: What to show.
        stage1_metrics: Stage 1's ``metrics.jsonl`` (its curve becomes ``stage1_loss.png``).
        ingredient_metrics: Ingredient name → its ``metrics.jsonl`` (one plot, ``ingredients_loss.png``).
    """
    run_dir = report.run_dir
    written: list[Path] = []
    plots: list[str] = []
    if stage1_metrics is not None and plot_curves({"stage1": stage1_metrics}, run_dir / "stage1_loss.png", "stage 1"):
        plots.append("stage1_loss.png")
    if ingredient_metrics and plot_curves(
        ingredient_metrics, run_dir / "ingredients_loss.png", "stage 2 ingredients (fine-tuning)"
    ):
        plots.append("ingredients_loss.png")
    written += [run_dir / p for p in plots]
    written.append(atomic_write_text(run_dir / "report.json", json.dumps(report.to_json(), indent=2) + "\n"))
    written.append(atomic_write_text(run_dir / "report.md", render_markdown(report, plots)))
    return written
