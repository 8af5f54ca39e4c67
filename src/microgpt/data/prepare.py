"""Prepare: documents → token ids (an ``<|endoftext|>`` before each document) → shards + ``manifest.json``.

One pass over the mixed source stream assigns each document to train/val/test; groups of documents go to
tokenizer processes (each loads the tokenizer once from a saved folder, so only text and ids cross process
boundaries); ids come back in order and fill one fixed-size buffer per split, written as a shard when full.

Memory stays bounded: documents stream in, at most ``2 × workers`` groups are in flight, and each split holds one
shard buffer. Resume: after each shard, ``progress.json`` records per split the shards written and where in the
split's document list they stop (document index + tokens of that document already written). A rerun re-reads the
sources (cheap) but tokenizes only from that point, so the result equals an uninterrupted run byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Generator, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from microgpt.common.atomic import atomic_write_text, make_out_dir
from microgpt.common.errors import MicrogptError
from microgpt.common.log import get_logger
from microgpt.data.config import SPLITS, DataConfig, Split
from microgpt.data.documents import iter_split_documents
from microgpt.data.manifest import MANIFEST, Manifest, ShardInfo, SplitInfo, TokenizerInfo
from microgpt.data.shards import VERSION, token_dtype, write_shard
from microgpt.data.workers import Group, TokenizerLike, encode_with, run_pool, worker_pool

log = get_logger(__name__)
PROGRESS = "progress.json"
GROUP_DOCS = 256  # documents per worker task: large enough to amortise pickling, small enough to stream
GROUP_BYTES = 1 << 18


@dataclass
class PrepareStats:
    """Where prepare spent its time (filled when passed to :func:`prepare_data`; used by the benchmark)."""

    documents: int = 0
    text_bytes: int = 0
    tokens: int = 0
    read_s: float = 0.0  # waiting on sources (file/URL/dataset reads, decompression, JSON parsing)
    encode_s: float = 0.0  # tokenizing, summed over workers
    wait_s: float = 0.0  # main process waiting for worker results (encode + pickling, when not overlapped)
    write_s: float = 0.0  # writing and hashing shards
    wall_s: float = 0.0
    shards_reused: int = 0
    split_documents: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    split_bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))


@dataclass
class _SplitState:
    shards: list[ShardInfo] = field(default_factory=list)
    docs_done: int = 0  # documents of this split whose ids are all in written shards ...
    carry: int = 0  # ... plus this many ids of the next one


def config_hash(config: DataConfig, tokenizer: TokenizerLike) -> str:
    """Identity of a prepared folder: data config, tokenizer fingerprint and shard format version."""
    payload = {"data": config.identity(), "tokenizer": tokenizer.fingerprint, "shard_version": VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


class _SplitWriter:
    """Fills fixed-size shards of one split; records where each shard stops in the document list."""

    def __init__(self, out_dir: Path, split: Split, dtype: type[np.unsignedinteger], size: int, state: _SplitState):
        self.out_dir, self.split, self.size, self.state = out_dir, split, size, state
        self.dtype = dtype
        self.buffer = np.empty(0, dtype=dtype)  # (shard_tokens,) once the split gets its first document
        self.fill = 0

    def add(self, doc_index: int, ids: npt.NDArray[np.uint32], offset: int, stats: PrepareStats) -> bool:
        """Append ids of document ``doc_index`` (starting at id ``offset`` of it); True when a shard was written."""
        wrote = False
        position = 0
        if self.buffer.size == 0:
            self.buffer = np.empty(self.size, dtype=self.dtype)
        while position < ids.size:
            take = min(self.size - self.fill, ids.size - position)
            self.buffer[self.fill : self.fill + take] = ids[position : position + take]
            self.fill += take
            position += take
            if self.fill == self.size:
                done = offset + position
                whole = position == ids.size
                self._flush(stats, doc_index + 1 if whole else doc_index, 0 if whole else done)
                wrote = True
        return wrote

    def finish(self, stats: PrepareStats) -> None:
        if self.fill:
            self._flush(stats, self.state.docs_done, 0)

    def _flush(self, stats: PrepareStats, docs_done: int, carry: int) -> None:
        start = time.perf_counter()
        name = f"{self.split}-{len(self.state.shards):05d}.bin"
        data = write_shard(self.out_dir / name, self.buffer[: self.fill])
        self.state.shards.append(ShardInfo(file=name, tokens=self.fill, sha256=hashlib.sha256(data).hexdigest()))
        self.state.docs_done, self.state.carry = docs_done, carry
        self.fill = 0
        stats.write_s += time.perf_counter() - start


# ---- progress file ---------------------------------------------------------------------------------------


def _load_progress(out_dir: Path, expected_hash: str) -> dict[Split, _SplitState] | None:
    """Return the saved per-split state when it belongs to this config and its shards are intact."""
    path = out_dir / PROGRESS
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("config_hash") != expected_hash:
            log.warning("%s: earlier progress is for another config or tokenizer; starting over", out_dir)
            return None
        states: dict[Split, _SplitState] = {}
        for split in SPLITS:
            item = raw["splits"][split]
            shards = [ShardInfo.model_validate(shard) for shard in item["shards"]]
            states[split] = _SplitState(shards, int(item["docs_done"]), int(item["carry"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("%s: unreadable progress file (%s); starting over", path, error)
        return None
    for state in states.values():
        for shard in state.shards:
            if not (out_dir / shard.file).is_file():
                log.warning("%s: shard %s is missing; starting over", out_dir, shard.file)
                return None
    return states


def _save_progress(out_dir: Path, digest: str, states: dict[Split, _SplitState]) -> None:
    splits = {
        split: {"shards": [s.model_dump() for s in st.shards], "docs_done": st.docs_done, "carry": st.carry}
        for split, st in states.items()
    }
    atomic_write_text(out_dir / PROGRESS, json.dumps({"config_hash": digest, "splits": splits}) + "\n")


def _remove_outputs(out_dir: Path) -> None:
    """Delete shards and progress of an unfinished prepare (after bad input: nothing half-made stays)."""
    for split in SPLITS:
        for path in out_dir.glob(f"{split}-*.bin"):
            path.unlink(missing_ok=True)
    (out_dir / PROGRESS).unlink(missing_ok=True)


# ---- the pass --------------------------------------------------------------------------------------------


def _groups(
    documents: Iterator[tuple[Split, str]], skip: dict[Split, int], stats: PrepareStats
) -> Generator[Group, None, None]:
    """Number each split's documents, count bytes, drop those already in shards, and group the rest."""
    index: dict[Split, int] = dict.fromkeys(SPLITS, 0)
    group: list[tuple[Split, int, str]] = []
    size = 0
    while True:
        start = time.perf_counter()
        item = next(documents, None)
        stats.read_s += time.perf_counter() - start
        if item is None:
            break
        split, text = item
        n = len(text.encode("utf-8"))
        stats.documents += 1
        stats.text_bytes += n
        stats.split_documents[split] += 1
        stats.split_bytes[split] += n
        k = index[split]
        index[split] += 1
        if k < skip[split]:
            continue
        group.append((split, k, text))
        size += n
        if len(group) >= GROUP_DOCS or size >= GROUP_BYTES:
            yield group
            group, size = [], 0
    if group:
        yield group


def prepare_data(
    config: DataConfig,
    tokenizer: TokenizerLike,
    out_dir: str | Path,
    *,
    progress: bool = False,
    stats: PrepareStats | None = None,
) -> Manifest:
    """Tokenize the sources of ``config`` into shards in ``out_dir`` and write ``manifest.json``.

    A folder that already holds this exact preparation is returned as is; an interrupted one is resumed.

    Args:
        config: Sources, split and shard settings.
        tokenizer: Must have an ``<|endoftext|>`` token (put before each document).
        out_dir: The data folder (created if needed).
        progress: Show a progress bar with documents/s and MB/s.
        stats: Filled with timings and counts when given.

    Returns:
        The manifest.

    Raises:
        MicrogptError: On bad input in any source (nothing half-made is left), an empty corpus or requested split,
            or when ``out_dir`` holds data prepared from another config or tokenizer.
    """
    out = Path(out_dir)
    make_out_dir(out, "out_dir")
    stats = stats if stats is not None else PrepareStats()
    digest = config_hash(config, tokenizer)
    if (out / MANIFEST).exists():
        existing = Manifest.load(out)
        if existing.config_hash != digest:
            raise MicrogptError(f"{out} holds data prepared from another config or tokenizer: use a new folder")
        log.info("%s: already prepared; nothing to do", out)
        return existing
    eot = tokenizer.eot_token
    dtype = token_dtype(tokenizer.n_vocab)
    states = _load_progress(out, digest)
    for stale in out.glob(".tokenizer-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    for name in (*(f"{split}-*.bin" for split in SPLITS), PROGRESS, MANIFEST):
        for stale_file in out.glob(f".{name}.*.tmp"):  # half-written by a killed run (atomic writes' temp names)
            stale_file.unlink(missing_ok=True)
    if states is None:
        _remove_outputs(out)
        states = {split: _SplitState() for split in SPLITS}
    else:
        stats.shards_reused = sum(len(state.shards) for state in states.values())
        log.info("%s: resuming after %d shards", out, stats.shards_reused)
    writers = {split: _SplitWriter(out, split, dtype, config.shard_tokens, states[split]) for split in SPLITS}
    skip = {split: states[split].docs_done for split in SPLITS}
    carry = {split: states[split].carry for split in SPLITS}
    workers = config.workers or min(os.cpu_count() or 1, 8)
    start = time.perf_counter()
    bar = tqdm(unit="doc", disable=not progress, desc="prepare", dynamic_ncols=True)

    def absorb(
        group: list[tuple[Split, int, str]], flat: npt.NDArray[np.uint32], lengths: npt.NDArray[np.int64]
    ) -> None:
        wrote = False
        ends = np.cumsum(lengths)
        for (split, k, _), end, length in zip(group, ends, lengths, strict=True):
            ids = flat[end - length : end]
            offset = carry[split] if k == skip[split] else 0
            if offset:
                ids = ids[offset:]
            wrote |= writers[split].add(k, ids, offset, stats)
        stats.tokens += int(lengths.sum())
        if wrote:
            _save_progress(out, digest, states)
        bar.update(len(group))
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.set_postfix_str(f"{stats.text_bytes / elapsed / 1e6:.2f} MB/s", refresh=False)

    try:
        with ExitStack() as stack:
            pool = None
            if workers > 1:
                tokenizer_dir = stack.enter_context(tempfile.TemporaryDirectory(dir=out, prefix=".tokenizer-"))
                pool = stack.enter_context(worker_pool(workers, tokenizer, Path(tokenizer_dir)))
            groups = stack.enter_context(closing(_groups(iter_split_documents(config), skip, stats)))
            if pool is None:
                for group in groups:
                    flat, lengths, seconds = encode_with(tokenizer, [text for _, _, text in group])
                    stats.encode_s += seconds
                    absorb(group, flat, lengths)
            else:
                run_pool(groups, pool, workers, stats, absorb)
        for split in SPLITS:
            writers[split].finish(stats)
    except MicrogptError:
        bar.close()
        _remove_outputs(out)
        raise
    bar.close()
    manifest = _manifest(config, tokenizer, eot, dtype, states, stats, digest)
    manifest.save(out)
    (out / PROGRESS).unlink(missing_ok=True)
    stats.wall_s = time.perf_counter() - start
    log.info(
        "prepared %s: %s documents, %.1f MB, %s tokens in %.1fs (%.2f MB/s)",
        out,
        f"{stats.documents:,}",
        stats.text_bytes / 1e6,
        f"{stats.tokens:,}",
        stats.wall_s,
        stats.text_bytes / max(stats.wall_s, 1e-9) / 1e6,
    )
    return manifest


def _manifest(
    config: DataConfig,
    tokenizer: TokenizerLike,
    eot: int,
    dtype: type[np.unsignedinteger],
    states: dict[Split, _SplitState],
    stats: PrepareStats,
    digest: str,
) -> Manifest:
    splits: dict[str, SplitInfo] = {}
    for split in SPLITS:
        state = states[split]
        splits[split] = SplitInfo(
            shards=state.shards,
            tokens=sum(s.tokens for s in state.shards),
            bytes=stats.split_bytes[split],
            documents=stats.split_documents[split],
        )
    return Manifest(
        tokenizer=TokenizerInfo(
            name=tokenizer.name, fingerprint=tokenizer.fingerprint, n_vocab=tokenizer.n_vocab, eot_token=eot
        ),
        dtype=np.dtype(dtype).name,
        shard_tokens=config.shard_tokens,
        splits=splits,
        config_hash=digest,
        data_config=config.identity(),
    )
