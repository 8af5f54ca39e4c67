"""OpenAI's pretrained encodings, loaded into our tokenizer from a local cache or the official URLs.

The split patterns, special tokens, URLs and sha256 values are the ones tiktoken defines
(``tiktoken_ext/openai_public.py``). tiktoken itself is never used here.

Cache folder, first that applies: the ``cache_dir`` argument, ``$MICROGPT_TOKENIZER_DIR``,
``<microgpt cache>/tokenizers`` (the microgpt cache honours ``$MICROGPT_CACHE_DIR``). A file is stored under
its upstream name (``cl100k_base.tiktoken``, ``encoder.json``, ``vocab.bpe``), so copying the official files
into the folder is enough to work offline.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from microgpt.common.aio import default_cache_dir, download, run_sync, sha256_file
from microgpt.common.errors import ConfigError, DownloadError, MicrogptError
from microgpt.common.log import get_logger
from microgpt.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, O200K_PATTERN
from microgpt.tokenizer.storage import parse_ranks

log = get_logger(__name__)

ENV_DIR = "MICROGPT_TOKENIZER_DIR"
_BLOB = "https://openaipublic.blob.core.windows.net"
ENDOFTEXT = "<|endoftext|>"
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"
ENDOFPROMPT = "<|endofprompt|>"
GPT2_SPECIALS = {ENDOFTEXT: 50256}


@dataclass(frozen=True)
class RemoteFile:
    """A file of an encoding: where it comes from and its known sha256."""

    url: str
    sha256: str

    @property
    def filename(self) -> str:
        """The upstream file name, used as the name in the cache."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def tiktoken_cache_key(self) -> str:
        """The name tiktoken stores this file under in its cache (sha1 of the URL), to share one offline copy."""
        return hashlib.sha1(self.url.encode()).hexdigest()


R50K = RemoteFile(
    f"{_BLOB}/encodings/r50k_base.tiktoken", "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
)
P50K = RemoteFile(
    f"{_BLOB}/encodings/p50k_base.tiktoken", "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069"
)
CL100K = RemoteFile(
    f"{_BLOB}/encodings/cl100k_base.tiktoken", "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
)
O200K = RemoteFile(
    f"{_BLOB}/encodings/o200k_base.tiktoken", "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
)
GPT2_VOCAB = RemoteFile(
    f"{_BLOB}/gpt-2/encodings/main/vocab.bpe", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
)
GPT2_ENCODER = RemoteFile(
    f"{_BLOB}/gpt-2/encodings/main/encoder.json", "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
)

ALL_FILES = (R50K, P50K, CL100K, O200K, GPT2_VOCAB, GPT2_ENCODER)


@dataclass(frozen=True)
class Encoding:
    """A pretrained encoding: its rank file(s), split pattern and special tokens."""

    files: tuple[RemoteFile, ...]
    pattern: str
    special_tokens: dict[str, int]


ENCODINGS: dict[str, Encoding] = {
    "gpt2": Encoding((GPT2_ENCODER, GPT2_VOCAB), GPT2_PATTERN, GPT2_SPECIALS),
    "r50k_base": Encoding((R50K,), GPT2_PATTERN, {ENDOFTEXT: 50256}),
    "p50k_base": Encoding((P50K,), GPT2_PATTERN, {ENDOFTEXT: 50256}),
    "p50k_edit": Encoding(
        (P50K,), GPT2_PATTERN, {ENDOFTEXT: 50256, FIM_PREFIX: 50281, FIM_MIDDLE: 50282, FIM_SUFFIX: 50283}
    ),
    "cl100k_base": Encoding(
        (CL100K,),
        GPT4_PATTERN,
        {ENDOFTEXT: 100257, FIM_PREFIX: 100258, FIM_MIDDLE: 100259, FIM_SUFFIX: 100260, ENDOFPROMPT: 100276},
    ),
    "o200k_base": Encoding((O200K,), O200K_PATTERN, {ENDOFTEXT: 199999, ENDOFPROMPT: 200018}),
}


def tokenizer_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The folder that holds pretrained files: the argument, ``$MICROGPT_TOKENIZER_DIR``, or the default."""
    if cache_dir is not None:
        return Path(cache_dir)
    if env := os.environ.get(ENV_DIR):
        return Path(env)
    return default_cache_dir() / "tokenizers"


def fetch(remote: RemoteFile, cache_dir: Path) -> Path:
    """Return the verified local copy of ``remote``, downloading it when missing or corrupt.

    Raises:
        MicrogptError: When the cached file is corrupt and a fresh copy cannot be downloaded, or when the
            file is missing and cannot be downloaded.
    """
    path = cache_dir / remote.filename
    if path.is_file():
        actual = sha256_file(path)
        if actual == remote.sha256:
            return path
        problem = f"{path} is corrupt or truncated (sha256 {actual[:12]}…, expected {remote.sha256[:12]}…)"
        log.warning("%s; downloading it again from %s", problem, remote.url)
    else:
        problem = f"{path} is not in the cache"
        log.info("downloading %s to %s", remote.url, path)
    try:
        return run_sync(download(remote.url, path, sha256=remote.sha256, max_bytes=64 << 20))
    except DownloadError as error:
        raise MicrogptError(f"{problem}, and downloading it failed: {error}") from None


def load_gpt2_ranks(encoder_json: Path, vocab_bpe: Path) -> dict[bytes, int]:
    """Ranks of GPT-2 from its original files: ``encoder.json`` gives token → id, ``vocab.bpe`` the merges.

    GPT-2's files spell bytes as printable characters (its ``bytes_to_unicode`` table); this undoes that and
    checks that merge ``k`` of ``vocab.bpe`` makes the token of id ``256 + k``, so the two files agree.

    Raises:
        MicrogptError: When a file is missing or malformed, or the files disagree.
    """
    char_to_byte = _gpt2_char_to_byte()
    try:
        encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
        merges_text = vocab_bpe.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MicrogptError(f"cannot read GPT-2 files {encoder_json}, {vocab_bpe}: {error}") from None

    def to_bytes(text: str) -> bytes:
        try:
            return bytes(char_to_byte[ch] for ch in text)
        except KeyError:
            raise MicrogptError(f"{encoder_json}: token {text!r} is not in GPT-2's byte alphabet") from None

    ranks = {to_bytes(text): int(token_id) for text, token_id in encoder.items() if text != ENDOFTEXT}
    merge_lines = [line for line in merges_text.split("\n")[1:] if line]  # the first line is a version comment
    for k, line in enumerate(merge_lines):
        first, _, second = line.partition(" ")
        if ranks.get(to_bytes(first + second)) != 256 + k:
            raise MicrogptError(f"{vocab_bpe}: merge {k} ({line!r}) does not match {encoder_json}")
    if len(ranks) != 256 + len(merge_lines):
        raise MicrogptError(f"{encoder_json} has {len(ranks)} tokens but {vocab_bpe} has {len(merge_lines)} merges")
    return ranks


def _gpt2_char_to_byte() -> dict[str, int]:
    """GPT-2's reversible byte → printable character table, inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shift = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shift)] = b
            shift += 1
    return table


def load_pretrained(name: str, cache_dir: str | Path | None = None) -> tuple[dict[bytes, int], str, dict[str, int]]:
    """Load the ranks, pattern and special tokens of a pretrained encoding.

    Raises:
        ConfigError: For an unknown name (the message lists the known ones).
        MicrogptError: When a file cannot be found, verified or downloaded.
    """
    if name not in ENCODINGS:
        raise ConfigError(f"unknown pretrained tokenizer {name!r}; known: {', '.join(ENCODINGS)}")
    spec = ENCODINGS[name]
    folder = tokenizer_cache_dir(cache_dir)
    paths = [fetch(remote, folder) for remote in spec.files]
    if name == "gpt2":
        ranks = load_gpt2_ranks(paths[0], paths[1])
    else:
        ranks = parse_ranks(paths[0].read_bytes(), str(paths[0]))
    return ranks, spec.pattern, dict(spec.special_tokens)
