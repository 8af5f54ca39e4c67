"""The record of a pipeline's finished steps: ``steps/<name>.json`` per step, so a rerun skips what is done.

Each step's result (a small JSON object) and its seconds are written atomically by the rank that ran it; a missing
or unreadable record means the step runs again. :meth:`StepLog.run` runs one step on rank 0 (or on every rank, for
training), :meth:`StepLog.run_spread` runs independent steps spread over the ranks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from microgpt.common.atomic import atomic_write_text
from microgpt.common.dist import DistInfo, barrier, run_on_main, spread_over_ranks
from microgpt.common.log import get_logger

log = get_logger(__name__)

STEPS_DIR = "steps"


class StepLog:
    """The record of finished steps: ``steps/<name>.json`` holding the step's result and its seconds."""

    def __init__(self, run_dir: Path, dist: DistInfo) -> None:
        """Read finished steps from ``run_dir/steps``."""
        self.dir = run_dir / STEPS_DIR
        self.dist = dist
        self.seconds: dict[str, float] = {}  # step → seconds it took (when it ran, maybe in an earlier invocation)

    def done(self, name: str) -> dict[str, Any] | None:
        """The saved result of step ``name``, or None when it has not finished."""
        path = self.dir / f"{name}.json"
        if not path.is_file():
            return None
        try:
            result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # torn by a crash (cannot happen with atomic writes, but a hand edit can): redo the step
        return result

    def run(self, name: str, work: Callable[[], dict[str, Any]], *, all_ranks: bool = False) -> dict[str, Any]:
        """Run step ``name`` unless it is done; record its result and seconds (rank 0 writes, everyone waits)."""
        found = self.done(name)
        if found is not None:
            log.info("pipeline: %s already done (%.1f s); skipping", name, found.get("seconds", 0.0))
            self.seconds[name] = float(found.get("seconds", 0.0))
            return found
        log.info("pipeline: %s", name)
        started = time.perf_counter()
        result: dict[str, Any] = {}
        if all_ranks:
            result = work()
        else:
            # Rank 0 works while the others wait on the process group's store, not in a barrier: a long
            # preparation or evaluation must not outlast the collective timeout (and kill the job).
            result = run_on_main(f"pipeline step {name}", work) or {}
        result["seconds"] = time.perf_counter() - started
        if self.dist.is_main:
            atomic_write_text(self.dir / f"{name}.json", json.dumps(result, indent=1) + "\n")
        barrier()
        self.seconds[name] = result["seconds"]
        return self.done(name) or result

    def run_spread(self, works: dict[str, Callable[[], dict[str, Any]]]) -> dict[str, dict[str, Any]]:
        """Run independent steps spread over the ranks (each on one rank, its own device); every rank gets every result.

        Under torchrun, evaluating eight models takes one model's time on eight GPUs instead of eight on rank 0's.
        """

        def one(name: str) -> None:
            log.info("pipeline: %s (rank %d)", name, self.dist.rank)
            started = time.perf_counter()
            result = {**works[name](), "rank": self.dist.rank}
            result["seconds"] = time.perf_counter() - started
            atomic_write_text(self.dir / f"{name}.json", json.dumps(result, indent=1) + "\n")

        todo = [name for name in works if self.done(name) is None]
        spread_over_ranks(f"pipeline steps {', '.join(todo)}", [partial(one, name) for name in todo])
        results = {}
        for name in works:
            found = self.done(name) if name in todo else None  # written by the rank that ran it
            results[name] = found if found is not None else self.run(name, works[name])
            self.seconds[name] = float(results[name].get("seconds", 0.0))
        return results

    def forget(self, prefixes: tuple[str, ...]) -> None:
        """Drop the records of steps whose names start with ``prefixes`` (their inputs changed)."""
        if self.dir.is_dir() and self.dist.is_main:
            for path in self.dir.glob("*.json"):
                if path.stem.startswith(prefixes):
                    path.unlink()
