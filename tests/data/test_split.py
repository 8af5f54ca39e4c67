from __future__ import annotations

import pytest

from microgpt.common.errors import MicrogptError
from microgpt.common.sources import TextSource
from microgpt.data import DataConfig, iter_documents, iter_split_documents

TEXTS = [f"document number {i}" for i in range(2000)]


def split_of(config: DataConfig) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for split, document in iter_split_documents(config):
        result[split].append(document)
    return result


def test_fraction_split_is_deterministic_disjoint_and_complete() -> None:
    config = DataConfig(sources=[TextSource(texts=TEXTS)], val_fraction=0.1, test_fraction=0.05, seed=7)
    first = split_of(config)
    assert first == split_of(config)
    assert 150 < len(first["val"]) < 250 and 60 < len(first["test"]) < 140
    assert sorted(first["train"] + first["val"] + first["test"]) == sorted(TEXTS)
    assert list(iter_documents(config, "val")) == first["val"]
    other_seed = split_of(config.model_copy(update={"seed": 8}))
    assert other_seed["val"] != first["val"]


def test_count_split_takes_exact_numbers_and_repeats_stay_held_out() -> None:
    source = TextSource(texts=TEXTS[:50], weight=2)  # every document twice
    config = DataConfig(sources=[source], val_docs=5, test_docs=3)
    got = split_of(config)
    assert got["val"] == TEXTS[:5] * 2
    assert sorted(set(got["test"])) == sorted(TEXTS[5:8])
    assert not set(got["train"]) & (set(got["val"]) | set(got["test"]))  # no leak through the repeat


def test_fraction_split_keeps_duplicates_together() -> None:
    config = DataConfig(sources=[TextSource(texts=TEXTS[:300], weight=3)], val_fraction=0.2)
    got = split_of(config)
    assert not set(got["train"]) & set(got["val"])


def test_empty_corpus_and_empty_splits_are_clear_errors() -> None:
    with pytest.raises(MicrogptError, match="empty corpus"):
        list(iter_documents(DataConfig(sources=[TextSource(texts=["  ", ""])])))
    with pytest.raises(MicrogptError, match="the val split is empty"):
        list(iter_documents(DataConfig(sources=[TextSource(texts=["a", "b"])], val_fraction=0.01)))
    with pytest.raises(MicrogptError, match="the train split is empty"):
        list(iter_documents(DataConfig(sources=[TextSource(texts=["a", "b"])], val_docs=2)))
    with pytest.raises(ValueError, match="must be below 1"):
        DataConfig(sources=[TextSource(texts=["a"])], val_fraction=0.6, test_fraction=0.5)
    # no validation asked: fine
    assert list(iter_documents(DataConfig(sources=[TextSource(texts=["a"])], val_fraction=0))) == ["a"]
