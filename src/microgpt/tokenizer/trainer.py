"""Training a byte-level BPE vocabulary: count distinct chunks, then merge pairs incrementally.

Two phases:

1. **Counting** (:mod:`~microgpt.tokenizer.counting`): split every document with the pattern and count each
   distinct chunk, in bounded memory, on a few worker processes; long documents are cut first
   (:mod:`~microgpt.tokenizer.corpus`) so that no batch is too large.
2. **Merging** (:mod:`~microgpt.tokenizer.merges`): per merge, update only the chunks that hold the chosen pair
   and the pairs next to each occurrence; a max-heap with lazy deletion picks the next pair — never a full
   recount. The tie rule is written down there.

With numba (the default), counting and merging run as compiled kernels over flat arrays
(:mod:`~microgpt.tokenizer.count_kernels`, :mod:`~microgpt.tokenizer.merge_kernels`). A corpus under
``SMALL_CORPUS_CHARS`` (8 M characters) takes the plain loop: as fast there, and with no compile to wait for.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from microgpt.common.errors import MicrogptError
from microgpt.common.log import get_logger
from microgpt.tokenizer.counting import ChunkTable, count_chunks, count_table, load_kernels
from microgpt.tokenizer.merges import learn_vocab
from microgpt.tokenizer.patterns import pattern_name

log = get_logger(__name__)

# Below this many characters the plain loop trains as fast as the kernels (1.7 s for the demo's 2 MB either way),
# and the kernels' first compile after an install costs ~40 s: a small corpus never waits for it.
SMALL_CORPUS_CHARS = 8 << 20


def _peek_small(documents: Iterable[str], limit: int) -> tuple[Iterator[str], bool]:
    """Read documents until ``limit`` characters; return all of them again and whether the corpus ended first."""
    stream = iter(documents)
    head: list[str] = []
    size = 0
    for text in stream:
        head.append(text)
        size += len(text)
        if size >= limit:
            return itertools.chain(head, stream), False
    return iter(head), True


def train_vocab(
    documents: Iterable[str],
    vocab_size: int,
    pattern: str,
    n_special: int,
    *,
    workers: int = 1,
    progress: bool = False,
) -> list[bytes]:
    """Count chunks and learn ``vocab_size - n_special - 256`` merges; return token bytes in rank order.

    Raises:
        MicrogptError: When the corpus holds no text.
    """
    n_merges = vocab_size - n_special - 256
    documents, small = _peek_small(documents, SMALL_CORPUS_CHARS)
    kernels = None if small else load_kernels()  # a small corpus: the plain loop, no compile to wait for
    if kernels is not None:
        if pattern_name(pattern) is not None:
            table = count_table(documents, pattern, workers=workers, progress=progress)
        else:
            table = ChunkTable()
            table.add_counter(count_chunks(documents, pattern, workers=workers, progress=progress))
        if not len(table):
            raise MicrogptError("cannot train a tokenizer on an empty corpus (no text in the documents)")
        log.info("training BPE: %s distinct chunks, %s merges", f"{len(table):,}", f"{n_merges:,}")
        vocab = table.learn(n_merges)
    else:
        counts = count_chunks(documents, pattern, workers=workers, progress=progress)
        if not counts:
            raise MicrogptError("cannot train a tokenizer on an empty corpus (no text in the documents)")
        log.info("training BPE: %s distinct chunks, %s merges", f"{len(counts):,}", f"{n_merges:,}")
        vocab = learn_vocab(counts, n_merges, progress=progress)
    if len(vocab) - 256 < n_merges:
        log.warning("the corpus ran out of pairs after %d of %d merges", len(vocab) - 256, n_merges)
    return vocab
