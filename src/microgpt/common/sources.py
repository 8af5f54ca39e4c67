r"""Where documents come from: inline text, files and globs, http(s) URLs, Hugging Face datasets.

A run's YAML lists sources under ``data.sources``; the ``type`` key picks the kind::

    sources:
      - {type: file, paths: ["data/*.jsonl.gz"], text_field: text, limit_docs: 10000}
      - {type: url, urls: ["https://example.org/corpus.txt"], separator: "\\n\\n", weight: 2}
      - {type: hf, path: parquet, data_files: ["../shared/data/hf/web/train-*.parquet"], streaming: true}

Each source yields documents (strings) asynchronously; :func:`mixed_documents` interleaves several. Per source:
``limit_docs``/``limit_bytes`` keep a prefix, ``shuffle_seed`` shuffles through a bounded buffer (so streaming
corpora stay streaming), and ``weight`` repeats the source (``2.5`` = two passes plus a seeded half of a third).
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import math
import random
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import httpx
from pydantic import Field, model_validator

from microgpt.common.aio import LoopDriver, download, run_sync
from microgpt.common.config import ConfigBase
from microgpt.common.errors import MicrogptError
from microgpt.common.formats import Format, content_type_problem, documents_from_file

T = TypeVar("T")


class _SourceBase(ConfigBase):
    name: str | None = Field(None, description="A short name for logs and error messages (default: type and index).")
    limit_docs: int | None = Field(None, gt=0, description="Keep at most this many documents (a prefix, per pass).")
    limit_bytes: int | None = Field(None, gt=0, description="Keep documents while their UTF-8 bytes fit this total.")
    weight: float = Field(1.0, gt=0, description="Passes over the source for mixing: 2 = twice, 0.5 = a seeded half.")
    shuffle_seed: int | None = Field(None, description="Shuffle documents with this seed (None: keep file order).")
    shuffle_buffer: int = Field(10_000, gt=0, description="Documents held for shuffling (bounds memory).")


class TextSource(_SourceBase):
    """Documents given inline in the config (tests, tiny experiments)."""

    type: Literal["text"] = Field("text", description="Source kind.")
    texts: list[str] = Field(description="The documents themselves.")


class _FormatFields(_SourceBase):
    format: Format = Field("auto", description="auto (from the name), text, jsonl or parquet.")
    text_field: str = Field("text", description="JSON field or parquet column holding the text.")
    separator: str | None = Field(
        None, description="Split plain text into documents on this string (None: 1 per file)."
    )
    match: dict[str, str] | None = Field(
        None,
        description="JSON lines / parquet: keep only records whose fields equal these values, e.g. "
        "{source: gutenberg} (one file, several sources).",
    )


class FileSource(_FormatFields):
    """Local files: paths, folders (all files below, sorted) and globs (``**`` allowed)."""

    type: Literal["file"] = Field("file", description="Source kind.")
    paths: list[str] = Field(min_length=1, description="Files, folders or glob patterns, read in order.")


class UrlSource(_FormatFields):
    """http(s) URLs, downloaded concurrently into the cache (streaming, retries, size limit), then read as files."""

    type: Literal["url"] = Field("url", description="Source kind.")
    urls: list[str] = Field(min_length=1, description="http(s) URLs, read in this order.")
    max_bytes: int | None = Field(None, gt=0, description="Refuse a download larger than this.")
    timeout: float = Field(30.0, gt=0, description="Seconds to connect and between bytes.")
    retries: int = Field(3, ge=0, description="Retries after a timeout, a broken connection or a 5xx.")
    concurrency: int = Field(4, gt=0, description="Downloads in flight at once.")


class HFSource(_SourceBase):
    """A Hugging Face dataset via ``datasets``: a hub name, a local folder, or a builder plus ``data_files``.

    Dataset scripts are never run (``datasets`` 4+ has no ``trust_remote_code``; we never pass it).
    """

    type: Literal["hf"] = Field("hf", description="Source kind.")
    path: str = Field(description="Hub name (user/dataset), local folder, or builder (parquet, json, text).")
    config_name: str | None = Field(None, description="The dataset configuration (``name`` in load_dataset).")
    data_dir: str | None = Field(None, description="Sub-folder of the dataset to load.")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="Files or globs, or split -> files (as load_dataset takes them)."
    )
    split: str = Field("train", description="Which split of the dataset to read.")
    text_field: str = Field("text", description="Column holding the text.")
    streaming: bool = Field(False, description="Stream records instead of building the Arrow cache (huge corpora).")
    revision: str | None = Field(None, description="Hub revision (tag, branch or commit).")

    @model_validator(mode="after")
    def _no_scripts(self) -> HFSource:
        if self.path.endswith(".py"):
            raise ValueError("path: dataset scripts are not supported (remote code is never run)")
        return self


SourceConfig = Annotated[TextSource | FileSource | UrlSource | HFSource, Field(discriminator="type")]


def source_label(source: SourceConfig, index: int) -> str:
    """How errors and logs name a source: ``file source 'web'`` or ``url source #2``."""
    return f"{source.type} source {source.name!r}" if source.name else f"{source.type} source #{index}"


def expand_paths(patterns: list[str], label: str) -> list[Path]:
    """Resolve files, folders and globs to a list of files, in the order given (each glob sorted).

    Raises:
        MicrogptError: When a path does not exist or a glob matches no file.
    """
    files: list[Path] = []
    for pattern in patterns:
        expanded = str(Path(pattern).expanduser())
        if glob.has_magic(expanded):
            matches = sorted(Path(match) for match in glob.glob(expanded, recursive=True))
            matches = [match for match in matches if match.is_file()]
            if not matches:
                raise MicrogptError(f"{label}: no file matches {pattern!r}")
            files.extend(matches)
        elif Path(expanded).is_dir():
            below = sorted(path for path in Path(expanded).rglob("*") if path.is_file())
            if not below:
                raise MicrogptError(f"{label}: folder {pattern!r} holds no files")
            files.extend(below)
        elif Path(expanded).is_file():
            files.append(Path(expanded))
        else:
            raise MicrogptError(f"{label}: file not found: {pattern}")
    return files


async def _text_documents(source: TextSource) -> AsyncIterator[str]:
    for text in source.texts:
        if text.strip():
            yield text


async def _file_documents(source: FileSource, label: str) -> AsyncIterator[str]:
    for path in await asyncio.to_thread(expand_paths, source.paths, label):
        async for document in documents_from_file(
            path,
            fmt=source.format,
            text_field=source.text_field,
            separator=source.separator,
            label=label,
            match=source.match,
        ):
            yield document


async def _url_documents(source: UrlSource, label: str) -> AsyncIterator[str]:
    gate = asyncio.Semaphore(source.concurrency)

    async def fetch(url: str, client: httpx.AsyncClient) -> Path:
        async with gate:
            try:
                return await download(
                    url,
                    max_bytes=source.max_bytes,
                    timeout=source.timeout,
                    retries=source.retries,
                    client=client,
                    check_content_type=partial(content_type_problem, name=url, fmt=source.format),
                )
            except MicrogptError as error:
                raise MicrogptError(f"{label}: {error}") from None

    timeout = httpx.Timeout(source.timeout)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
        # All downloads start at once (bounded by the semaphore); documents still come out in URL order.
        tasks = [asyncio.create_task(fetch(url, client)) for url in source.urls]
        try:
            for url, task in zip(source.urls, tasks, strict=True):
                path = await task
                async for document in documents_from_file(
                    path,
                    fmt=source.format,
                    text_field=source.text_field,
                    separator=source.separator,
                    label=label,
                    display=url,
                    match=source.match,
                ):
                    yield document
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _hf_batches(source: HFSource, label: str) -> Iterator[list[Any]]:
    """Load the dataset and yield its text column in batches (sync; runs in a worker thread)."""
    import datasets  # ~2.6 s to import, so only when an hf source is actually read

    data_files: Any = source.data_files
    try:
        dataset = datasets.load_dataset(
            source.path,
            source.config_name,
            data_dir=source.data_dir,
            data_files=data_files,
            split=source.split,
            streaming=source.streaming,
            revision=source.revision,
        )
    except (FileNotFoundError, ConnectionError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MicrogptError(f"{label}: cannot load dataset {source.path!r} split {source.split!r}: {first}") from None
    columns = dataset.column_names
    if columns is not None and source.text_field not in columns:
        raise MicrogptError(f"{label}: no column {source.text_field!r} (columns: {', '.join(columns)})")
    for batch in dataset.iter(batch_size=1024):
        if source.text_field not in batch:
            raise MicrogptError(f"{label}: no column {source.text_field!r} (columns: {', '.join(batch)})")
        yield batch[source.text_field]


async def _hf_documents(source: HFSource, label: str) -> AsyncIterator[str]:
    batches = _hf_batches(source, label)
    while (rows := await asyncio.to_thread(next, batches, None)) is not None:
        for value in rows:
            if not isinstance(value, str):
                raise MicrogptError(f"{label}: column {source.text_field!r} holds {type(value).__name__}, not text")
            if value.strip():
                yield value


def raw_documents(source: SourceConfig, label: str) -> AsyncIterator[str]:
    """One pass over a source's documents, before limits, shuffling and weighting."""
    if isinstance(source, TextSource):
        return _text_documents(source)
    if isinstance(source, FileSource):
        return _file_documents(source, label)
    if isinstance(source, UrlSource):
        return _url_documents(source, label)
    return _hf_documents(source, label)


async def _limited(documents: AsyncIterator[str], source: SourceConfig) -> AsyncIterator[str]:
    count = 0
    size = 0
    async for document in documents:
        if source.limit_docs is not None and count >= source.limit_docs:
            return
        if source.limit_bytes is not None:
            size += len(document.encode("utf-8"))
            if size > source.limit_bytes:
                return
        count += 1
        yield document


async def _shuffled(documents: AsyncIterator[str], seed: int, buffer_size: int) -> AsyncIterator[str]:
    """Buffered shuffle (as in tf.data / datasets streaming): exact for corpora within the buffer."""
    rng = random.Random(seed)
    buffer: list[str] = []
    async for document in documents:
        if len(buffer) < buffer_size:
            buffer.append(document)
            continue
        slot = rng.randrange(buffer_size)
        yield buffer[slot]
        buffer[slot] = document
    rng.shuffle(buffer)
    for document in buffer:
        yield document


def _keep(seed: int, index: int, fraction: float) -> bool:
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


async def source_documents(source: SourceConfig, index: int = 0) -> AsyncGenerator[str, None]:
    """Yield a source's documents with its limit, shuffle and weight applied.

    Args:
        source: The source config.
        index: Its position in the list (names it in errors when it has no ``name``).

    Raises:
        MicrogptError: On any bad input, naming the source.
    """
    label = source_label(source, index)
    passes = math.ceil(source.weight)
    for number in range(passes):
        fraction = min(1.0, source.weight - number)
        documents = _limited(raw_documents(source, label), source)
        if source.shuffle_seed is not None:
            documents = _shuffled(documents, source.shuffle_seed + number, source.shuffle_buffer)
        position = 0
        async for document in documents:
            position += 1
            if fraction >= 1.0 or _keep(source.shuffle_seed or 0, number * 2**40 + position, fraction):
                yield document


async def mixed_documents(sources: list[SourceConfig]) -> AsyncIterator[str]:
    """Interleave sources one document at a time (round robin); a finished source drops out.

    >>> from microgpt.common.aio import run_sync
    >>> async def collect() -> list[str]:
    ...     sources = [TextSource(texts=["a1", "a2", "a3"]), TextSource(texts=["b1"])]
    ...     return [doc async for doc in mixed_documents(sources)]
    >>> run_sync(collect())
    ['a1', 'b1', 'a2', 'a3']
    """
    streams = [source_documents(source, index) for index, source in enumerate(sources)]
    try:
        while streams:
            alive = []
            for stream in streams:
                try:
                    document = await anext(stream)
                except StopAsyncIteration:
                    continue
                alive.append(stream)
                yield document
            streams = alive
    finally:
        for stream in streams:
            await stream.aclose()


def check_readable(source: SourceConfig, index: int = 0) -> None:
    """Read a source's first document, so that a wrong column, a dead URL or a broken file fails now, not later.

    A URL is downloaded into the cache (the real read reuses it); a Hugging Face dataset is loaded. A source
    that yields no document at all is not an error here: its size is the reader's business.

    Raises:
        MicrogptError: What reading the source would raise, naming the source.
    """

    async def first() -> None:
        documents = raw_documents(source, source_label(source, index))
        try:
            await anext(documents, None)
        finally:
            aclose = getattr(documents, "aclose", None)
            if aclose is not None:
                await aclose()

    run_sync(first())


async def _take(stream: AsyncIterator[T], count: int) -> list[T]:
    items: list[T] = []
    async for item in stream:
        items.append(item)
        if len(items) >= count:
            break
    return items


def iterate_sync(stream: AsyncIterator[T], batch: int = 256) -> Iterator[T]:
    """Drive an async iterator from synchronous code on a private event loop (closed when done or abandoned).

    Items are pulled ``batch`` at a time: entering the loop costs ~30 µs, too much to pay per small document.
    """
    loop = asyncio.new_event_loop()
    run = LoopDriver(loop).run
    try:
        while items := run(_take(stream, batch)):
            yield from items
            if len(items) < batch:
                return
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            run(aclose())
        run(loop.shutdown_asyncgens())
        run(loop.shutdown_default_executor())
        loop.close()
