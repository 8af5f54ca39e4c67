"""The ~10 MB of real English text the tokenizer benchmarks share: ../shared/data/hf/web (train / validation)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

WEB = Path(__file__).resolve().parents[2] / "shared" / "data" / "hf" / "web"


def load_documents(split: str = "train") -> list[str]:
    """The documents of the web sample (train: 4,320 docs, 10.0 MB; validation: 228 docs, 0.53 MB)."""
    path = WEB / f"{split}-00000-of-00001.parquet"
    return [str(text) for text in pq.read_table(path, columns=["text"]).column("text").to_pylist()]
