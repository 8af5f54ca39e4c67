"""Turn the bytes of a file into documents: plain text, JSON lines, parquet, and gzip/zip variants of these.

Everything here streams: a JSON-lines or separator-split text file is read in 256 KiB blocks (gzip decompressed
block by block) and parquet in record batches, so a file larger than memory is fine. The exceptions are a text
file that is one document (the document is the whole file anyway) and zip members, which are read whole.

Every error names the source and the file, e.g. ``file source 'web': data/a.jsonl line 12: no field 'text'``.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import zipfile
import zlib
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import aiofiles

from microgpt.common.errors import MicrogptError

Format = Literal["auto", "text", "jsonl", "parquet"]
BLOCK_BYTES = 1 << 18
Match = Mapping[str, str] | None  # keep only records whose fields equal these values
PARQUET_BATCH_ROWS = 1024


def detect_format(name: str) -> tuple[str, bool]:
    """Guess the format of a file from its name: ``(format, gzipped)``; format ``zip`` for zip archives.

    >>> detect_format("web/c4.jsonl.gz")
    ('jsonl', True)
    """
    lower = name.lower().split("?", 1)[0]
    gzipped = lower.endswith(".gz")
    if gzipped:
        lower = lower[: -len(".gz")]
    if lower.endswith(".zip"):
        return "zip", False
    if lower.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl", gzipped
    if lower.endswith(".parquet"):
        return "parquet", gzipped
    return "text", gzipped


HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})


def content_type_problem(content_type: str | None, name: str, fmt: Format = "auto") -> str | None:
    """Why a download's ``Content-Type`` does not fit the format its name (or ``fmt``) promises; None if it fits.

    A web page (``text/html``) where text, JSON lines, parquet or an archive was expected is the usual way a
    login wall, an error page or a moved file looks; its markup must not become training text. An ``.html``
    name asks for HTML and is accepted.

    >>> content_type_problem("text/html; charset=utf-8", "https://example.org/page.txt")
    'the server sent a web page (text/html), not the text file the name promises'
    >>> content_type_problem("text/plain", "https://example.org/page.txt") is None
    True
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    path = name.lower().split("?", 1)[0]
    if media not in HTML_TYPES or path.endswith((".html", ".htm")):
        return None
    guessed, gzipped = detect_format(name)
    kind = guessed if fmt == "auto" else fmt
    wanted = {"text": "text file", "jsonl": "JSON-lines file", "parquet": "parquet file", "zip": "zip archive"}
    what = ("gzip of a " if gzipped else "") + wanted.get(kind, f"{kind} file")
    return f"the server sent a web page ({media}), not the {what} the name promises"


async def _file_blocks(path: Path, where: str) -> AsyncIterator[bytes]:
    try:
        async with aiofiles.open(path, "rb") as handle:
            while block := await handle.read(BLOCK_BYTES):
                yield block
    except FileNotFoundError:
        raise MicrogptError(f"{where}: file not found") from None
    except OSError as error:
        raise MicrogptError(f"{where}: cannot read: {error.strerror or error}") from None


async def _gunzip(blocks: AsyncIterator[bytes], where: str) -> AsyncIterator[bytes]:
    """Decompress gzip block by block; handles multi-member files (``cat a.gz b.gz``).

    A stream that stops before its member's end (a partial download, a copy cut short) is an error: zlib
    alone would hand back the first half without complaint.
    """
    decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    started = False  # has the current member received any bytes?
    try:
        async for block in blocks:
            while block:
                started = True
                yield decoder.decompress(block)
                if not decoder.eof:
                    break
                block = decoder.unused_data
                decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                started = False
        tail = decoder.flush()
    except zlib.error as error:
        raise MicrogptError(f"{where}: not valid gzip: {error}") from None
    if started and not decoder.eof:
        raise MicrogptError(f"{where}: the gzip stream is truncated (it ends before its last member does)")
    if tail:
        yield tail


async def _one_block(data: bytes) -> AsyncIterator[bytes]:
    yield data


class EncodingError(MicrogptError):
    """A file's bytes are not valid in the text encoding it is read with.

    Attributes:
        where: The source and file.
        encoding: The encoding, as a person names it (``UTF-8``).
        offset: The offset of the first bad byte.
    """

    def __init__(self, where: str, encoding: str, offset: int) -> None:
        """Build the one-line message from its parts (a caller can say the fix its own way)."""
        super().__init__(f"{where}: not valid {encoding} at byte {offset:,} (convert the file to {encoding})")
        self.where, self.encoding, self.offset = where, encoding, offset


async def _decoded(blocks: AsyncIterator[bytes], where: str, encoding: str = "utf-8") -> AsyncIterator[str]:
    """Decode incrementally (a leading UTF-8 BOM is dropped); a bad byte is an error naming its offset."""
    name = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    decoder = codecs.getincrementaldecoder(name)("strict")
    offset = 0
    try:
        async for block in blocks:
            text = decoder.decode(block)
            offset += len(block)
            if text:
                yield text
        if tail := decoder.decode(b"", final=True):
            yield tail
    except UnicodeDecodeError as error:
        at = offset + error.start
        shown = "UTF-8" if name == "utf-8-sig" else encoding
        raise EncodingError(where, shown, at) from None


async def _split_text(chunks: AsyncIterator[str], separator: str | None) -> AsyncIterator[str]:
    """Yield whole-text or separator-delimited documents; whitespace-only documents are dropped."""
    if separator is None:
        parts = [chunk async for chunk in chunks]
        document = "".join(parts)
        if document.strip():
            yield document
        return
    # Blocks without a separator are only collected (joining them each time would be quadratic on a long document).
    pending: list[str] = []
    reach = len(separator) - 1  # a separator may start this many characters before the block
    tail = ""  # the last `reach` characters collected so far
    async for chunk in chunks:
        if separator not in tail + chunk:
            pending.append(chunk)
            tail = (tail + chunk)[-reach:] if reach else ""
            continue
        *complete, rest = "".join([*pending, chunk]).split(separator)
        pending, tail = [rest], rest[-reach:] if reach else ""
        for document in complete:
            if document.strip():
                yield document
    if (last := "".join(pending)).strip():
        yield last


async def _json_lines(
    chunks: AsyncIterator[str], text_field: str, where: str, match: Match = None
) -> AsyncIterator[str]:
    pending = ""
    number = 0
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split("\n")
        for line in lines:
            number += 1
            if document := _json_text(line, number, text_field, where, match):
                yield document
    if document := _json_text(pending, number + 1, text_field, where, match):
        yield document


def _json_text(line: str, number: int, text_field: str, where: str, match: Match = None) -> str | None:
    if not line.strip():
        return None
    try:
        record: Any = json.loads(line)
    except json.JSONDecodeError as error:
        raise MicrogptError(f"{where} line {number}: not valid JSON: {error.msg}") from None
    if match and isinstance(record, dict) and any(str(record.get(k)) != v for k, v in match.items()):
        return None  # a record another source of the same file keeps
    if not isinstance(record, dict) or text_field not in record:
        raise MicrogptError(f"{where} line {number}: no field {text_field!r} (set text_field to the right name)")
    value = record[text_field]
    if not isinstance(value, str):
        raise MicrogptError(f"{where} line {number}: field {text_field!r} is {type(value).__name__}, not text")
    return value if value.strip() else None


def _parquet_batches(source: Path | bytes, text_field: str, where: str, match: Match = None) -> Iterator[list[Any]]:
    """Read the text column of a parquet file in record batches (sync; run in a thread).

    With ``match``, only rows whose columns equal its values are kept (and only those columns are read besides).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(pa.BufferReader(source) if isinstance(source, bytes) else source)
    except (pa.ArrowException, OSError) as error:
        raise MicrogptError(f"{where}: not a readable parquet file: {error}") from None
    names = parquet.schema_arrow.names
    if text_field not in names:
        raise MicrogptError(f"{where}: no column {text_field!r} (columns: {', '.join(names)})")
    keys = list(match or {})
    absent = [key for key in keys if key not in names]
    if absent:
        raise MicrogptError(f"{where}: match names no column {absent[0]!r} (columns: {', '.join(names)})")
    columns = [text_field, *[key for key in keys if key != text_field]]
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
        texts = batch.column(0).to_pylist()
        if match:
            values = {key: batch.column(columns.index(key)).to_pylist() for key in keys}
            texts = [t for i, t in enumerate(texts) if all(str(values[k][i]) == v for k, v in match.items())]
        yield texts


async def _parquet_documents(
    source: Path | bytes, text_field: str, where: str, match: Match = None
) -> AsyncIterator[str]:
    batches = _parquet_batches(source, text_field, where, match)
    while (rows := await asyncio.to_thread(next, batches, None)) is not None:
        for value in rows:
            if value is None:
                continue
            if not isinstance(value, str):
                raise MicrogptError(f"{where}: column {text_field!r} holds {type(value).__name__}, not text")
            if value.strip():
                yield value


def _zip_members(path: Path, where: str) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError) as error:
        raise MicrogptError(f"{where}: not a readable zip file: {error}") from None
    # Skip macOS metadata and hidden files, which are never documents.
    return [name for name in names if not name.startswith("__MACOSX/") and not Path(name).name.startswith(".")]


def _zip_read(path: Path, member: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(member)


async def _documents_from_blocks(
    blocks: AsyncIterator[bytes],
    fmt: str,
    text_field: str,
    separator: str | None,
    where: str,
    encoding: str,
    match: Match = None,
) -> AsyncIterator[str]:
    if fmt == "jsonl":
        async for document in _json_lines(_decoded(blocks, where, encoding), text_field, where, match):
            yield document
    elif fmt == "parquet":
        data = b"".join([block async for block in blocks])
        async for document in _parquet_documents(data, text_field, where, match):
            yield document
    else:
        async for document in _split_text(_decoded(blocks, where, encoding), separator):
            yield document


async def text_blocks(path: Path, *, label: str = "source", encoding: str = "utf-8") -> AsyncIterator[str]:
    """The text of one plain text file (gzipped or not), decoded block by block, never held whole.

    For a reader that must not hold a file of gigabytes as one string (tokenizer training cuts it where chunks
    end). Raises as :func:`documents_from_file` does.
    """
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise MicrogptError(f"unknown text encoding {encoding!r}") from None
    where = f"{label}: {path}"
    blocks = _file_blocks(path, where)
    if detect_format(str(path))[1]:
        blocks = _gunzip(blocks, where)
    async for text in _decoded(blocks, where, encoding):
        yield text


async def documents_from_file(
    path: Path,
    *,
    fmt: Format = "auto",
    text_field: str = "text",
    separator: str | None = None,
    label: str = "source",
    display: str | None = None,
    encoding: str = "utf-8",
    match: Match = None,
) -> AsyncIterator[str]:
    """Yield the documents of one file, reading it with async I/O.

    Args:
        path: A local file: text, ``.jsonl``, ``.parquet``, any of these gzipped (``.gz``), or a ``.zip`` of them.
        fmt: ``"auto"`` guesses from the name (zip members by their own names); otherwise forces the format.
        text_field: The JSON field or parquet column that holds the text.
        separator: For text: split each file into documents on this string (``None``: one document per file).
        label: Names the source in error messages.
        display: How to name the file in error messages (default: the path; a URL for downloads).
        encoding: The text encoding of text and JSON-lines files (``latin-1`` decodes any bytes).
        match: JSON lines and parquet only: keep the records whose fields equal these values (as text).

    Raises:
        EncodingError: When the bytes are not valid in ``encoding`` (the byte offset is named).
        MicrogptError: On a missing or unreadable file, truncated or corrupt gzip, bad JSON, a missing field or
            column.
    """
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise MicrogptError(f"unknown text encoding {encoding!r}") from None
    shown = display or str(path)
    where = f"{label}: {shown}"
    guessed, gzipped = detect_format(shown)
    if guessed == "zip":
        for member in await asyncio.to_thread(_zip_members, path, where):
            member_fmt, member_gz = detect_format(member)
            data = await asyncio.to_thread(_zip_read, path, member)
            member_where = f"{where}!{member}"
            blocks = _one_block(data)
            if member_gz:
                blocks = _gunzip(blocks, member_where)
            use = member_fmt if fmt == "auto" else fmt
            async for document in _documents_from_blocks(
                blocks, use, text_field, separator, member_where, encoding, match
            ):
                yield document
        return
    use = guessed if fmt == "auto" else fmt
    if use == "parquet" and not gzipped:
        # Parquet needs random access: pyarrow reads the footer first, then only the text column.
        if not path.is_file():
            raise MicrogptError(f"{where}: file not found")
        async for document in _parquet_documents(path, text_field, where, match):
            yield document
        return
    blocks = _file_blocks(path, where)
    if gzipped:
        blocks = _gunzip(blocks, where)
    async for document in _documents_from_blocks(blocks, use, text_field, separator, where, encoding, match):
        yield document
