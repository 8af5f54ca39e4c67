"""A corpus of any size made of real text, without network: documents of sentences drawn across ../shared/data.

    .venv/bin/python benchmarks/big_corpus.py --mb 1000 --out /tmp/microgpt-corpus-1000MB.txt [--seed 0]

Every sentence of the shared sources (Gutenberg books, State of the Union addresses, Wikipedia, C4, CNN/DailyMail,
RedPajama CC, the NLTK web texts, the Hugging Face web/hq/tiny samples, Shakespeare, the UDHR in ~380 languages)
goes into one pool. Each output document is 5–40 sentences drawn at random from the pool (so sources mix), and
about one word in a hundred is replaced by a new word spliced from the front of one word and the back of another
(a typo, a name), so distinct words and chunks keep growing with the size, roughly like a real corpus, and no
document repeats. One document per line (newlines inside sentences become spaces), UTF-8. The same seed gives
the same stream, so a smaller corpus is a prefix of a larger one. Writes ~60 MB/s; never commit the output.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
SPACES = re.compile(r"\s+")


def _texts() -> Iterator[str]:
    """Every document of the shared data (decoding Latin-1 members where UTF-8 fails)."""
    for path in sorted((DATA / "hq").glob("*.txt")):
        yield path.read_text("utf-8")
    yield (DATA / "tinyshakespeare.txt").read_text("utf-8")
    for path in sorted((DATA / "web").glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                yield str(record.get("text") or record.get("article") or record.get("prefix", ""))
    for path in sorted((DATA / "hf").glob("*/*.parquet")):
        yield from (str(t) for t in pq.read_table(path, columns=["text"]).column("text").to_pylist())
    for path in sorted((DATA / "hf").glob("*/*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            yield from (str(json.loads(line)["text"]) for line in lines if line.strip())
    for path in [*sorted(DATA.glob("*/nltk_*.zip"))]:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith(".txt"):
                    data = archive.read(name)
                    try:
                        yield data.decode("utf-8")
                    except UnicodeDecodeError:
                        yield data.decode("latin-1")


def sentence_pool() -> list[str]:
    """All sentences of the shared data, whitespace collapsed, deduplicated in first-seen order."""
    seen: dict[str, None] = {}
    for text in _texts():
        for sentence in SENTENCE_END.split(text):
            sentence = SPACES.sub(" ", sentence).strip()
            if sentence:
                seen[sentence] = None
    return list(seen)


def documents(pool: list[str], seed: int) -> Iterator[str]:
    """An endless stream of documents (see the module docstring)."""
    rng = random.Random(seed)
    words = [w for w in {w for s in pool[:: max(1, len(pool) // 20000)] for w in s.split()} if w.isalpha()]
    words.sort()
    while True:
        sentences = rng.choices(pool, k=rng.randint(5, 40))
        tokens = " ".join(sentences).split(" ")
        for _ in range(max(1, len(tokens) // 100)):
            front, back = rng.choice(words), rng.choice(words)
            tokens[rng.randrange(len(tokens))] = front[: rng.randint(1, len(front))] + back[rng.randrange(len(back)) :]
        yield " ".join(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, required=True, help="size in MB (10^6 bytes), reached or just passed")
    parser.add_argument("--out", type=Path, required=True, help="where to write (e.g. /tmp/...; never the repo)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    pool = sentence_pool()
    print(f"{len(pool):,} distinct sentences, {sum(map(len, pool)) / 1e6:.1f} M characters")
    target, written, n_docs = int(args.mb * 1e6), 0, 0
    part = args.out.with_name(args.out.name + ".part")
    with part.open("wb") as out:
        for document in documents(pool, args.seed):
            data = (document + "\n").encode("utf-8")
            out.write(data)
            written += len(data)
            n_docs += 1
            if written >= target:
                break
    part.replace(args.out)
    seconds = time.perf_counter() - start
    print(f"wrote {args.out}: {written / 1e6:.1f} MB, {n_docs:,} documents in {seconds:.0f} s")


if __name__ == "__main__":
    main()
