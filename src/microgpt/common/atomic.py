"""Atomic writes: write to a temporary name in the same folder, then rename over the target.

A crash or a full disk mid-write leaves the previous file intact, never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from microgpt.common.errors import MicrogptError


def check_out_dir(path: Path, what: str = "output folder") -> None:
    """Check, creating nothing, that the folder ``path`` exists or could be created.

    Raises:
        MicrogptError: When ``path`` or one of its parents is a file, or the nearest existing parent is not
            writable.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise MicrogptError(f"{what} {path} is a file, not a folder: choose another path")
        return
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir():
        raise MicrogptError(f"cannot create {what} {path}: {existing} is a file; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MicrogptError(f"cannot create {what} {path}: {existing} is not writable; choose another path")


def make_out_dir(path: Path, what: str = "output folder") -> Path:
    """Create the folder ``path`` (and its parents) for output, or say in one line why it cannot be.

    Args:
        path: The folder to create (an existing folder is fine).
        what: How to name it in the error (``out_dir``, ``--out``).

    Raises:
        MicrogptError: When ``path`` or one of its parents is a file, or the folder cannot be created.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MicrogptError(f"{what} {path} is a file, not a folder: choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file" if blocker is not None else (error.strerror or str(error))
        raise MicrogptError(f"cannot create {what} {path}: {reason}; choose another path") from None
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically and return ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(path: Path, *, replace: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it to ``path`` only when the block succeeds.

    Args:
        path: The directory to create.
        replace: Allow ``path`` to exist: the old directory stays whole until the new one is complete, then
            is moved aside, the new one renamed in and the old one deleted (a failure at any point leaves one
            of the two complete under ``path``).

    Yields:
        The temporary directory to fill. On error it is removed and ``path`` is untouched.

    Raises:
        FileExistsError: When ``path`` already exists and ``replace`` is false.
    """
    if path.exists() and not replace:
        raise FileExistsError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)  # an empty directory may be replaced by a rename
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the old one back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
