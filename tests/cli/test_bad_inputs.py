"""A sweep of bad inputs through the real CLI: each gets one ``error:`` line naming the input, the right exit
code, no traceback, and every file that was there before survives byte for byte.

The cases come from issue 16 (a new user's 141 bad inputs); each was a traceback, a silent wrong result or lost
work before. They run in-process (``microgpt.cli.main.main``) on one tiny trained run, copied per case.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from microgpt.cli.main import main
from tests.http_server import ServerState

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog, again and again.\n" for i in range(300))


# One step of a tiny model on the CPU, nothing periodic: the train section of every run here.
QUIET_TRAIN = {
    "max_steps": 1,
    "batch_size": 4,
    "eval_interval": 0,
    "eval_batches": 1,
    "checkpoint_interval": 0,
    "sample_tokens": 0,
    "progress": False,
    "plot": False,
    "device": "cpu",
    "threads": 1,
}


def _cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``corpus.txt``, ``run.yaml`` (relative paths), a trained ``run/`` and its ``hf/`` export."""
    root = tmp_path_factory.mktemp("trained")
    (root / "corpus.txt").write_text(TEXT)
    config = {
        "out_dir": "run",
        "tokenizer": {"vocab_size": 260},
        "data": {"sources": [{"type": "file", "paths": ["corpus.txt"], "separator": "\n"}], "val_docs": 20},
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "mlp": "swiglu"},  # exports as Llama
        "train": {**QUIET_TRAIN, "max_steps": 2, "eval_batches": 2},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert _cli(["train", "run.yaml"]) == 0
        assert _cli(["export", "run", "hf"]) == 0
    return root


@pytest.fixture
def workdir(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the trained folder, as the working directory."""
    work = tmp_path / "w"
    shutil.copytree(trained, work)
    monkeypatch.chdir(work)
    return work


def _half_gzip(data: bytes) -> bytes:
    whole = gzip.compress(data)
    return whole[: len(whole) // 2]


def _prepare_yaml(out_dir: str, source: dict[str, object]) -> str:
    return yaml.safe_dump({"tokenizer": {"vocab_size": 260}, "data": {"sources": [source]}, "out_dir": out_dir})


def _edit_meta(change: Callable[[dict[str, object]], object]) -> Callable[[Path], None]:
    def edit(work: Path) -> None:
        meta = work / "run" / "checkpoints" / "step-0000002" / "meta.json"
        meta.write_text(json.dumps(change(json.loads(meta.read_text()))))

    return edit


def list_of(meta: dict[str, object]) -> list[object]:
    return [meta]


def _files(work: Path) -> dict[Path, bytes]:
    return {p.relative_to(work): p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file()}


def _run_first(*argv: str) -> Callable[[Path], None]:
    """A setup step: run a command that must succeed (what a user did before the bad one)."""

    def setup(work: Path) -> None:
        assert _cli(list(argv)) == 0

    return setup


FINETUNE_YAML = yaml.safe_dump({"init_from": "run", "data_dir": "run/data", "out_dir": "ft", "train": QUIET_TRAIN})
PIPELINE_YAML = yaml.safe_dump(
    {
        "out_dir": "pipe",
        "stage1": None,
        "stage2": {
            "init_from": "run",
            "data": {"sources": [{"type": "file", "paths": ["rows.jsonl"]}], "val_docs": 2, "test_docs": 2},
            "train": QUIET_TRAIN,
            "ingredients": [{"seed": 1}, {"seed": 2}],
        },
        "soup": {"trajectory": []},
    }
)


@dataclass
class Case:
    """One bad input: files to add (relative path → bytes or text), the arguments, the exit code, the message."""

    id: str
    argv: list[str]
    message: str  # must appear in the one error line; ``{base}`` is the test server's URL
    code: int = 1
    files: dict[str, bytes | str] = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None
    absent: str | None = None  # must not appear in the output


CASES = [
    # ---- outputs that are files, or under one ------------------------------------------------------------------
    Case(
        "prepare-out-is-a-file",
        ["data", "prepare", "p.yaml"],
        "out_dir afile is a file, not a folder",
        files={"p.yaml": _prepare_yaml("afile", {"type": "text", "texts": [TEXT]})},
    ),
    Case(
        "prepare-out-under-a-file",
        ["data", "prepare", "p.yaml"],
        "cannot create out_dir afile/sub:",
        files={"p.yaml": _prepare_yaml("afile/sub", {"type": "text", "texts": [TEXT]})},
    ),
    Case("tokenizer-out-is-a-file", ["tokenizer", "train", "corpus.txt", "-o", "afile"], "--out folder afile is a"),
    Case("train-out-is-a-file", ["train", "run.yaml", "out_dir=afile"], "out_dir afile is a file"),
    Case("export-out-is-a-file", ["export", "run", "afile"], "export folder afile is a file"),
    # ---- broken and truncated files ------------------------------------------------------------------------------
    Case(
        "prepare-truncated-txt-gz",
        ["data", "prepare", "p.yaml"],
        "cut.txt.gz: the gzip stream is truncated",
        files={
            "cut.txt.gz": _half_gzip(TEXT.encode() * 20),
            "p.yaml": _prepare_yaml("d", {"type": "file", "paths": ["cut.txt.gz"]}),
        },
    ),
    Case(
        "prepare-truncated-jsonl-gz",
        ["data", "prepare", "p.yaml"],
        "cut.jsonl.gz: the gzip stream is truncated",
        files={
            "cut.jsonl.gz": _half_gzip("".join(json.dumps({"text": t}) + "\n" for t in TEXT.split("\n")).encode() * 20),
            "p.yaml": _prepare_yaml("d", {"type": "file", "paths": ["cut.jsonl.gz"]}),
        },
        absent="not valid JSON",
    ),
    Case(
        "tokenizer-train-truncated-gz",
        ["tokenizer", "train", "cut.txt.gz", "-o", "tok"],
        "cut.txt.gz: the gzip stream is truncated",
        files={"cut.txt.gz": _half_gzip(TEXT.encode() * 20)},
    ),
    Case(
        "tokenizer-train-corrupt-gz",
        ["tokenizer", "train", "bad.gz", "-o", "tok"],
        "bad.gz: not valid gzip",
        files={"bad.gz": b"\x1f\x8b\x08\x00 this is not deflate data at all"},
    ),
    Case(
        "tokenizer-encode-latin1",
        ["tokenizer", "encode", "run/data/tokenizer", "-f", "latin1.txt"],
        "latin1.txt: not valid utf-8 at byte 3",
        files={"latin1.txt": "café".encode("latin-1")},
        absent="--encoding",
    ),
    # ---- corrupted checkpoints ------------------------------------------------------------------------------------
    Case(
        "meta-without-files",
        ["sample", "run", "-n", "2"],
        "meta.json has no 'files' index",
        setup=_edit_meta(lambda meta: {k: v for k, v in meta.items() if k != "files"}),
    ),
    Case("meta-is-a-list", ["sample", "run", "-n", "2"], "meta.json holds a JSON list", setup=_edit_meta(list_of)),
    # ---- lost work ------------------------------------------------------------------------------------------------
    Case(
        "train-lower-max-steps",
        ["train", "run.yaml", "train.max_steps=1"],
        "step-0000002 is at step 2, past train.max_steps=1",
    ),
    Case("import-into-a-training-run", ["import", "hf", "run"], "run already holds checkpoint step-0000002"),
    # ---- soups ---------------------------------------------------------------------------------------------------
    Case("soup-same-ingredient-twice", ["soup", "run", "run", "--out", "s", "-r", "uniform"], "same checkpoint"),
    Case(
        "soup-over-an-existing-soup",
        ["soup", "run", "--out", "s", "-r", "uniform"],
        "already holds a soup; pass --overwrite",
        setup=_run_first("soup", "run", "--out", "s", "-r", "uniform"),
    ),
    Case(
        "soup-max-batches-0",
        ["soup", "run", "--out", "s", "-r", "greedy", "--data", "run/data", "--max-batches", "0"],
        "--max-batches",
        code=2,
        absent="empty",
    ),
    Case(
        "soup-data-of-another-tokenizer",
        ["soup", "run", "--out", "s", "-r", "greedy", "--data", "other"],
        "not the ingredients' tokenizer",
        files={
            "p.yaml": yaml.safe_dump(
                {
                    "tokenizer": {"vocab_size": 270},
                    "data": {"sources": [{"type": "file", "paths": ["corpus.txt"], "separator": "\n"}], "val_docs": 5},
                    "out_dir": "other",
                }
            )
        },
        setup=_run_first("data", "prepare", "p.yaml"),
    ),
    # ---- stage 2 -------------------------------------------------------------------------------------------------
    Case(
        "finetune-rerun-with-other-settings",
        ["finetune", "ft.yaml", "train.lr=0.01"],
        "holds a fine-tune with other settings",
        files={"ft.yaml": FINETUNE_YAML},
        setup=_run_first("finetune", "ft.yaml"),
    ),
    Case(
        "pipeline-stage2-source-wrong-column",
        ["pipeline", "pipe.yaml"],
        "no field 'text'",
        files={"pipe.yaml": PIPELINE_YAML, "rows.jsonl": json.dumps({"body": "a document"}) + "\n"},
        absent="Traceback",
    ),
    # ---- hostile URLs ---------------------------------------------------------------------------------------------
    Case(
        "prepare-html-at-txt-url",
        ["data", "prepare", "p.yaml"],
        "{base}/files/login.txt: the server sent a web page (text/html)",
        files={"p.yaml": _prepare_yaml("d", {"type": "url", "urls": ["{base}/files/login.txt"], "retries": 0})},
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_clear_line_and_loses_nothing(
    case: Case, workdir: Path, http_server: tuple[str, ServerState], capsys: pytest.CaptureFixture[str]
) -> None:
    base, state = http_server
    (workdir / "afile").write_text("a file where a folder is expected\n")
    state.files["login.txt"] = b"<!doctype html><form>Sign in</form>"
    state.types["login.txt"] = "text/html; charset=utf-8"
    for name, content in case.files.items():
        data = content.replace("{base}", base).encode() if isinstance(content, str) else content
        (workdir / name).write_bytes(data)
    if case.setup is not None:
        case.setup(workdir)
    before = _files(workdir)
    capsys.readouterr()
    code = _cli(case.argv)
    out, err = capsys.readouterr()
    assert code == case.code, err
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert case.message.replace("{base}", base) in errors[0], errors[0]
    if case.absent is not None:
        assert case.absent not in out + err
    after = _files(workdir)
    assert {path: after.get(path) for path in before} == before  # every file that was there, byte for byte


@pytest.mark.slow
def test_top_p_zero_keeps_the_top_token(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert _cli(["sample", "run", "-p", "line", "-n", "8", "--top-p", "0", "--seed", "1"]) == 0
    nucleus = capsys.readouterr().out
    assert _cli(["sample", "run", "-p", "line", "-n", "8", "--temperature", "0"]) == 0
    assert nucleus == capsys.readouterr().out  # p → 0 leaves only the most likely token: greedy decoding


@pytest.mark.slow
def test_eval_max_batches_reports_what_was_scored(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert _cli(["eval", "run", "--batch-size", "2", "--max-batches", "1", "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip()
    assert "(32 of the split's" in line and "tokens in 1 batch(es)" in line, line  # 2 sequences × 16 targets
    assert _cli(["eval", "run", "--device", "cpu"]) == 0
    assert "tokens scored" in capsys.readouterr().out


@pytest.mark.slow
def test_import_refuses_an_occupied_folder_unless_overwrite(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["import", "hf", "imported"]) == 0
    step = workdir / "imported" / "checkpoints" / "step-0000000"
    first = (step / "meta.json").read_bytes()
    capsys.readouterr()
    assert _cli(["import", "hf", "imported"]) == 1
    assert "imported already holds checkpoint step-0000000" in capsys.readouterr().err
    assert (step / "meta.json").read_bytes() == first
    assert _cli(["import", "hf", "run", "--overwrite"]) == 0  # replaces the training run's checkpoints
    assert sorted(p.name for p in (workdir / "run" / "checkpoints").iterdir()) == ["step-0000000"]
