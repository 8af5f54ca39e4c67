"""BPE training: microgpt's trainer against Hugging Face ``tokenizers``' BpeTrainer, same run, same text.

    .venv/bin/python benchmarks/bench_tokenizer_train.py [--vocab 4096 32768] [--workers 2]

Both train on ../shared/data/hf/web train (~10 MB) with the GPT-4 split pattern and ``<|endoftext|>``; each run
happens in a fresh process (so peak memory is its own); compression is bytes per token on the validation split.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

from microgpt.tokenizer.patterns import GPT4_PATTERN
from tokenizer_corpus import load_documents


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(vocab: int, workers: int) -> dict[str, Any]:
    from microgpt.tokenizer import Tokenizer

    docs, held_out = load_documents("train"), load_documents("validation")
    base = peak_rss_mb()
    start = time.perf_counter()
    tok = Tokenizer.train(docs, vocab, pattern="gpt4", workers=workers)
    seconds = time.perf_counter() - start
    tokens = sum(len(tok.encode_ordinary(d)) for d in held_out)
    return {"seconds": seconds, "tokens": tokens, "n_vocab": tok.n_vocab, "base_mb": base, "peak_mb": peak_rss_mb()}


def run_hf(vocab: int, workers: int) -> dict[str, Any]:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    docs, held_out = load_documents("train"), load_documents("validation")
    base = peak_rss_mb()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    start = time.perf_counter()
    tok.train_from_iterator(docs, trainer=trainer)
    seconds = time.perf_counter() - start
    tokens = sum(len(e.ids) for e in tok.encode_batch(held_out))
    n_vocab = tok.get_vocab_size()
    return {"seconds": seconds, "tokens": tokens, "n_vocab": n_vocab, "base_mb": base, "peak_mb": peak_rss_mb()}


def in_fresh_process(which: str, vocab: int, workers: int) -> dict[str, Any]:
    """Run one trainer in a new interpreter (its own peak RSS; our counting workers may fork from it)."""
    command = [sys.executable, __file__, "--child", which, "--vocab", str(vocab), "--workers", str(workers)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vocab", type=int, nargs="+", default=[4096, 32768])
    parser.add_argument("--workers", type=int, default=2, help="our counting processes (HF uses all cores)")
    parser.add_argument("--child", choices=["ours", "hf"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps((run_ours if args.child == "ours" else run_hf)(args.vocab[0], args.workers)))
        return
    held_out_bytes = sum(len(d.encode("utf-8")) for d in load_documents("validation"))
    train_mb = sum(len(d.encode("utf-8")) for d in load_documents("train")) / 1e6
    print(f"train {train_mb:.2f} MB, held-out {held_out_bytes / 1e6:.2f} MB (../shared/data/hf/web); pattern gpt4")
    print("vocab   HF s  ours s  ratio  HF B/tok  ours B/tok   diff  ours peak RSS")
    for vocab in args.vocab:
        hf = in_fresh_process("hf", vocab, args.workers)
        ours = in_fresh_process("ours", vocab, args.workers)
        hf_bpt, ours_bpt = held_out_bytes / hf["tokens"], held_out_bytes / ours["tokens"]
        print(
            f"{vocab:>6} {hf['seconds']:>6.2f} {ours['seconds']:>7.2f} {ours['seconds'] / hf['seconds']:>5.2f}x  "
            f"{hf_bpt:>8.3f} {ours_bpt:>10.3f} {100 * (ours_bpt / hf_bpt - 1):>+5.2f}%  "
            f"{ours['peak_mb']:.0f} MB (data loaded: {ours['base_mb']:.0f} MB)"
        )


if __name__ == "__main__":
    main()
