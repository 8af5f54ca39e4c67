"""Gigabyte corpora: tokenizer training (ours vs HF ``tokenizers``) and ``microgpt data prepare``, time and peak RSS.

    .venv/bin/python benchmarks/big_corpus.py --mb 1000 --out /tmp/microgpt-corpus-1000MB.txt
    nice -n 10 .venv/bin/python benchmarks/bench_big_corpus.py /tmp/microgpt-corpus-1000MB.txt [--skip-prepare]

Each run is a fresh process tree sampled every 0.1 s with psutil: "peak RSS" is the largest sum of the resident
memory of the process and all its children at one moment (our counting workers are forked, so pages they share
with the parent count twice: an upper bound), "main" the largest resident memory of the main process alone, and
"peak PSS" the largest sum of proportional set sizes (each shared page split between its sharers: the tree's real
footprint).

- ours: ``microgpt tokenizer train CORPUS -v 32768 --pattern gpt4 --workers 2`` (the file streamed in blocks);
- HF: ``tokenizers``' BPE model, the same GPT-4 split regex then byte-level, ``BpeTrainer`` (vocab 32,768, the 256
  bytes as initial alphabet, ``<|endoftext|>``), ``Tokenizer.train([CORPUS])``, which streams the file line by line
  on all cores;
- prepare: ``microgpt data prepare`` with the GPT-2 tokenizer, one document per line (``separator: "\\n"``),
  ``data.workers`` 1 and 2, MB/s = corpus bytes / wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
MICROGPT = str(Path(sys.executable).with_name("microgpt"))
TOKENIZERS = ROOT.parent / "shared" / "data" / "tokenizers"

HF_TRAIN = """
import sys
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from microgpt.tokenizer.patterns import GPT4_PATTERN
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
])
trainer = trainers.BpeTrainer(vocab_size=int(sys.argv[2]), special_tokens=["<|endoftext|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tok.train([sys.argv[1]], trainer=trainer)
tok.save(sys.argv[3])
print("HF vocab", tok.get_vocab_size())
"""

PREPARE_CONFIG = """
out_dir: {out}
tokenizer: {{kind: pretrained, name: gpt2}}
data:
  sources:
    - {{type: file, paths: [{corpus}], format: text, separator: "\\n"}}
  val_fraction: 0.001
  workers: {workers}
"""


def measure(command: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``command``; wall and CPU seconds, peak RSS of the whole tree and of the main process (MB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    main = psutil.Process(proc.pid)
    peak_tree = peak_main = peak_pss = 0
    while proc.poll() is None:
        try:
            rss_main = main.memory_info().rss
            tree, pss = rss_main, main.memory_full_info().pss
            for child in main.children(recursive=True):
                try:
                    tree += child.memory_info().rss
                    pss += child.memory_full_info().pss
                except psutil.Error:
                    pass
        except psutil.Error:
            break
        peak_tree, peak_main, peak_pss = max(peak_tree, tree), max(peak_main, rss_main), max(peak_pss, pss)
        time.sleep(0.1)
    output = proc.communicate()[0].decode(errors="replace")
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{output[-3000:]}")
    return {
        "seconds": seconds,
        "cpu": cpu,
        "peak_mb": peak_tree / 1e6,
        "main_mb": peak_main / 1e6,
        "pss_mb": peak_pss / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--only", choices=["ours", "hf"], help="run one trainer (to run both at once on a busy box)")
    parser.add_argument("--skip-prepare", action="store_true")
    parser.add_argument("--prepare-workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    corpus = args.corpus.resolve()
    mb = corpus.stat().st_size / 1e6
    print(f"corpus {corpus} {mb:.1f} MB; load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="microgpt-bench-") as tmp:
        if not args.skip_train:
            rows = {}
            if args.only != "hf":
                rows["ours"] = measure(
                    [MICROGPT, "tokenizer", "train", str(corpus), "-o", f"{tmp}/ours", "-v", str(args.vocab)]
                    + ["--pattern", "gpt4", "--workers", str(args.workers)]
                )
            if args.only != "ours":
                rows["HF"] = measure([sys.executable, "-c", HF_TRAIN, str(corpus), str(args.vocab), f"{tmp}/hf.json"])
            print("trainer   wall s   CPU s  peak RSS MB  main RSS MB  peak PSS MB")
            for name, row in rows.items():
                wall, cpu, peak, main_mb, pss = (
                    row["seconds"],
                    row["cpu"],
                    row["peak_mb"],
                    row["main_mb"],
                    row["pss_mb"],
                )
                print(f"{name:<8} {wall:>7.1f} {cpu:>7.1f} {peak:>12.0f} {main_mb:>12.0f} {pss:>12.0f}")
            if len(rows) == 2:
                ours, hf = rows["ours"], rows["HF"]
                print(
                    f"ours / HF: wall {ours['seconds'] / hf['seconds']:.2f}x, CPU {ours['cpu'] / hf['cpu']:.2f}x, "
                    f"peak RSS {ours['peak_mb'] / hf['peak_mb']:.2f}x, peak PSS {ours['pss_mb'] / hf['pss_mb']:.2f}x "
                    f"(main process {ours['main_mb'] / hf['main_mb']:.2f}x); load {os.getloadavg()[0]:.1f}"
                )
        if not args.skip_prepare:
            env = dict(os.environ, MICROGPT_TOKENIZER_DIR=str(TOKENIZERS))
            for workers in args.prepare_workers:
                config = Path(tmp) / f"prepare{workers}.yaml"
                config.write_text(PREPARE_CONFIG.format(out=f"{tmp}/prep{workers}", corpus=corpus, workers=workers))
                row = measure([MICROGPT, "data", "prepare", str(config), "--no-progress"], env=env)
                print(
                    f"prepare, {workers} worker(s): {row['seconds']:.1f} s = {mb / row['seconds']:.1f} MB/s "
                    f"(CPU {row['cpu']:.1f} s), "
                    f"peak RSS {row['peak_mb']:.0f} MB (main {row['main_mb']:.0f} MB, PSS {row['pss_mb']:.0f} MB); "
                    f"load {os.getloadavg()[0]:.1f}"
                )


if __name__ == "__main__":
    main()
