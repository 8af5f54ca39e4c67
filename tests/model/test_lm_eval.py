"""EleutherAI's lm-evaluation-harness as a real client of exported models, and the oracle of ``--harness``.

The harness runs in a subprocess (its ``datasets`` reads ``HF_HOME`` and the offline switches at import), offline,
on a local copy of its official ``hellaswag`` task: the task's YAML with the ``dataset_path`` pointed at a local
jsonl, and the installed package's own ``utils.py`` (its ``process_docs``/``preprocess``) beside it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from microgpt.cli.main import main
from microgpt.common.errors import MicrogptError
from microgpt.eval.hellaswag import (
    build_batch,
    harness_item,
    render_item,
    score_hellaswag,
    score_rows,
)
from microgpt.eval.hellaswag_data import HellaSwagItem, load_hellaswag
from microgpt.model.config import GPTConfig
from microgpt.model.gpt import GPT
from microgpt.model.hf import export_hf
from microgpt.tokenizer import Tokenizer

lm_eval = pytest.importorskip("lm_eval")

WORDS = (
    "the man woman dog ball kitchen water knife garden rope ladder paint brush car road guitar song child boat "
    "river cake oven table window snow ski slope horse fence shoe lace hair towel"
).split()
ACTIVITIES = ["Baking cookies", "Washing dishes", "Skiing", "How to tie a shoe", "Playing guitar"]
BLOCK = 48  # the models' context: long contexts are cut from the left, endings always fit


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_items(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """HellaSwag-style rows in the rowanz format, with WikiHow's artifacts the harness cleans up."""
    rng = random.Random(seed)
    rows = []
    for ind in range(n):
        ctx_a = sentence(rng, rng.randint(3, 30)).capitalize() + "."
        ctx_b = sentence(rng, rng.randint(0, 4))  # sometimes empty, always lower case (capitalised by the task)
        if ind % 3 == 0:
            ctx_a = f"[header] {ctx_a} [title] {sentence(rng, 3)}  [step] {sentence(rng, 4)}"
        endings = [sentence(rng, rng.randint(1, 6)) + ("  [substeps] more" if (ind + k) % 4 == 0 else ".")
                   for k in range(4)]  # fmt: skip
        rows.append({
            "ind": ind, "activity_label": rng.choice(ACTIVITIES), "ctx_a": ctx_a, "ctx_b": ctx_b,
            "ctx": (ctx_a + " " + ctx_b).strip(), "endings": endings, "label": rng.randrange(4),
        })  # fmt: skip
    return rows


def write_task(task_dir: Path, data_file: Path) -> None:
    """The harness's official hellaswag task, on a local file."""
    official = Path(lm_eval.__file__).parent / "tasks" / "hellaswag"
    task_dir.mkdir(parents=True)
    shutil.copy(official / "utils.py", task_dir / "utils.py")
    yaml_text = (official / "hellaswag.yaml").read_text(encoding="utf-8")
    assert "dataset_path: Rowan/hellaswag" in yaml_text and "process_docs: !function utils.process_docs" in yaml_text
    yaml_text = (
        yaml_text.replace("task: hellaswag", "task: microgpt_hellaswag")
        .replace("dataset_path: Rowan/hellaswag", f"dataset_path: json\ndataset_kwargs:\n  data_files: {data_file}")
        .replace("training_split: train\n", "")
        .replace("validation_split: validation", "validation_split: train")  # json's one split is "train"
        .replace("  - multiple_choice\n", "  - microgpt_test\n")
    )
    (task_dir / "microgpt_hellaswag.yaml").write_text(yaml_text, encoding="utf-8")


HARNESS = """
import json, sys
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
folder, task_dir = sys.argv[1], sys.argv[2]
out = simple_evaluate(
    model="hf", model_args=f"pretrained={folder},dtype=float32", tasks=["microgpt_hellaswag"], device="cpu",
    batch_size=4, task_manager=TaskManager(include_path=task_dir), log_samples=True,
)
samples = sorted(out["samples"]["microgpt_hellaswag"], key=lambda s: s["doc_id"])
print(json.dumps({
    "metrics": out["results"]["microgpt_hellaswag"],
    "lls": [[float(r[0]) for r in s["filtered_resps"]] for s in samples],
    "query": [s["doc"]["query"] for s in samples], "choices": [s["doc"]["choices"] for s in samples],
}))
"""


def run_harness(folder: Path, task_dir: Path, tmp_path: Path) -> dict[str, Any]:
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf-home"), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    done = subprocess.run(
        [sys.executable, "-c", HARNESS, str(folder), str(task_dir)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def tiny_exported(tmp_path: Path, items: list[dict[str, Any]], **options: Any) -> tuple[GPT, Tokenizer, Path]:
    texts = [" ".join([r["activity_label"], r["ctx"], *r["endings"]]) for r in items]
    tokenizer = Tokenizer.train([*texts, *[" ".join(WORDS + ACTIVITIES)] * 20], vocab_size=400)
    config = GPTConfig.model_validate(
        {"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": BLOCK, "vocab_size": tokenizer.n_vocab, **options}
    )
    torch.manual_seed(0)
    model = GPT(config).eval()
    with torch.no_grad():  # sharp, item-dependent preferences: no near-ties between endings
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    folder = export_hf(model, tokenizer, tmp_path / "hf")
    return model, tokenizer, folder


def test_harness_scores_equal_ours(tmp_path: Path) -> None:
    rows = make_items(24)
    data_file = tmp_path / "items.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    write_task(tmp_path / "tasks", data_file)
    # ReLU² without QK-norm (Arcee): the shipped presets' MLP; a short context, so many rows are cut from the left.
    model, tokenizer, folder = tiny_exported(tmp_path, rows, mlp="relu2")
    harness = run_harness(folder, tmp_path / "tasks", tmp_path)

    items = load_hellaswag(data_file)
    rendered = [harness_item(item) for item in items]
    # The same prompts and choices as the harness's own preprocessing...
    assert [item.context for item in rendered] == harness["query"]
    assert [list(item.endings) for item in rendered] == harness["choices"]
    assert any("[" in r["ctx_a"] for r in rows) and not any("[" in q for q in harness["query"])
    # ...the same log-likelihoods, truncated rows included...
    ids = [render_item(item, tokenizer, joint=True) for item in rendered]
    assert any(len(context) + len(ending) > BLOCK + 1 for context, endings in ids for ending in endings)  # cut rows
    tokens, mask = build_batch(ids, BLOCK + 1)
    with torch.no_grad():
        logits, _ = model(tokens[:, :-1])
    sum_loss, _ = score_rows(logits, tokens, mask, shifted=True)
    torch.testing.assert_close(-sum_loss.view(-1, 4), torch.tensor(harness["lls"]), atol=2e-4, rtol=1e-5)
    # ...so the same accuracies.
    ours = score_hellaswag(model, tokenizer, items, batch_size=5, harness=True)
    assert 0 < ours.acc < 1  # informative: not all right, not all wrong
    assert ours.acc == harness["metrics"]["acc,none"]
    assert ours.acc_norm_chars == harness["metrics"]["acc_norm,none"]

    # The CLI: import the exported folder, then `eval --task hellaswag --harness` prints the harness's figures.
    def cli(*args: str) -> None:
        try:
            main(list(args))
        except SystemExit as exit_:
            assert not exit_.code

    cli("import", str(folder), str(tmp_path / "run"))
    cli("eval", str(tmp_path / "run"), "--task", "hellaswag", "--harness", "--hellaswag-file", str(data_file),
        "--device", "cpu")  # fmt: skip


def test_harness_cli_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_items(8, seed=3)
    data_file = tmp_path / "items.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    model, tokenizer, folder = tiny_exported(tmp_path, rows, mlp="swiglu", qk_norm=True)
    try:
        main(["import", str(folder), str(tmp_path / "run")])
    except SystemExit as exit_:
        assert not exit_.code
    capsys.readouterr()
    for harness in (True, False):
        args = ["eval", str(tmp_path / "run"), "--task", "hellaswag", "--hellaswag-file", str(data_file)]
        try:
            main([*args, "--device", "cpu", *(["--harness"] if harness else [])])
        except SystemExit as exit_:
            assert not exit_.code
        out = capsys.readouterr().out
        result = score_hellaswag(model, tokenizer, load_hellaswag(data_file), harness=harness)
        if harness:
            assert f"(lm-eval rendering): acc {result.acc:.4f}, acc_norm {result.acc_norm_chars:.4f}" in out
        else:
            assert f"hellaswag: acc {result.acc:.4f}, acc_norm {result.acc_norm:.4f}" in out


def test_harness_rendering_needs_the_parts(tmp_path: Path) -> None:
    item = HellaSwagItem(ind=7, context="A man", endings=("a", "b", "c", "d"), label=0)
    with pytest.raises(MicrogptError, match="item 7 has no activity_label/ctx_a/ctx_b"):
        harness_item(item)
