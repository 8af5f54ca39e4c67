"""``match`` on file sources: several sources out of one jsonl or parquet file (e.g. one per domain)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from microgpt.common.errors import MicrogptError
from microgpt.common.sources import FileSource, iterate_sync, mixed_documents


def iter_source_documents(source: FileSource) -> list[str]:
    return list(iterate_sync(mixed_documents([source])))


RECORDS = [
    {"text": "a book chapter", "source": "books", "year": 1851},
    {"text": "a speech", "source": "speeches", "year": 1946},
    {"text": "another chapter", "source": "books", "year": 1813},
]


def test_match_keeps_the_records_of_one_source_in_jsonl_gzip_and_parquet(tmp_path: Path) -> None:
    jsonl = tmp_path / "mixed.jsonl.gz"
    jsonl.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in RECORDS).encode()))
    parquet = tmp_path / "mixed.parquet"
    pq.write_table(pa.Table.from_pylist(RECORDS), parquet)
    for path in (jsonl, parquet):
        books = FileSource(paths=[str(path)], match={"source": "books"})
        assert list(iter_source_documents(books)) == ["a book chapter", "another chapter"]
        # Values compare as text, so a number in the file matches its YAML spelling.
        old = FileSource(paths=[str(path)], match={"source": "books", "year": "1813"})
        assert list(iter_source_documents(old)) == ["another chapter"]
        everything = FileSource(paths=[str(path)])
        assert len(list(iter_source_documents(everything))) == 3


def test_match_on_a_missing_parquet_column_names_it(tmp_path: Path) -> None:
    parquet = tmp_path / "mixed.parquet"
    pq.write_table(pa.Table.from_pylist(RECORDS), parquet)
    with pytest.raises(MicrogptError, match="match names no column 'domain'"):
        list(iter_source_documents(FileSource(paths=[str(parquet)], match={"domain": "books"})))
