"""Documents of one split: the mixed source stream, cut into train/val/test deterministically."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from microgpt.common.errors import MicrogptError
from microgpt.common.sources import iterate_sync, mixed_documents
from microgpt.data.config import SPLITS, DataConfig, Split


class Splitter:
    """Assign each document of the stream to a split; see :class:`DataConfig` for the rule."""

    def __init__(self, config: DataConfig) -> None:
        """Start at the beginning of the stream."""
        self.config = config
        self.counts: dict[Split, int] = dict.fromkeys(SPLITS, 0)
        # Count mode: hashes of the held-out documents, so a repeat of one (weight > 1) never leaks into train.
        self._held: dict[bytes, Split] = {}

    def _digest(self, document: str) -> bytes:
        return hashlib.blake2b(document.encode("utf-8"), digest_size=16, key=str(self.config.seed).encode()).digest()

    def assign(self, document: str) -> Split:
        """Return the split of the next document."""
        config = self.config
        digest = self._digest(document)
        split: Split = "train"
        if config.val_docs is not None or config.test_docs is not None:
            if digest in self._held:
                split = self._held[digest]
            elif config.val_docs is not None and self.counts["val"] < config.val_docs:
                split = "val"
            elif config.test_docs is not None and self.counts["test"] < config.test_docs:
                split = "test"
            if split != "train" and digest not in self._held:
                self._held[digest] = split
        if split == "train":
            unit = int.from_bytes(digest[:8], "little") / 2**64
            val = 0.0 if config.val_docs is not None else config.val_fraction
            test = 0.0 if config.test_docs is not None else config.test_fraction
            if unit < val:
                split = "val"
            elif unit < val + test:
                split = "test"
        self.counts[split] += 1
        return split

    def check(self) -> None:
        """After the whole stream: fail when the corpus or a requested split came out empty.

        Raises:
            MicrogptError: Naming the empty split and what to change.
        """
        total = sum(self.counts.values())
        if total == 0:
            raise MicrogptError("empty corpus: the sources yielded no documents (check paths, fields and limits)")
        for split in SPLITS:
            if self.config.wants(split) and self.counts[split] == 0:
                raise MicrogptError(
                    f"the {split} split is empty ({total:,} documents in all): "
                    f"raise {split}_fraction or set {split}_docs, or add documents"
                )


def iter_split_documents(config: DataConfig) -> Iterator[tuple[Split, str]]:
    """Yield ``(split, document)`` for the whole mixed stream, in order; checks the splits at the end.

    Raises:
        MicrogptError: On bad input in any source, an empty corpus or an empty requested split.
    """
    splitter = Splitter(config)
    for document in iterate_sync(mixed_documents(list(config.sources))):
        yield splitter.assign(document), document
    splitter.check()


def iter_documents(config: DataConfig, split: Split = "train") -> Iterator[str]:
    """Yield the documents of one split, in stream order (what the tokenizer trains on for ``"train"``).

    Raises:
        MicrogptError: On bad input in any source, an empty corpus or an empty requested split.

    >>> from microgpt.common.sources import TextSource
    >>> config = DataConfig(sources=[TextSource(texts=["a", "b", "c"])], val_docs=1)
    >>> list(iter_documents(config, "val")), list(iter_documents(config, "train"))
    (['a'], ['b', 'c'])
    """
    for assigned, document in iter_split_documents(config):
        if assigned == split:
            yield document
