from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from microgpt.common.aio import cache_path_for, download, read_text, run_sync
from microgpt.common.atomic import atomic_directory, atomic_write_text
from microgpt.common.errors import DownloadError, MicrogptError
from tests.http_server import ServerState

BODY = b"hello microgpt\n" * 1000


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith("."))


async def test_download_ok_and_cached(http_server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = http_server
    state.files["a.txt"] = BODY
    digest = hashlib.sha256(BODY).hexdigest()
    path = await download(f"{url}/files/a.txt", cache_dir=tmp_path, sha256=digest)
    assert path.read_bytes() == BODY
    assert path == cache_path_for(f"{url}/files/a.txt", tmp_path)
    again = await download(f"{url}/files/a.txt", cache_dir=tmp_path, sha256=digest)
    assert again == path
    assert state.hits["/files/a.txt"] == 1  # the second call never touched the network


async def test_404_is_not_retried(http_server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = http_server
    with pytest.raises(DownloadError, match="HTTP 404"):
        await download(f"{url}/status/404", cache_dir=tmp_path, backoff=0.01)
    assert state.hits["/status/404"] == 1
    assert leftovers(tmp_path) == []


async def test_500_then_200_is_retried(http_server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = http_server
    state.files["b"] = BODY
    path = await download(f"{url}/flaky/2/b", tmp_path / "b", backoff=0.01, retries=3)
    assert path.read_bytes() == BODY
    assert state.hits["/flaky/2/b"] == 3


async def test_persistent_500_gives_up(http_server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = http_server
    with pytest.raises(DownloadError, match=r"HTTP 500 \(after 3 tries\)"):
        await download(f"{url}/status/500", tmp_path / "x", backoff=0.01, retries=2)
    assert state.hits["/status/500"] == 3


async def test_slow_response_times_out(http_server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = http_server
    state.files["s"] = BODY
    with pytest.raises(DownloadError, match="timed out"):
        await download(f"{url}/slow/1.0/s", tmp_path / "s", timeout=0.2, retries=1, backoff=0.01)
    assert not (tmp_path / "s").exists()
    assert leftovers(tmp_path) == []


async def test_truncated_body_is_an_error(http_server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = http_server
    state.files["t"] = BODY
    with pytest.raises(DownloadError):
        await download(f"{url}/truncated/t", tmp_path / "t", retries=1, backoff=0.01)
    assert not (tmp_path / "t").exists()
    assert leftovers(tmp_path) == []


async def test_oversized_body_is_refused(http_server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = http_server
    state.files["big"] = BODY
    with pytest.raises(DownloadError, match="over the limit"):
        await download(f"{url}/files/big", tmp_path / "big", max_bytes=100)
    assert not (tmp_path / "big").exists()


async def test_hash_mismatch_and_bad_cache(http_server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = http_server
    state.files["h"] = BODY
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        await download(f"{url}/files/h", tmp_path / "h", sha256="0" * 64)
    assert not (tmp_path / "h").exists()
    # A corrupt cached copy is replaced by a fresh download.
    (tmp_path / "h").write_bytes(b"corrupt")
    path = await download(f"{url}/files/h", tmp_path / "h", sha256=hashlib.sha256(BODY).hexdigest())
    assert path.read_bytes() == BODY


async def test_concurrent_downloads(http_server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = http_server
    for i in range(5):
        state.files[f"f{i}"] = bytes([i]) * 1000
    paths = await asyncio.gather(*(download(f"{url}/files/f{i}", tmp_path / f"f{i}") for i in range(5)))
    assert [p.read_bytes()[:1] for p in paths] == [bytes([i]) for i in range(5)]


def test_only_http_urls(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="only http"):
        run_sync(download("file:///etc/passwd", tmp_path / "x"))


def test_read_text_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe")
    with pytest.raises(MicrogptError, match="not valid utf-8 at byte 3"):
        run_sync(read_text(tmp_path / "bad.txt"))
    with pytest.raises(MicrogptError, match="file not found"):
        run_sync(read_text(tmp_path / "missing.txt"))


def test_atomic_writes(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "a" / "f.txt", "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "d") as tmp:
        (tmp / "x").write_text("partial")
        raise RuntimeError("crash")
    assert not (tmp_path / "d").exists()
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "x").write_text("done")
    assert (tmp_path / "d" / "x").read_text() == "done"
    assert leftovers(tmp_path) == []


async def test_run_sync_works_inside_a_running_loop(http_server: tuple[str, ServerState], tmp_path: Path) -> None:
    # As in a Jupyter cell: synchronous library code called while this thread runs an event loop.
    url, state = http_server
    state.files["j"] = BODY
    path = run_sync(download(f"{url}/files/j", tmp_path / "j"))
    assert path.read_bytes() == BODY


async def test_redirects_are_followed(http_server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = http_server
    state.files["r.txt"] = BODY
    path = await download(f"{url}/redirect/3/r.txt", tmp_path / "r.txt")
    assert path.read_bytes() == BODY
    assert [state.hits[f"/redirect/{n}/r.txt"] for n in (3, 2, 1)] == [1, 1, 1]
    assert state.hits["/files/r.txt"] == 1


async def test_429_then_200_is_retried(http_server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = http_server
    state.files["l"] = BODY
    path = await download(f"{url}/limited/2/l", tmp_path / "l", backoff=0.01, retries=3)
    assert path.read_bytes() == BODY
    assert state.hits["/limited/2/l"] == 3
    with pytest.raises(DownloadError, match=r"HTTP 429 \(after 2 tries\)"):
        await download(f"{url}/limited/5/l", tmp_path / "m", backoff=0.01, retries=1)
    assert not (tmp_path / "m").exists()


async def test_refused_content_type_leaves_nothing(http_server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = http_server
    state.files["page.txt"] = b"<!doctype html><title>Sign in</title>"
    state.types["page.txt"] = "text/html; charset=utf-8"

    def no_html(content_type: str | None) -> str | None:
        return "a web page" if (content_type or "").startswith("text/html") else None

    with pytest.raises(DownloadError, match=r"/files/page.txt: a web page"):
        await download(f"{url}/files/page.txt", tmp_path / "p", check_content_type=no_html, retries=2)
    assert state.hits["/files/page.txt"] == 1  # not retried: the answer will not change
    assert not (tmp_path / "p").exists() and leftovers(tmp_path) == []
