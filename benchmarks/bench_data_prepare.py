"""Prepare throughput on the web sample (../shared/data/web/): MB of text per second with 1 and 2 workers.

    .venv/bin/python benchmarks/bench_data_prepare.py [--workers 1 2] [--repeats 2]

Sources: the C4 sample, CNN/DailyMail articles and the RedPajama CC files (gzipped JSON lines, ~3.3 MB of text;
the NLTK zips hold Latin-1 files, which our UTF-8 sources refuse by design). Tokenizer: GPT-2's ranks in our
Tokenizer, loaded fresh (empty encode cache) for every run so no run profits from an earlier one.

To show where the time goes, the same run also measures:
- "sources only": reading, decompressing, parsing and splitting the documents (no tokenizer);
- "tokenizer only": our encode_ordinary over the same documents in one process (the ceiling for 1 worker);
- the peer: tiktoken's GPT-2 encoding, what nanoGPT's prepare scripts use, on 1 and 2 threads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import tiktoken

from microgpt.common.sources import FileSource
from microgpt.data import DataConfig, PrepareStats, iter_documents, prepare_data
from microgpt.tokenizer import Tokenizer
from microgpt.tokenizer.pretrained import GPT2_ENCODER, GPT2_VOCAB

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WEB = SHARED / "web"
TOKENIZERS = SHARED / "tokenizers"
TIKTOKEN_NAMES = {remote.filename: remote.tiktoken_cache_key for remote in (GPT2_VOCAB, GPT2_ENCODER)}


def web_config(workers: int) -> DataConfig:
    return DataConfig(
        sources=[
            FileSource(name="c4", paths=[str(WEB / "c4_en_sample_1000.jsonl.gz")]),
            FileSource(name="cnn", paths=[str(WEB / "cnn_dailymail_test_200.jsonl.gz")], text_field="article"),
            FileSource(name="redpajama", paths=[str(WEB / "redpajama_cc_en_head-*.jsonl.gz")]),
        ],
        val_fraction=0.05,
        shard_tokens=1 << 20,
        workers=workers,
    )


def fresh_tokenizer() -> Tokenizer:
    return Tokenizer.from_pretrained("gpt2", cache_dir=TOKENIZERS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    start = time.perf_counter()
    documents = [doc for split in ("train", "val") for doc in iter_documents(web_config(1), split)]
    read_s = time.perf_counter() - start
    megabytes = sum(len(doc.encode()) for doc in documents) / 1e6
    print(f"corpus: {len(documents):,} documents, {megabytes:.2f} MB of UTF-8 text; cores: {os.cpu_count()}")
    print(f"{'sources only (read+gunzip+JSON+split, twice)':48s} {2 * megabytes / read_s:8.2f} MB/s")

    best = float("inf")
    for _ in range(args.repeats):
        tokenizer = fresh_tokenizer()
        start = time.perf_counter()
        for doc in documents:
            tokenizer.encode_ordinary(doc)
        best = min(best, time.perf_counter() - start)
    print(f"{'tokenizer only (ours, 1 process, cold cache)':48s} {megabytes / best:8.2f} MB/s")

    cache = Path(tempfile.mkdtemp(prefix="tiktoken-"))
    for name, cache_name in TIKTOKEN_NAMES.items():
        shutil.copyfile(TOKENIZERS / name, cache / cache_name)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    peer = tiktoken.get_encoding("gpt2")
    for threads in (1, 2):
        start = time.perf_counter()
        peer.encode_ordinary_batch(documents, num_threads=threads)
        seconds = time.perf_counter() - start
        print(f"{f'peer: tiktoken gpt2 encode, {threads} thread(s)':48s} {megabytes / seconds:8.2f} MB/s")
    shutil.rmtree(cache)

    print()
    columns = ("MB/s", 7), ("wall s", 7), ("read s", 7), ("encode s", 9), ("wait s", 7), ("write s", 8)
    print(f"{'prepare_data':14s} " + " ".join(f"{name:>{width}s}" for name, width in columns))
    for workers in args.workers:
        runs = []
        for _ in range(args.repeats):
            out = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
            stats = PrepareStats()
            tokenizer = fresh_tokenizer()
            start = time.perf_counter()
            prepare_data(web_config(workers), tokenizer, out, stats=stats)
            runs.append((time.perf_counter() - start, stats))
            shutil.rmtree(out)
        wall, stats = min(runs, key=lambda run: run[0])
        print(
            f"{f'{workers} worker(s)':14s} {stats.text_bytes / 1e6 / wall:7.2f} {wall:7.2f} {stats.read_s:7.2f} "
            f"{stats.encode_s:9.2f} {stats.wait_s:7.2f} {stats.write_s:8.2f}"
        )
    print("encode s = time inside encode_ordinary, summed over workers; wait s = main process blocked on workers;")
    print("read s = main process waiting on sources (with 2 workers it overlaps the workers' encoding).")


if __name__ == "__main__":
    main()
