"""Data: split documents, tokenize them into shards in parallel, and serve resumable batches to each rank.

``TokenLoader`` is imported on first use so that tokenizer worker processes, which import this package, do not
pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from microgpt.data.config import SPLITS, DataConfig, Split
from microgpt.data.documents import iter_documents, iter_split_documents
from microgpt.data.manifest import Manifest
from microgpt.data.prepare import PrepareStats, prepare_data

if TYPE_CHECKING:
    from microgpt.data.dataset import PrepareConfig, prepare_dataset
    from microgpt.data.loader import TokenLoader

__all__ = [
    "SPLITS",
    "DataConfig",
    "Manifest",
    "PrepareConfig",
    "PrepareStats",
    "Split",
    "TokenLoader",
    "iter_documents",
    "iter_split_documents",
    "prepare_data",
    "prepare_dataset",
]


def __getattr__(name: str) -> Any:
    """Import the torch-heavy (loader) and tokenizer-dependent (dataset) parts lazily."""
    if name == "TokenLoader":
        from microgpt.data.loader import TokenLoader

        return TokenLoader
    if name in {"PrepareConfig", "prepare_dataset"}:
        from microgpt.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
