"""Binary token shards: a 32-byte header, then the token ids as little-endian uint16 or uint32.

Header (little-endian): magic ``b"MGPTTOKS"`` (8 bytes), format version (uint32), bytes per token (uint32: 2 or 4),
token count (uint64), 8 reserved zero bytes. The header lets a reader check a file before memory-mapping it,
without trusting its name or the manifest alone.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt

from microgpt.common.atomic import atomic_write_bytes
from microgpt.common.errors import MicrogptError

MAGIC = b"MGPTTOKS"
VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")
HEADER_BYTES = HEADER.size  # 32
DTYPES: dict[int, type[np.unsignedinteger]] = {2: np.uint16, 4: np.uint32}


def token_dtype(n_vocab: int) -> type[np.unsignedinteger]:
    """uint16 when every id fits (vocabularies up to 65,536), else uint32."""
    return np.uint16 if n_vocab <= 1 << 16 else np.uint32


def encode_shard(tokens: npt.NDArray[np.unsignedinteger]) -> bytes:
    """Return the bytes of a shard file holding ``tokens`` (1-D, uint16 or uint32)."""
    assert tokens.ndim == 1 and tokens.itemsize in DTYPES, "tokens must be a 1-D uint16/uint32 array"
    header = HEADER.pack(MAGIC, VERSION, tokens.itemsize, tokens.size)
    return header + tokens.astype(tokens.dtype.newbyteorder("<"), copy=False).tobytes()


def write_shard(path: Path, tokens: npt.NDArray[np.unsignedinteger]) -> bytes:
    """Write a shard atomically (a crash never leaves half a shard) and return its bytes (for hashing)."""
    data = encode_shard(tokens)
    atomic_write_bytes(path, data)
    return data


def read_header(path: Path) -> tuple[type[np.unsignedinteger], int]:
    """Check a shard's header and size; return ``(dtype, token count)``.

    Raises:
        MicrogptError: When the file is missing, truncated, or not a microgpt shard of a known version.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read(HEADER_BYTES)
    except FileNotFoundError:
        raise MicrogptError(f"shard not found: {path}") from None
    if len(raw) < HEADER_BYTES:
        raise MicrogptError(f"{path}: too short to be a token shard")
    magic, version, itemsize, count = HEADER.unpack(raw)
    if magic != MAGIC:
        raise MicrogptError(f"{path}: not a microgpt token shard (bad magic)")
    if version != VERSION:
        raise MicrogptError(f"{path}: shard format version {version}, this microgpt reads {VERSION}")
    if itemsize not in DTYPES:
        raise MicrogptError(f"{path}: unknown token size {itemsize}")
    expected = HEADER_BYTES + itemsize * count
    if path.stat().st_size != expected:
        raise MicrogptError(f"{path}: {path.stat().st_size:,} bytes, header says {expected:,} (truncated?)")
    return DTYPES[itemsize], count


def open_shard(path: Path) -> npt.NDArray[np.unsignedinteger]:
    """Memory-map a shard's tokens read-only (no copy; pages load on demand)."""
    dtype, count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", offset=HEADER_BYTES, shape=(count,))
