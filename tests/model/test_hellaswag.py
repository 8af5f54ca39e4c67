from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import torch
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str  # type: ignore[import-untyped]  # tiktoken ships no stubs here

from microgpt.common.errors import MicrogptError
from microgpt.eval.hellaswag import (
    build_batch,
    evaluate_hellaswag,
    render_item,
    score_hellaswag,
    score_rows,
)
from microgpt.eval.hellaswag_data import HellaSwagItem, load_hellaswag
from microgpt.model.config import GPTConfig
from microgpt.model.gpt import GPT
from tests.http_server import ServerState

GPT2_VOCAB = 50257


class ByteEncoder:
    """UTF-8 bytes as token ids: a 256-token vocabulary keeps the output head cheap in the slower tests."""

    def encode_ordinary(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


@pytest.fixture(scope="module")
def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding built offline from the shared rank file (an encoder we did not write)."""
    ranks = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tokenizers" / "r50k_base.tiktoken"
    if not ranks.exists():
        pytest.skip("no ../shared/data/tokenizers/r50k_base.tiktoken (`microgpt tokenizer info r50k_base` gets it)")
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=load_tiktoken_bpe(str(ranks)),
        special_tokens={"<|endoftext|>": 50256},
    )


@pytest.fixture
def val_file(shared_data: Path) -> Path:
    return shared_data / "eval" / "hellaswag_val_1000.jsonl"


def tiny_gpt(block_size: int = 512, seed: int = 0, vocab_size: int = 256) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=vocab_size)
    return GPT(config)


def oracle_losses(
    logits_fn: Any, context: list[int], ending: list[int], block_size: int | None = None
) -> tuple[float, float]:
    """Summed and mean NLL of the ending, one unpadded row at a time, straight from the logits.

    With ``block_size`` the row is its last ``block_size`` tokens (what a short-context model can see); an ending
    token at the window's first position has no prediction and is not scored.
    """
    full = context + ending
    window = full if block_size is None else full[-block_size:]
    ids = torch.tensor([window])
    logprobs = torch.log_softmax(logits_fn(ids)[0].float(), dim=-1)  # (T, V)
    start = max(1, len(context) - (len(full) - len(window)))  # where the ending starts inside the window
    nll = [-float(logprobs[t - 1, ids[0, t]]) for t in range(start, ids.size(1))]
    return sum(nll), sum(nll) / len(nll)


def oracle_accuracy(
    logits_fn: Any, encoding: Any, items: list[HellaSwagItem], block_size: int | None = None
) -> tuple[float, ...]:
    correct = correct_norm = correct_chars = 0
    for item in items:
        context = encoding.encode_ordinary(item.context)
        endings = [encoding.encode_ordinary(" " + e) for e in item.endings]
        scores = [oracle_losses(logits_fn, context, e, block_size) for e in endings]
        sums = [s for s, _ in scores]
        means = [m for _, m in scores]
        chars = [s / len(e) for s, e in zip(sums, item.endings, strict=True)]
        correct += min(range(4), key=sums.__getitem__) == item.label
        correct_norm += min(range(4), key=means.__getitem__) == item.label
        correct_chars += min(range(4), key=chars.__getitem__) == item.label
    n = len(items)
    return correct / n, correct_norm / n, correct_chars / n


# ---- reading the file ---------------------------------------------------------------------------------------


def test_load_shared_sample(val_file: Path) -> None:
    items = load_hellaswag(val_file)
    assert len(items) == 1000
    first = items[0]
    assert first.ind == 20022 and first.label == 3
    assert first.context.startswith("Pole vault is a sport") and first.context.endswith("a few women")
    assert first.endings[3].startswith("are in the gym")
    assert len(load_hellaswag(val_file, limit=7)) == 7


GOOD = {"ind": 1, "ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 2}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"ctx": "x", "label": 0}), "missing key(s) endings"),
        (json.dumps({**GOOD, "endings": ["a", "b", "c"]}), "list of 4 non-empty strings"),
        (json.dumps({**GOOD, "endings": ["a", "b", "", "d"]}), "list of 4 non-empty strings"),
        (json.dumps({**GOOD, "label": 4}), "'label' must be an integer 0-3"),
        (json.dumps({**GOOD, "label": True}), "'label' must be an integer 0-3"),
        (json.dumps({**GOOD, "ctx": 3}), "'ctx' must be a string"),
    ],
)
def test_malformed_line_names_line_number(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(MicrogptError, match=r"bad\.jsonl:3: ") as info:
        load_hellaswag(path)
    assert message in str(info.value)


def test_missing_empty_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(MicrogptError, match="not found"):
        load_hellaswag(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(MicrogptError, match="no HellaSwag items"):
        load_hellaswag(tmp_path / "empty.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(MicrogptError, match="not valid UTF-8"):
        load_hellaswag(tmp_path / "bin.jsonl")


# ---- rows and scores ----------------------------------------------------------------------------------------


def test_rows_score_only_the_ending(gpt2_encoding: tiktoken.Encoding) -> None:
    item = HellaSwagItem(ind=0, context="The cat sat", endings=("on the mat.", "up", "down a b c", "x"), label=0)
    context, endings = render_item(item, gpt2_encoding)
    assert context == gpt2_encoding.encode("The cat sat")
    assert endings[0] == gpt2_encoding.encode(" on the mat.")
    tokens, mask = build_batch([(context, endings)], block_size=64)
    assert tokens.shape == mask.shape == (4, len(context) + max(len(e) for e in endings))
    for row, ending in enumerate(endings):
        length = len(context) + len(ending)
        assert tokens[row, :length].tolist() == context + ending
        assert mask[row].tolist() == [False] * len(context) + [True] * len(ending) + [False] * (tokens.size(1) - length)
    # Truncation keeps the last block_size tokens and the ending's mask with them.
    short, short_mask = build_batch([(context, endings)], block_size=4)
    assert short.size(1) == 4
    assert short[0].tolist() == (context + endings[0])[-4:]
    assert short_mask[0].tolist() == ([False] * len(context) + [True] * len(endings[0]))[-4:]


def test_score_rows_matches_unpadded_oracle(gpt2_encoding: tiktoken.Encoding, val_file: Path) -> None:
    model = tiny_gpt(vocab_size=GPT2_VOCAB).eval()
    items = load_hellaswag(val_file, limit=2)
    rendered = [render_item(item, gpt2_encoding) for item in items]
    tokens, mask = build_batch(rendered, block_size=256)
    with torch.no_grad():
        sum_loss, mean_loss = score_rows(model(tokens)[0], tokens, mask)
        expected = [oracle_losses(lambda ids: model(ids)[0], c, e) for c, endings in rendered for e in endings]
    torch.testing.assert_close(sum_loss, torch.tensor([s for s, _ in expected]), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(mean_loss, torch.tensor([m for _, m in expected]), rtol=1e-5, atol=1e-5)


# ---- accuracy ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_transformers_model_equals_its_own_scoring(tmp_path: Path, val_file: Path) -> None:
    """The oracle: a transformers GPT-2 scored item by item, ending by ending, from its own logits.

    Our batched scoring must agree on the transformers model itself and on the same weights imported into
    microgpt's GPT through the Hugging Face adapter. (Byte tokens keep the output head small; the GPT-2 encoding
    of the rows is checked in ``test_rows_score_only_the_ending``.)
    """
    import transformers

    from microgpt.model.hf import import_hf

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=256, n_positions=1024, n_embd=32, n_layer=2, n_head=2)
    hf_lm = transformers.GPT2LMHeadModel(config)  # untyped (Any): transformers ships no stubs here
    hf_lm.save_pretrained(tmp_path / "hf")
    hf_model: torch.nn.Module = hf_lm
    hf_model.eval()
    imported, _ = import_hf(tmp_path / "hf")
    items = load_hellaswag(val_file, limit=16)
    with torch.no_grad():
        expected = oracle_accuracy(lambda ids: hf_model(ids).logits, ByteEncoder(), items)
    for model in (hf_model, imported):
        ours = score_hellaswag(model, ByteEncoder(), items, batch_size=5)
        assert (ours.acc, ours.acc_norm, ours.acc_norm_chars) == expected
        assert ours.n_items == 16


def test_batching_does_not_change_the_result(val_file: Path) -> None:
    model = tiny_gpt().train()
    items = load_hellaswag(val_file, limit=12)
    one = score_hellaswag(model, ByteEncoder(), items, batch_size=1)
    many = score_hellaswag(model, ByteEncoder(), items, batch_size=12)
    assert one == many
    assert model.training  # the mode is restored


def test_short_context_model_truncates(val_file: Path) -> None:
    model = tiny_gpt(block_size=24).eval()
    items = load_hellaswag(val_file, limit=8)
    result = score_hellaswag(model, ByteEncoder(), items, batch_size=4)
    with torch.no_grad():  # the oracle scores each row cut to the last 24 tokens, one at a time
        expected = oracle_accuracy(lambda ids: model(ids)[0], ByteEncoder(), items, block_size=24)
    assert result.n_items == 8 and (result.acc, result.acc_norm, result.acc_norm_chars) == expected


@pytest.mark.slow
def test_random_weights_score_at_chance(val_file: Path) -> None:
    """A random model knows nothing: about 1 in 4 right.

    200 items give a standard error of sqrt(0.25·0.75/200) ≈ 0.031, so [0.15, 0.35] is a ±3.2σ band; the seed
    is fixed, so the test is deterministic. A bug that scores the context, or the wrong ending, tends to land
    far outside (e.g. always picking the label's position or the longest ending).
    """
    model = tiny_gpt(seed=1)
    result = evaluate_hellaswag(model, ByteEncoder(), val_file, limit=200, batch_size=16)
    assert result.n_items == 200
    for value in (result.acc, result.acc_norm, result.acc_norm_chars):
        assert 0.15 <= value <= 0.35, result


def test_download_and_cache(http_server: tuple[str, ServerState], val_file: Path) -> None:
    url, state = http_server
    lines = val_file.read_bytes().splitlines(keepends=True)[:4]
    state.files["hellaswag_val.jsonl"] = b"".join(lines)
    model = tiny_gpt()
    first = evaluate_hellaswag(model, ByteEncoder(), f"{url}/files/hellaswag_val.jsonl")
    second = evaluate_hellaswag(model, ByteEncoder(), f"{url}/files/hellaswag_val.jsonl")
    assert first == second and first.n_items == 4
    assert state.hits["/files/hellaswag_val.jsonl"] == 1  # the second run read the cache


def test_bad_arguments() -> None:
    model = tiny_gpt()
    with pytest.raises(ValueError, match="no HellaSwag items"):
        score_hellaswag(model, ByteEncoder(), [])
    item = HellaSwagItem(ind=0, context="a", endings=("b", "c", "d", "e"), label=0)
    with pytest.raises(ValueError, match="batch_size"):
        score_hellaswag(model, ByteEncoder(), [item], batch_size=0)


# ---- the command line ----------------------------------------------------------------------------------------


def _cli(args: list[str]) -> int:
    from microgpt.cli.main import main

    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


@pytest.mark.slow
def test_cli_eval_task_hellaswag(tmp_path: Path, val_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from microgpt import load_model
    from microgpt.model.pretrain import RunConfig
    from microgpt.pipeline.pretraining import run_pretraining

    text = (val_file.parent.parent / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20_000]
    run = RunConfig.model_validate(
        {
            "out_dir": str(tmp_path / "run"),
            "tokenizer": {"vocab_size": 300},
            "data": {"sources": [{"type": "text", "texts": text.split("\n\n")}], "val_fraction": 0.1, "workers": 1},
            "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64},
            "train": {
                "max_steps": 2,
                "batch_size": 4,
                "warmup_steps": 0,
                "progress": False,
                "plot": False,
                "sample_tokens": 0,
                "device": "cpu",
            },
        }
    )
    run_pretraining(run)
    assert _cli(["eval", str(tmp_path / "run"), "--task", "hellaswag", "--hellaswag-file", str(val_file),
                 "--limit", "12", "--batch-size", "5", "--device", "cpu"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    loaded = load_model(tmp_path / "run", device="cpu")
    with torch.no_grad():  # the command's figures against the row-by-row oracle, not against its own code
        acc, acc_norm, _ = oracle_accuracy(
            lambda ids: loaded.model(ids)[0],
            loaded.tokenizer,
            load_hellaswag(val_file, limit=12),
            block_size=loaded.model.config.block_size,
        )
    assert f"hellaswag: acc {acc:.4f}, acc_norm {acc_norm:.4f}" in out and "(12 items)" in out

    bad = tmp_path / "bad.jsonl"
    bad.write_text(val_file.read_text(encoding="utf-8").splitlines()[0] + "\n{oops\n", encoding="utf-8")
    assert _cli(["eval", str(tmp_path / "run"), "--task", "hellaswag", "--hellaswag-file", str(bad)]) == 1
    assert "bad.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert _cli(["eval", str(tmp_path / "run"), "--task", "hellaswag", "--hellaswag-file", str(tmp_path / "x")]) == 1
    assert "HellaSwag file not found" in capsys.readouterr().err
