from __future__ import annotations

import asyncio
import gzip
import json
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microgpt.common.config import validate_config
from microgpt.common.errors import ConfigError, MicrogptError
from microgpt.common.formats import _split_text, detect_format
from microgpt.common.sources import (
    FileSource,
    HFSource,
    SourceConfig,
    TextSource,
    UrlSource,
    iterate_sync,
    mixed_documents,
    source_documents,
)
from microgpt.data.config import DataConfig
from tests.http_server import ServerState


def docs(*sources: SourceConfig) -> list[str]:
    return list(iterate_sync(mixed_documents(list(sources))))


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode()


def write_parquet(path: Path, texts: list[str], column: str = "text") -> Path:
    pq.write_table(pa.table({column: texts, "id": list(range(len(texts)))}), path)
    return path


# ---- config -------------------------------------------------------------------------------------------------


def test_yaml_style_config_picks_the_source_type_and_rejects_typos() -> None:
    config = validate_config(
        DataConfig,
        {
            "sources": [
                {"type": "text", "texts": ["a"]},
                {"type": "file", "paths": ["x.txt"], "separator": "\n\n"},
                {"type": "url", "urls": ["http://h/x.jsonl"]},
                {"type": "hf", "path": "parquet", "data_files": ["a.parquet"]},
            ]
        },
    )
    assert [type(s) for s in config.sources] == [TextSource, FileSource, UrlSource, HFSource]
    with pytest.raises(ConfigError, match="texs"):
        validate_config(DataConfig, {"sources": [{"type": "text", "texs": ["a"]}]})
    with pytest.raises(ConfigError, match="type"):
        validate_config(DataConfig, {"sources": [{"type": "ftp", "paths": ["a"]}]})
    with pytest.raises(ConfigError, match="scripts"):
        validate_config(DataConfig, {"sources": [{"type": "hf", "path": "evil.py"}]})


def test_detect_format() -> None:
    assert detect_format("a/b.jsonl.gz") == ("jsonl", True)
    assert detect_format("b.parquet") == ("parquet", False)
    assert detect_format("b.ZIP") == ("zip", False)
    assert detect_format("http://x/b.txt?raw=1") == ("text", False)


# ---- text and files -----------------------------------------------------------------------------------------


def test_text_source_limits() -> None:
    texts = ["one", "two", "  ", "three", "four"]
    assert docs(TextSource(texts=texts)) == ["one", "two", "three", "four"]  # whitespace-only dropped
    assert docs(TextSource(texts=texts, limit_docs=2)) == ["one", "two"]
    assert docs(TextSource(texts=texts, limit_bytes=9)) == ["one", "two"]  # "three" would make 11 bytes


async def test_sync_reading_inside_a_running_event_loop() -> None:
    # As in a Jupyter cell: the sync bridge is used while this thread already runs a loop.
    assert docs(TextSource(texts=["a", "b"])) == ["a", "b"]


def test_file_formats_plain_separator_jsonl_gzip_parquet_zip(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first file\nstill first")
    (tmp_path / "b.txt").write_bytes(b"\xef\xbb\xbfpara 1\n\npara 2\n\n\n\npara 3")  # BOM dropped
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(jsonl([{"body": "j1"}, {"body": "j2"}])))
    write_parquet(tmp_path / "d.parquet", ["p1", "p2", "p3"], column="body")
    with zipfile.ZipFile(tmp_path / "e.zip", "w") as archive:
        archive.writestr("corpus/x.txt", "zipped text")
        archive.writestr("corpus/y.jsonl", jsonl([{"body": "zj"}]).decode())
        archive.writestr("__MACOSX/._x.txt", "junk")

    assert docs(FileSource(paths=[str(tmp_path / "a.txt")])) == ["first file\nstill first"]
    assert docs(FileSource(paths=[str(tmp_path / "b.txt")], separator="\n\n")) == ["para 1", "para 2", "para 3"]
    assert docs(FileSource(paths=[str(tmp_path / "c.jsonl.gz")], text_field="body")) == ["j1", "j2"]
    assert docs(FileSource(paths=[str(tmp_path / "d.parquet")], text_field="body")) == ["p1", "p2", "p3"]
    assert docs(FileSource(paths=[str(tmp_path / "e.zip")], text_field="body")) == ["zipped text", "zj"]


def test_globs_and_folders_are_sorted(tmp_path: Path) -> None:
    for name in ["b.txt", "a.txt", "sub/c.txt"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name)
    assert docs(FileSource(paths=[str(tmp_path / "*.txt")])) == ["a.txt", "b.txt"]
    assert docs(FileSource(paths=[str(tmp_path / "**/*.txt")])) == ["a.txt", "b.txt", "sub/c.txt"]
    assert docs(FileSource(paths=[str(tmp_path)])) == ["a.txt", "b.txt", "sub/c.txt"]


def test_large_separator_file_streams_in_blocks(tmp_path: Path) -> None:
    # 3 MiB crosses several 1 MiB read blocks and gzip blocks: documents must come out whole.
    paragraphs = [f"paragraph {i} " + "é" * (i % 50) for i in range(60_000)]
    (tmp_path / "big.txt.gz").write_bytes(gzip.compress("\n\n".join(paragraphs).encode(), compresslevel=1))
    assert docs(FileSource(paths=[str(tmp_path / "big.txt.gz")], separator="\n\n")) == paragraphs


async def _pieces(text: str, sizes: list[int]) -> AsyncIterator[str]:
    start = 0
    for size in sizes:
        yield text[start : start + size]
        start += size
    yield text[start:]


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="ab|\n<doc> é", max_size=80),
    st.sampled_from(["|", "\n\n", "<doc>", "abab"]),
    st.lists(st.integers(1, 7), max_size=40),
)
def test_separator_split_equals_str_split_whatever_the_block_boundaries(
    text: str, separator: str, sizes: list[int]
) -> None:
    async def split() -> list[str]:
        return [doc async for doc in _split_text(_pieces(text, sizes), separator)]

    assert asyncio.run(split()) == [doc for doc in text.split(separator) if doc.strip()]


def test_real_web_sample(shared_data: Path) -> None:
    path = shared_data / "web" / "c4_en_sample_1000.jsonl.gz"
    documents = docs(FileSource(paths=[str(path)]))
    assert len(documents) == 1000
    assert documents[0].startswith("Beginners BBQ Class Taking Place in Missoula!")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"paths": ["missing.txt"]}, r"file source 'mine': file not found: missing.txt"),
        ({"paths": ["nothing-*.txt"]}, r"file source 'mine': no file matches"),
        ({"paths": ["bad.jsonl"]}, r"file source 'mine': .*bad.jsonl line 2: no field 'text'"),
        ({"paths": ["bad.parquet"]}, r"file source 'mine': .*bad.parquet: no column 'text'"),
        ({"paths": ["latin.txt"]}, r"file source 'mine': .*latin.txt: not valid UTF-8 at byte 3"),
        ({"paths": ["broken.jsonl"]}, r"broken.jsonl line 1: not valid JSON"),
    ],
)
def test_bad_files_name_the_source_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: dict[str, Any], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jsonl").write_bytes(jsonl([{"text": "ok"}, {"body": "no text"}]))
    write_parquet(tmp_path / "bad.parquet", ["x"], column="content")
    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1") + b"\xe9t\xe9")
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(MicrogptError, match=message):
        docs(FileSource(name="mine", **source))


# ---- mixing, shuffling, weights ------------------------------------------------------------------------------


def test_round_robin_mixing_and_weights() -> None:
    a = TextSource(texts=["a1", "a2", "a3"])
    b = TextSource(texts=["b1"], weight=2)
    assert docs(a, b) == ["a1", "b1", "a2", "b1", "a3"]
    half = docs(TextSource(texts=[f"d{i}" for i in range(1000)], weight=0.5, shuffle_seed=3))
    assert 400 < len(half) < 600 and len(set(half)) == len(half)
    assert docs(TextSource(texts=[f"d{i}" for i in range(1000)], weight=0.5, shuffle_seed=3)) == half
    texts = [f"t{i}" for i in range(1000)]
    more = docs(TextSource(texts=texts, weight=1.5))
    assert more[:1000] == texts  # one whole pass, then a seeded half of a second, in order and without repeats
    rest = more[1000:]
    assert 400 < len(rest) < 600 and rest == sorted(set(rest), key=texts.index)
    assert docs(TextSource(texts=texts, weight=1.5)) == more


def test_shuffle_is_deterministic_a_permutation_and_bounded() -> None:
    texts = [f"doc {i}" for i in range(500)]
    first = docs(TextSource(texts=texts, shuffle_seed=1, shuffle_buffer=64))
    assert first == docs(TextSource(texts=texts, shuffle_seed=1, shuffle_buffer=64))
    assert first != texts and sorted(first) == sorted(texts)
    assert first != docs(TextSource(texts=texts, shuffle_seed=2, shuffle_buffer=64))
    repeated = docs(TextSource(texts=texts, shuffle_seed=1, weight=2))
    assert repeated[:500] != repeated[500:]  # each pass is shuffled with its own seed
    assert sorted(repeated[:500]) == sorted(repeated[500:]) == sorted(texts)


# ---- URLs ---------------------------------------------------------------------------------------------------


async def test_urls_download_concurrently_in_order(http_server: tuple[str, ServerState]) -> None:
    base, state = http_server
    state.files["a.txt"] = b"alpha"
    state.files["b.jsonl.gz"] = gzip.compress(jsonl([{"text": "beta 1"}, {"text": "beta 2"}]))
    state.files["c.txt"] = b"gamma"
    urls = [f"{base}/slow/0.3/a.txt", f"{base}/files/b.jsonl.gz", f"{base}/flaky/1/c.txt"]
    source = UrlSource(urls=urls, retries=2)
    got = [doc async for doc in source_documents(source)]
    assert got == ["alpha", "beta 1", "beta 2", "gamma"]
    assert state.hits["/flaky/1/c.txt"] == 2  # retried after one 500
    # cached: a second pass does not touch the server
    again = [doc async for doc in source_documents(source)]
    assert again == got and state.hits["/files/b.jsonl.gz"] == 1


async def test_url_errors_name_the_source(http_server: tuple[str, ServerState]) -> None:
    base, state = http_server
    state.files["x.txt"] = b"x" * 100
    with pytest.raises(MicrogptError, match=r"url source 'web': .*HTTP 404"):
        [doc async for doc in source_documents(UrlSource(name="web", urls=[f"{base}/missing"]))]
    slow = UrlSource(urls=[f"{base}/slow/2/x.txt"], timeout=0.2, retries=1)
    with pytest.raises(MicrogptError, match=r"url source #3: .*timed out \(after 2 tries\)"):
        [doc async for doc in source_documents(slow, index=3)]
    with pytest.raises(MicrogptError, match="over the limit"):
        [doc async for doc in source_documents(UrlSource(urls=[f"{base}/files/x.txt"], max_bytes=10))]


# ---- Hugging Face datasets (real `datasets`, local files, offline) --------------------------------------------


def test_hf_parquet_and_jsonl_local_files(shared_data: Path) -> None:
    web = shared_data / "hf" / "web" / "validation-00000-of-00001.parquet"
    eager = docs(HFSource(path="parquet", data_files=str(web), split="train"))
    streamed = docs(HFSource(path="parquet", data_files=[str(web)], split="train", streaming=True))
    assert len(eager) == 228 and streamed == eager
    assert eager == pq.read_table(web).column("text").to_pylist()
    tiny = shared_data / "hf" / "tiny"
    files: dict[str, str | list[str]] = {
        "train": [str(tiny / "train.jsonl")],
        "validation": str(tiny / "validation.jsonl"),
    }
    validation = docs(HFSource(path="json", data_files=files, split="validation", limit_docs=7))
    assert len(validation) == 7
    assert validation[0] == json.loads((tiny / "validation.jsonl").read_text().splitlines()[0])["text"]


def test_hf_errors_name_the_source(shared_data: Path) -> None:
    with pytest.raises(MicrogptError, match=r"hf source 'hub': cannot load dataset 'no-such-user/no-such-set'"):
        docs(HFSource(name="hub", path="no-such-user/no-such-set"))
    web = shared_data / "hf" / "web" / "validation-00000-of-00001.parquet"
    with pytest.raises(MicrogptError, match=r"hf source #0: no column 'body'"):
        docs(HFSource(path="parquet", data_files=[str(web)], text_field="body"))


# ---- truncated and mislabelled inputs -------------------------------------------------------------------------


def _half_gzip(data: bytes) -> bytes:
    whole = gzip.compress(data)
    return whole[: len(whole) // 2]


@pytest.mark.parametrize("name", ["cut.txt.gz", "cut.jsonl.gz"])
def test_truncated_gzip_is_an_error_not_half_a_corpus(tmp_path: Path, name: str) -> None:
    records = [{"text": f"document number {i} " + "word " * (i % 7)} for i in range(20_000)]
    (tmp_path / name).write_bytes(_half_gzip(jsonl(records)))
    with pytest.raises(MicrogptError, match=rf"file source 'cut': .*{name}: the gzip stream is truncated"):
        docs(FileSource(name="cut", paths=[str(tmp_path / name)]))
    whole = tmp_path / "whole.jsonl.gz"  # the complete file, and two members concatenated, still read
    whole.write_bytes(gzip.compress(jsonl(records[:3])) + gzip.compress(jsonl(records[3:5])))
    assert docs(FileSource(paths=[str(whole)])) == [r["text"] for r in records[:5]]


async def test_truncated_gzip_over_http_is_an_error(http_server: tuple[str, ServerState]) -> None:
    base, state = http_server
    state.files["corpus.txt.gz"] = _half_gzip(b"a line of training text\n" * 20_000)
    source = UrlSource(name="web", urls=[f"{base}/files/corpus.txt.gz"])
    with pytest.raises(MicrogptError, match=r"url source 'web': .*/corpus.txt.gz: the gzip stream is truncated"):
        [doc async for doc in source_documents(source)]


async def test_web_page_at_a_text_url_is_refused(http_server: tuple[str, ServerState]) -> None:
    base, state = http_server
    state.files["page.txt"] = b"<!doctype html><form>Sign in to continue</form>"
    state.types["page.txt"] = "text/html; charset=utf-8"
    state.files["plain.txt"] = b"real text"
    state.types["plain.txt"] = "text/plain"
    source = UrlSource(name="web", urls=[f"{base}/files/plain.txt", f"{base}/files/page.txt"], retries=0)
    message = rf"url source 'web': {base}/files/page.txt: the server sent a web page \(text/html\), not the text file"
    with pytest.raises(MicrogptError, match=message):
        [doc async for doc in source_documents(source)]
    html = UrlSource(urls=[f"{base}/files/page.html"], retries=0)  # an .html name asks for a web page
    state.files["page.html"] = state.files["page.txt"]
    state.types["page.html"] = "text/html"
    assert [doc async for doc in source_documents(html)] == [state.files["page.html"].decode()]
