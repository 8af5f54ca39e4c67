"""Async file and network I/O at the edge of the pipeline: read files, download URLs into a verified cache.

The training loop stays synchronous; sources and downloads are async so many files and URLs can be read at
once. Sync callers use :func:`run_sync`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import aiofiles
import httpx

from microgpt.common.errors import DownloadError, MicrogptError
from microgpt.common.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")

CHUNK_BYTES = 1 << 20
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def run_sync(awaitable: Awaitable[T]) -> T:
    """Run an awaitable to completion from synchronous code (a fresh event loop each call).

    Inside a thread that already runs a loop (a Jupyter cell, an async caller), the fresh loop runs in a
    worker thread instead, since one thread cannot run two loops.
    """

    async def wrapper() -> T:
        return await awaitable

    if not _loop_running():
        return asyncio.run(wrapper())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="microgpt-sync") as pool:
        return pool.submit(asyncio.run, wrapper()).result()


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class LoopDriver:
    """Completes awaitables on one private event loop from synchronous code.

    When the calling thread already runs another loop (Jupyter), the private loop is driven from one worker
    thread, since one thread cannot run two loops.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drive ``loop``; a worker thread is used only if this thread already runs a loop."""
        self.loop = loop
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="microgpt-loop") if _loop_running() else None

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` to completion on the private loop and return its result."""
        if self._pool is None:
            return self.loop.run_until_complete(awaitable)
        return self._pool.submit(self.loop.run_until_complete, awaitable).result()


async def read_bytes(path: str | Path) -> bytes:
    """Read a whole file asynchronously.

    Raises:
        MicrogptError: When the file does not exist or cannot be read.
    """
    try:
        async with aiofiles.open(path, "rb") as handle:
            return await handle.read()
    except FileNotFoundError:
        raise MicrogptError(f"file not found: {path}") from None
    except OSError as error:
        raise MicrogptError(f"cannot read {path}: {error.strerror or error}") from None


async def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """Read a whole text file asynchronously.

    Raises:
        MicrogptError: When the file is missing or its bytes are not valid in ``encoding``.
    """
    data = await read_bytes(path)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        raise MicrogptError(f"{path}: not valid {encoding} at byte {error.start}") from None


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """Return microgpt's cache folder: ``$MICROGPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/microgpt`` or ``~/.cache``."""
    if env := os.environ.get("MICROGPT_CACHE_DIR"):
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "microgpt"


def cache_path_for(url: str, cache_dir: Path) -> Path:
    """Where the content of ``url`` is cached: ``downloads/<sha256 of url>-<last path part>``."""
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0][:64] or "index"
    return cache_dir / "downloads" / f"{key}-{name}"


def _check_url(url: str) -> None:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in {"http", "https"}:
        raise DownloadError(f"only http(s) URLs can be downloaded, got {url!r}")


ContentTypeCheck = Callable[[str | None], str | None]


async def _fetch_once(
    client: httpx.AsyncClient,
    url: str,
    dest: Path,
    max_bytes: int | None,
    sha256: str | None,
    check_content_type: ContentTypeCheck | None = None,
) -> None:
    """Stream ``url`` into a temporary file beside ``dest``, check type, size and hash, then rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise httpx.HTTPStatusError(f"HTTP {response.status_code}", request=response.request, response=response)
            if check_content_type is not None and (problem := check_content_type(response.headers.get("content-type"))):
                raise DownloadError(f"{url}: {problem}")
            declared = response.headers.get("content-length")
            if max_bytes is not None and declared is not None and int(declared) > max_bytes:
                raise DownloadError(f"{url}: {int(declared):,} bytes is over the limit of {max_bytes:,} bytes")
            digest = hashlib.sha256()
            size = 0
            async with aiofiles.open(tmp_name, "wb") as handle:
                async for block in response.aiter_raw(CHUNK_BYTES):
                    size += len(block)
                    if max_bytes is not None and size > max_bytes:
                        raise DownloadError(f"{url}: body is over the limit of {max_bytes:,} bytes")
                    digest.update(block)
                    await handle.write(block)
            if declared is not None and size != int(declared):
                raise httpx.RemoteProtocolError(f"truncated body: got {size} of {declared} bytes")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise DownloadError(f"{url}: sha256 mismatch (expected {sha256}, got {digest.hexdigest()})")
        os.replace(tmp_name, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)


async def download(
    url: str,
    dest: str | Path | None = None,
    *,
    sha256: str | None = None,
    cache_dir: str | Path | None = None,
    max_bytes: int | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 0.5,
    client: httpx.AsyncClient | None = None,
    check_content_type: ContentTypeCheck | None = None,
) -> Path:
    """Download ``url`` to ``dest`` (or the cache) with streaming, retries, a size limit and hash checks.

    A file already at the destination is reused without touching the network when its sha256 matches
    ``sha256`` (or when no hash is given). Writes are atomic: a failed download leaves nothing behind.

    Args:
        url: An ``http://`` or ``https://`` URL.
        dest: Where to write; default ``cache_path_for(url, cache_dir)``.
        sha256: Expected hex sha256 of the content; checked on the cached file and on the download.
        cache_dir: Cache folder (default :func:`default_cache_dir`).
        max_bytes: Refuse bodies larger than this.
        timeout: Seconds allowed for connecting and between bytes.
        retries: How many times to retry after a timeout, a broken connection or a 408/429/5xx status.
        backoff: First wait between tries in seconds; doubles each retry.
        client: An existing ``httpx.AsyncClient`` to share connections between concurrent downloads.
        check_content_type: Given the response's ``Content-Type``, returns why it is refused (or None to accept):
            e.g. :func:`microgpt.common.formats.content_type_problem` refuses a web page at a ``.txt`` URL.

    Returns:
        The path of the downloaded (or cached) file.

    Raises:
        DownloadError: On a non-retryable status, on giving up after ``retries``, on a size or hash failure, on a
            refused content type.
    """
    _check_url(url)
    target = Path(dest) if dest is not None else cache_path_for(url, Path(cache_dir or default_cache_dir()))
    if target.exists():
        if sha256 is None or sha256_file(target) == sha256.lower():
            return target
        log.warning("cached %s fails its sha256 check; downloading it again", target)
    owns_client = client is None
    http = client or httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=True)
    try:
        for attempt in range(retries + 1):
            try:
                await _fetch_once(http, url, target, max_bytes, sha256, check_content_type)
                return target
            except httpx.HTTPStatusError as error:
                status = error.response.status_code
                if status not in RETRYABLE_STATUS or attempt == retries:
                    raise DownloadError(f"{url}: HTTP {status} (after {attempt + 1} tries)") from None
                reason = f"HTTP {status}"
            except (httpx.TimeoutException, httpx.TransportError) as error:
                if attempt == retries:
                    kind = "timed out" if isinstance(error, httpx.TimeoutException) else f"failed: {error}"
                    raise DownloadError(f"{url}: {kind} (after {attempt + 1} tries)") from None
                reason = type(error).__name__
            wait = backoff * 2**attempt
            log.info("download %s: %s; retrying in %.1fs", url, reason, wait)
            await asyncio.sleep(wait)
    finally:
        if owns_client:
            await http.aclose()
    raise AssertionError("unreachable")  # pragma: no cover
