"""``microgpt tokenizer``: train a BPE vocabulary, encode, decode, and describe a tokenizer.

Input files for ``train`` are read as ``data prepare`` reads them (:mod:`microgpt.common.formats`): text in
``--encoding`` (UTF-8 by default), one document per file; ``.jsonl`` one per line (its ``text`` field); parquet,
gzip and zip too. A file that does not decode is an error naming the file and the byte offset — pass
``--encoding latin-1`` (which decodes any bytes) for such files; a truncated or corrupt gzip is an error too.
``encode -f`` and ``info -f`` read UTF-8 only.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from microgpt.common.aio import read_bytes, run_sync
from microgpt.common.atomic import check_out_dir
from microgpt.common.errors import MicrogptError
from microgpt.common.formats import EncodingError, detect_format, documents_from_file, text_blocks
from microgpt.common.sources import iterate_sync
from microgpt.tokenizer import Tokenizer
from microgpt.tokenizer.corpus import capped_documents, stream_document
from microgpt.tokenizer.patterns import resolve_pattern
from microgpt.tokenizer.tokenizer import ENDOFTEXT

tokenizer_app = typer.Typer(help="Train, inspect and use tokenizers.", no_args_is_help=True)

TOKENIZER_HELP = "a saved tokenizer folder, or a pretrained name (gpt2, r50k_base, p50k_base, cl100k_base, ...)"


def load_tokenizer(reference: str, cache_dir: Path | None = None) -> Tokenizer:
    """A folder written by ``save`` if ``reference`` is one, else a pretrained encoding name."""
    path = Path(reference)
    if path.is_dir():
        return Tokenizer.from_directory(path)
    return Tokenizer.from_pretrained(reference, cache_dir=cache_dir)


def _decode(data: bytes, path: Path, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        raise MicrogptError(
            f"{path}: not valid {encoding} at byte {error.start}; convert it first (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    except LookupError:
        raise MicrogptError(f"unknown text encoding {encoding!r}") from None


def _streamed_text(path: Path, encoding: str, pattern: str) -> Iterator[str]:
    """A plain text file as pieces that count as the whole (:func:`stream_document`); all-space files dropped."""
    held: list[str] | None = []  # pieces while the file has shown only white space (a blank file is no document)
    blocks = iterate_sync(text_blocks(path, label="tokenizer train", encoding=encoding), batch=4)  # 1 MiB at a time
    for piece in stream_document(blocks, pattern):
        if held is None:
            yield piece
        elif piece.strip():
            yield from held
            yield piece
            held = None
        else:
            held.append(piece)


def read_documents(paths: list[Path], encoding: str = "utf-8", pattern: str | None = None) -> Iterator[str]:
    """Yield the documents of files as ``data prepare`` reads them (:mod:`microgpt.common.formats`).

    Text files are one document each; JSON lines one per line (field ``text``); gzip, zip and parquet too. A
    truncated or corrupt gzip, bad JSON or bad bytes is an error naming the file. With the split ``pattern``
    given, a plain text file (``.txt``, ``.txt.gz``) is read block by block and yielded in pieces cut where the
    pattern always ends a chunk, so a file of gigabytes is never held whole and the chunk counts are unchanged.
    """
    for path in paths:
        try:
            if pattern is not None and detect_format(path.name)[0] == "text":
                yield from _streamed_text(path, encoding, pattern)
            else:
                yield from iterate_sync(documents_from_file(path, label="tokenizer train", encoding=encoding))
        except EncodingError as error:
            raise MicrogptError(
                f"{error.where}: not valid {error.encoding} at byte {error.offset:,}: pass --encoding latin-1 "
                "(it decodes any bytes) or the file's encoding, or convert the file to UTF-8"
            ) from None


@tokenizer_app.command("train")
def train(
    files: Annotated[list[Path], typer.Argument(help="files to train on (.txt, .jsonl, .parquet, .gz, .zip)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder to save the tokenizer in")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", "-v", help="vocabulary size, specials included")] = 4096,
    pattern: Annotated[str, typer.Option(help="split pattern: gpt2, gpt4 (= cl100k), o200k, or a regex")] = "gpt4",
    special: Annotated[
        list[str] | None, typer.Option("--special", help="special token (repeat for more; default <|endoftext|>)")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="processes that count chunks")] = 1,
    max_bytes: Annotated[int | None, typer.Option(help="train on at most this many bytes of text")] = None,
    encoding: Annotated[str, typer.Option(help="text encoding of the files (latin-1 accepts any bytes)")] = "utf-8",
    name: Annotated[str, typer.Option(help="the tokenizer's name")] = "bpe",
) -> None:
    """Train a byte-level BPE tokenizer on FILES and save it to --out."""
    check_out_dir(out, "--out folder")  # before training: a bad path must not cost the training time
    documents = capped_documents(read_documents(files, encoding, resolve_pattern(pattern)), max_bytes)
    tok = Tokenizer.train(
        documents,
        vocab_size,
        pattern=pattern,
        special_tokens=special if special is not None else (ENDOFTEXT,),
        workers=workers,
        progress=True,
        name=name,
    )
    tok.save(out)
    typer.echo(f"saved {tok.name} ({tok.n_vocab} tokens, fingerprint {tok.fingerprint[:12]}) to {out}")


@tokenizer_app.command("encode")
def encode(
    tokenizer: Annotated[str, typer.Argument(help=TOKENIZER_HELP)],
    text: Annotated[str | None, typer.Argument(help="text to encode (default: standard input)")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="encode this UTF-8 file instead")] = None,
    allow_special: Annotated[bool, typer.Option(help="encode special-token spellings as special tokens")] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="folder of pretrained files")] = None,
) -> None:
    """Print the token ids of TEXT (space-separated)."""
    tok = load_tokenizer(tokenizer, cache_dir)
    if file is not None:
        source = _decode(run_sync(read_bytes(file)), file, "utf-8")
    else:
        source = text if text is not None else sys.stdin.read()
    ids = tok.encode(source, allowed_special="all" if allow_special else frozenset())
    typer.echo(" ".join(map(str, ids)))


@tokenizer_app.command("decode")
def decode(
    tokenizer: Annotated[str, typer.Argument(help=TOKENIZER_HELP)],
    ids: Annotated[list[str] | None, typer.Argument(help="token ids (default: read from standard input)")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="folder of pretrained files")] = None,
) -> None:
    """Print the text of token IDS."""
    tok = load_tokenizer(tokenizer, cache_dir)
    words = ids if ids else sys.stdin.read().replace(",", " ").split()
    try:
        numbers = [int(word) for word in words]
    except ValueError as error:
        raise MicrogptError(f"token ids must be integers: {error}") from None
    typer.echo(tok.decode(numbers), nl=False)


@tokenizer_app.command("info")
def info(
    tokenizer: Annotated[str, typer.Argument(help=TOKENIZER_HELP)],
    file: Annotated[Path | None, typer.Option("--file", "-f", help="measure bytes per token on this file")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="folder of pretrained files")] = None,
) -> None:
    """Describe a tokenizer: size, special tokens, pattern, fingerprint, and compression on a file."""
    tok = load_tokenizer(tokenizer, cache_dir)
    typer.echo(f"name:        {tok.name}")
    typer.echo(f"n_vocab:     {tok.n_vocab}")
    typer.echo(f"pattern:     {tok.pattern_name}: {tok.pattern}")
    typer.echo(f"specials:    {', '.join(f'{k}={v}' for k, v in tok.special_tokens.items()) or '(none)'}")
    typer.echo(f"fingerprint: {tok.fingerprint}")
    if file is not None:
        data = run_sync(read_bytes(file))
        n_tokens = len(tok.encode_ordinary(_decode(data, file, "utf-8")))
        ratio = len(data) / max(n_tokens, 1)
        typer.echo(f"compression: {len(data):,} bytes → {n_tokens:,} tokens = {ratio:.3f} bytes/token ({file})")


def register(app: typer.Typer) -> None:
    """Add ``microgpt tokenizer ...`` to the CLI."""
    app.add_typer(tokenizer_app, name="tokenizer")
