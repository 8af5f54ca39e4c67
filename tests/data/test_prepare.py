from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from microgpt.common import formats
from microgpt.common.errors import MicrogptError
from microgpt.common.sources import FileSource, TextSource
from microgpt.data import DataConfig, Manifest, PrepareStats, iter_split_documents, prepare, prepare_data
from microgpt.data.shards import open_shard
from microgpt.tokenizer import Tokenizer
from tests.data.conftest import corpus


def split_ids(out: Path, manifest: Manifest, split: str) -> np.ndarray:
    parts = [np.asarray(open_shard(path)) for path in manifest.shard_paths(out, split)]  # type: ignore[arg-type]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def files_in(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_shards_hold_every_document_of_each_split_in_order(
    prepared: tuple[Path, Manifest], tokenizer: Tokenizer
) -> None:
    out, manifest = prepared
    config = DataConfig.model_validate(manifest.data_config)
    expected: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for split, document in iter_split_documents(config):
        expected[split].append(document)
    for split in ("train", "val"):
        ids = split_ids(out, manifest, split)
        assert ids.dtype == np.uint16 and ids.size == manifest.split_tokens(split)
        eot = tokenizer.eot_token
        assert ids.tolist() == [i for doc in expected[split] for i in [eot, *tokenizer.encode_ordinary(doc)]]
        assert tokenizer.decode(ids.tolist()) == "".join("<|endoftext|>" + doc for doc in expected[split])
        assert manifest.split_bytes(split) == sum(len(doc.encode()) for doc in expected[split])
        assert manifest.split(split).documents == len(expected[split])
    assert manifest.split(split="val").documents == 40
    assert manifest.tokenizer.fingerprint == tokenizer.fingerprint and manifest.tokenizer.n_vocab == 320
    shards = manifest.split("train").shards
    assert all(s.tokens == 997 for s in shards[:-1]) and 0 < shards[-1].tokens <= 997
    assert not (out / "progress.json").exists()
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["splits"]["train"]["tokens"] == manifest.split_tokens("train")


def test_workers_give_identical_bytes_and_rerun_is_a_no_op(tmp_path: Path, tokenizer: Tokenizer) -> None:
    config = DataConfig(sources=[TextSource(texts=corpus(300))], val_fraction=0.1, shard_tokens=1500, workers=1)
    one = tmp_path / "one"
    prepare_data(config, tokenizer, one)
    two = tmp_path / "two"
    stats = PrepareStats()
    prepare_data(config.model_copy(update={"workers": 2}), tokenizer, two, stats=stats)
    assert stats.encode_s > 0 and stats.tokens > 0
    assert files_in(one).keys() == files_in(two).keys()
    assert files_in(one) == files_in(two)  # manifest included: the worker count is not part of the identity
    again = PrepareStats()
    prepare_data(config.model_copy(update={"workers": 2}), tokenizer, one, stats=again)
    assert again.documents == 0  # complete: nothing read
    with pytest.raises(MicrogptError, match="another config or tokenizer"):
        prepare_data(config.model_copy(update={"seed": 1}), tokenizer, one)


class Interrupting:
    """The real tokenizer, interrupted (as by Ctrl-C) after a number of documents."""

    def __init__(self, tokenizer: Tokenizer, after: int) -> None:
        self.inner, self.left, self.calls = tokenizer, after, 0
        self.name, self.n_vocab, self.fingerprint = tokenizer.name, tokenizer.n_vocab, tokenizer.fingerprint
        self.eot_token = tokenizer.eot_token

    def encode_ordinary(self, text: str) -> list[int]:
        self.calls += 1
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return self.inner.encode_ordinary(text)

    def save(self, directory: Path) -> object:
        return self.inner.save(directory)


def test_interrupted_prepare_resumes_to_identical_bytes(tmp_path: Path, tokenizer: Tokenizer) -> None:
    config = DataConfig(sources=[TextSource(texts=corpus(600))], val_docs=30, shard_tokens=701, workers=1)
    reference = tmp_path / "reference"
    prepare_data(config, tokenizer, reference)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare_data(config, Interrupting(tokenizer, after=400), out)
    progress = json.loads((out / "progress.json").read_text())
    assert len(progress["splits"]["train"]["shards"]) > 3 and not (out / "manifest.json").exists()
    resumed = Interrupting(tokenizer, after=10**9)
    stats = PrepareStats()
    prepare_data(config, resumed, out, stats=stats)
    assert stats.shards_reused > 3
    done = sum(progress["splits"][split]["docs_done"] for split in ("train", "val", "test"))
    assert done > 100 and resumed.calls == 600 - done  # tokenized only what was not in shards yet
    assert files_in(out) == files_in(reference)


def test_uint32_when_the_vocabulary_is_large(tmp_path: Path) -> None:
    ranks = {bytes([i]): i for i in range(256)}
    big = Tokenizer(ranks, "gpt4", {"<|endoftext|>": 70_000}, name="big")
    config = DataConfig(sources=[TextSource(texts=["hi there", "more"])], val_fraction=0, workers=1)
    manifest = prepare_data(config, big, tmp_path)
    ids = split_ids(tmp_path, manifest, "train")
    assert manifest.dtype == "uint32" and ids.dtype == np.uint32
    assert ids.tolist() == [70_000, *b"hi there", 70_000, *b"more"]


def test_bad_input_leaves_no_shards(tmp_path: Path, tokenizer: Tokenizer) -> None:
    lines = [json.dumps({"text": doc}) for doc in corpus(300)] + [json.dumps({"body": "oops"})]
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    config = DataConfig(sources=[FileSource(name="web", paths=[str(path)])], shard_tokens=500, workers=1)
    out = tmp_path / "out"
    with pytest.raises(MicrogptError, match=r"file source 'web': .*in.jsonl.gz line 301: no field 'text'"):
        prepare_data(config, tokenizer, out)
    assert sorted(p.name for p in out.iterdir()) == []
    with pytest.raises(MicrogptError, match="val split is empty"):
        prepare_data(DataConfig(sources=[TextSource(texts=["a", "b"])], val_fraction=0.01), tokenizer, out)
    assert sorted(p.name for p in out.iterdir()) == []


def test_memory_stays_bounded_for_a_corpus_larger_than_the_budget(
    tmp_path: Path, tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Memory is O(read block + group size × groups in flight + shard buffer), independent of the corpus. Shrink
    # the first two (the defaults are 256 KiB) so a ~1.2 MB corpus is over twice the budget, and count every
    # Python and numpy allocation of the whole pipeline (sources, split, tokenizer, shards) with tracemalloc.
    monkeypatch.setattr(formats, "BLOCK_BYTES", 16 << 10)
    monkeypatch.setattr(prepare, "GROUP_BYTES", 16 << 10)
    for f in range(8):
        (tmp_path / f"part{f}.txt").write_text("\n\n".join(corpus(1200)[f * 150 :] + corpus(1200)[: f * 150]))
    config = DataConfig(
        sources=[FileSource(paths=[str(tmp_path / "*.txt")], separator="\n\n")],
        val_fraction=0.01,
        shard_tokens=20_000,
        workers=1,
    )
    for document in corpus(1200):  # fill the tokenizer's own chunk cache first: we measure the pipeline
        tokenizer.encode_ordinary(document)
    tracemalloc.start()
    try:
        stats = PrepareStats()
        prepare_data(config, tokenizer, tmp_path / "out", stats=stats)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats.text_bytes > 1_200_000
    assert peak < stats.text_bytes / 2, f"peak {peak:,} bytes for {stats.text_bytes:,} bytes of text"


KILLED_SCRIPT = """
import sys
from microgpt.common.sources import FileSource
from microgpt.data import DataConfig, prepare_data
from microgpt.tokenizer import Tokenizer
config = DataConfig.model_validate_json(sys.argv[1])
prepare_data(config, Tokenizer.from_directory(sys.argv[2]), sys.argv[3])
"""


@pytest.mark.slow
def test_prepare_killed_hard_resumes_to_identical_bytes(tmp_path: Path, tokenizer: Tokenizer) -> None:
    # SIGKILL: no exception handler runs, a shard or progress file may be half-written (under a temp name).
    # Big enough that the kill lands mid-run on an idle machine too (the first progress file appears after the
    # first 2,000-token shard; the whole corpus takes seconds).
    (tmp_path / "docs.txt").write_text("\n\n".join(corpus(2400) * 6))
    config = DataConfig(
        sources=[FileSource(paths=[str(tmp_path / "docs.txt")], separator="\n\n")],
        val_docs=50,
        shard_tokens=2000,
        workers=1,
    )
    tokenizer.save(tmp_path / "tok")
    out = tmp_path / "out"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_SCRIPT, config.model_dump_json(), str(tmp_path / "tok"), str(out)]
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "progress.json").exists() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.01)
        time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert not (out / "manifest.json").exists(), "finished before it could be killed: grow the corpus"
    assert (out / "progress.json").exists()
    reference = tmp_path / "reference"
    prepare_data(config, tokenizer, reference)
    stats = PrepareStats()
    prepare_data(config, tokenizer, out, stats=stats)
    assert stats.shards_reused > 0
    assert files_in(out) == files_in(reference)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
