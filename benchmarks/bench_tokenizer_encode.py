"""Encoding throughput: microgpt's Tokenizer against tiktoken, same process, same ~10 MB, same ids.

    .venv/bin/python benchmarks/bench_tokenizer_encode.py [--names gpt2 cl100k_base] [--repeats 3]

Ours is timed on a *fresh* tokenizer (empty caches) for each repeat, so its figure includes every BPE miss of
one pass over the corpus; "warm" is a second pass on the same object. Best of ``--repeats`` for each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import tiktoken
from tokenizer_corpus import load_documents

from microgpt.tokenizer import Tokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizers"
TIKTOKEN_NAMES = {  # tiktoken's cache names (sha1 of the URL), from ../shared/data/README.md
    "r50k_base.tiktoken": "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4",
    "p50k_base.tiktoken": "ec7223a39ce59f226a68acc30dc1af2788490e15",
    "cl100k_base.tiktoken": "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
    "o200k_base.tiktoken": "fb374d419588a4632f3f557e76b4b70aebbca790",
    "vocab.bpe": "6d1cbeee0f20b3d9449abfede4726ed8212e3aee",
    "encoder.json": "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6",
}


def best_of(repeats: int, run: Callable[[], object]) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--names", nargs="+", default=["gpt2", "cl100k_base"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    cache = Path(tempfile.mkdtemp(prefix="tiktoken-"))
    for name, cache_name in TIKTOKEN_NAMES.items():
        shutil.copyfile(DATA / name, cache / cache_name)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)

    docs = load_documents("train")
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    print(f"corpus: {len(docs)} documents, {mb:.2f} MB (../shared/data/hf/web train); best of {args.repeats}")
    print(f"{'encoding':<12} {'tiktoken 1T':>12} {'ours cold':>10} {'ratio':>6} {'ours warm':>10} {'ours 2 proc':>12} {'ratio':>6}  same ids")
    for name in args.names:
        enc = tiktoken.get_encoding(name)
        t_tik, expected = best_of(args.repeats, lambda enc=enc: [enc.encode_ordinary(d) for d in docs])
        warm: list[Tokenizer] = []

        def ours_cold(name: str = name) -> list[list[int]]:
            tok = Tokenizer.from_pretrained(name, cache_dir=DATA)  # fresh caches; loading is not timed below
            warm[:] = [tok]
            start = time.perf_counter()
            ids = [tok.encode_ordinary(d) for d in docs]
            ours_cold.elapsed = time.perf_counter() - start  # type: ignore[attr-defined]
            return ids

        cold_times = []
        for _ in range(args.repeats):
            got = ours_cold()
            cold_times.append(ours_cold.elapsed)  # type: ignore[attr-defined]
        t_cold = min(cold_times)
        t_warm, got_warm = best_of(args.repeats, lambda: [warm[0].encode_ordinary(d) for d in docs])
        batch_times = []
        for _ in range(args.repeats):
            tok = Tokenizer.from_pretrained(name, cache_dir=DATA)
            start = time.perf_counter()
            got_batch = tok.encode_batch(docs, num_workers=2, disallowed_special=())
            batch_times.append(time.perf_counter() - start)
        t_batch = min(batch_times)
        same = got == expected and got_warm == expected and got_batch == expected
        print(
            f"{name:<12} {mb / t_tik:>9.1f} MB/s {mb / t_cold:>5.1f} MB/s {t_tik / t_cold:>5.2f}x "
            f"{mb / t_warm:>5.1f} MB/s {mb / t_batch:>7.1f} MB/s {t_tik / t_batch:>5.2f}x  {same}"
        )
    shutil.rmtree(cache)


if __name__ == "__main__":
    main()
