"""The on-disk format of a microgpt tokenizer: a folder with JSON metadata, the ranks and a readable listing.

::

    tokenizer.json   {"format": "microgpt-bpe", "version": 1, "name", "pattern", "special_tokens",
                      "n_vocab", "ranks_sha256", "fingerprint"}
    ranks.tiktoken   one line per token: base64(token bytes) SPACE rank (tiktoken's rank-file format)
    vocab.txt        one line per token: rank TAB the token as text (escaped), for people; never read back

Loading checks the format name and version, the sha256 of the ranks file and the fingerprint, so a newer,
truncated or edited file is a clear error rather than a silently different tokenizer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microgpt.common.atomic import atomic_write_bytes, atomic_write_text
from microgpt.common.errors import MicrogptError

if TYPE_CHECKING:
    from microgpt.tokenizer.tokenizer import Tokenizer

FORMAT = "microgpt-bpe"
VERSION = 1
META_FILE = "tokenizer.json"
RANKS_FILE = "ranks.tiktoken"
VOCAB_FILE = "vocab.txt"


def ranks_to_bytes(ranks: dict[bytes, int]) -> bytes:
    """Serialise ranks in tiktoken's format, sorted by rank."""
    lines = [base64.b64encode(token) + b" %d" % rank for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
    return b"\n".join(lines) + b"\n"


def parse_ranks(data: bytes, source: str) -> dict[bytes, int]:
    """Parse a tiktoken-format rank file.

    Raises:
        MicrogptError: When a line is malformed or a token repeats.
    """
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line:
            continue
        try:
            token_b64, rank_text = line.split()
            ranks[base64.b64decode(token_b64, validate=True)] = int(rank_text)
        except (ValueError, binascii.Error):
            raise MicrogptError(f"{source}: line {number} is not 'base64 rank': {line[:60]!r}") from None
    if len(set(ranks.values())) != len(ranks):
        raise MicrogptError(f"{source}: two tokens share one rank")
    return ranks


def _readable(token: bytes) -> str:
    """A token as one line of text: UTF-8 where valid, escapes for control characters and broken bytes."""
    text = token.decode("utf-8", errors="backslashreplace")
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii") for ch in text)


def save_tokenizer_files(tokenizer: Tokenizer, directory: Path) -> Path:
    """Write the three files of :mod:`this format <microgpt.tokenizer.storage>` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ranks_data = ranks_to_bytes(tokenizer.ranks)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "name": tokenizer.name,
        "pattern": tokenizer.pattern,
        "special_tokens": tokenizer.special_tokens,
        "n_vocab": tokenizer.n_vocab,
        "ranks_file": RANKS_FILE,
        "ranks_sha256": hashlib.sha256(ranks_data).hexdigest(),
        "fingerprint": tokenizer.fingerprint,
    }
    listing = [f"# {tokenizer.name}: {tokenizer.n_vocab} tokens; rank<TAB>token (escaped); specials last"]
    listing += [f"{rank}\t{_readable(token)}" for token, rank in sorted(tokenizer.ranks.items(), key=lambda kv: kv[1])]
    listing += [f"{token_id}\t{text}\t(special)" for text, token_id in sorted(tokenizer.special_tokens.items())]
    atomic_write_bytes(directory / RANKS_FILE, ranks_data)
    atomic_write_text(directory / VOCAB_FILE, "\n".join(listing) + "\n")
    atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return directory


def load_tokenizer_files(directory: Path) -> Tokenizer:
    """Read and check a saved tokenizer.

    Raises:
        MicrogptError: When a file is missing, the format is unknown or newer, or a check fails.
    """
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise MicrogptError(f"{directory} is not a saved tokenizer (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MicrogptError(f"{meta_path}: corrupt metadata ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MicrogptError(f"{meta_path}: not a microgpt tokenizer (format is not {FORMAT!r})")
    version = meta.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise MicrogptError(
            f"{meta_path}: format version {version} is newer than this microgpt reads ({VERSION}); upgrade microgpt"
        )
    try:
        pattern = str(meta["pattern"])
        name = str(meta["name"])
        specials = {str(k): int(v) for k, v in meta["special_tokens"].items()}
        expected_sha = str(meta["ranks_sha256"])
        expected_fingerprint = str(meta["fingerprint"])
    except (KeyError, AttributeError, TypeError, ValueError) as error:
        raise MicrogptError(f"{meta_path}: corrupt metadata (bad or missing field {error})") from None
    ranks_path = directory / str(meta.get("ranks_file", RANKS_FILE))
    try:
        data = ranks_path.read_bytes()
    except OSError as error:
        raise MicrogptError(f"cannot read {ranks_path}: {error.strerror or error}") from None
    actual_sha = hashlib.sha256(data).hexdigest()
    if actual_sha != expected_sha:
        raise MicrogptError(
            f"{ranks_path}: corrupt or truncated (sha256 {actual_sha[:12]}…, expected {expected_sha[:12]}…)"
        )
    ranks = parse_ranks(data, str(ranks_path))
    from microgpt.tokenizer.tokenizer import Tokenizer

    tokenizer = Tokenizer(ranks, pattern, specials, name=name)
    if tokenizer.fingerprint != expected_fingerprint:
        raise MicrogptError(f"{meta_path}: fingerprint mismatch; the files do not belong together")
    return tokenizer
