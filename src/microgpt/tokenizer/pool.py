"""``Tokenizer.encode_batch`` on workers: threads for the compiled encoder, else processes kept across calls.

:func:`encode_batch` stays in this process for little text (``PARALLEL_MIN_CHARS``). With the compiled encoder
(numba and a known pattern) the workers are threads, since it releases the GIL; otherwise they are processes
(:class:`EncodePool`), kept alive across calls so their caches stay warm.

Each worker holds its own copy of the tokenizer: inherited by ``fork`` where the platform has it (no copy of the
rank table is sent), else pickled once at start. Texts go out in a few contiguous groups per worker; ids come
back as ``array('l')`` buffers, which pickle far faster than lists of Python ints.
"""

from __future__ import annotations

import array
import functools
import weakref
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from typing import TYPE_CHECKING, Literal, TypedDict

from microgpt.common.processes import process_context, start_method
from microgpt.tokenizer.specials import check_special

if TYPE_CHECKING:
    from microgpt.tokenizer.tokenizer import Tokenizer

GROUPS_PER_WORKER = 4  # a few groups per worker evens out documents of different lengths
PARALLEL_MIN_CHARS = 1 << 20  # below this much text, encode_batch stays in this process

SpecialOption = Literal["all"] | Collection[str]


class _EncodeOptions(TypedDict):
    allowed_special: SpecialOption
    disallowed_special: SpecialOption


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_group(job: tuple[list[str | bytes], SpecialOption, SpecialOption]) -> list[array.array[int]]:
    texts, allowed, disallowed = job
    assert _worker_tokenizer is not None, "worker not initialised"
    encode = _worker_tokenizer.encode
    return [array.array("l", encode(t, allowed_special=allowed, disallowed_special=disallowed)) for t in texts]


def split_evenly(texts: Sequence[str | bytes], n_groups: int) -> list[list[str | bytes]]:
    """Cut ``texts`` into at most ``n_groups`` consecutive groups of about equal character count."""
    target = max(1, sum(len(t) for t in texts) // n_groups)
    groups: list[list[str | bytes]] = [[]]
    size = 0
    for text in texts:
        if size >= target:
            groups.append([])
            size = 0
        groups[-1].append(text)
        size += len(text)
    return groups


def encode_in_threads(
    encode: Callable[[str | bytes], list[int]], texts: Sequence[str | bytes], num_threads: int
) -> list[list[int]]:
    """``[encode(t) for t in texts]`` on ``num_threads`` threads, a few contiguous groups each, in order."""
    groups = split_evenly(texts, num_threads * GROUPS_PER_WORKER)
    with ThreadPoolExecutor(num_threads, thread_name_prefix="microgpt-encode") as executor:
        return list(chain.from_iterable(executor.map(lambda group: list(map(encode, group)), groups)))


class EncodePool:
    """``num_workers`` processes, each with a copy of ``tokenizer``."""

    def __init__(self, tokenizer: Tokenizer, num_workers: int) -> None:
        """Start the workers (forked where possible)."""
        global _worker_tokenizer
        self.num_workers = num_workers
        if start_method() == "fork":
            # Forked workers inherit the module global; the pool keeps no reference to the tokenizer, so the
            # tokenizer can be garbage-collected (which stops the pool).
            _worker_tokenizer = tokenizer
            tokenizer._encoder.bpe.prepare()  # compiled code and hash table built once, inherited by the workers
            try:
                self._pool = process_context().Pool(num_workers)
            finally:
                _worker_tokenizer = None
        else:
            self._pool = process_context().Pool(num_workers, initializer=_init_worker, initargs=(tokenizer,))

    def encode(
        self, texts: Sequence[str | bytes], allowed: SpecialOption, disallowed: SpecialOption
    ) -> list[list[int]]:
        """Encode ``texts`` across the workers, in order."""
        jobs = [(group, allowed, disallowed) for group in split_evenly(texts, self.num_workers * GROUPS_PER_WORKER)]
        return [row.tolist() for group in self._pool.map(_encode_group, jobs, chunksize=1) for row in group]

    def close(self) -> None:
        """Stop the workers."""
        self._pool.terminate()
        self._pool.join()


def encode_batch(
    tokenizer: Tokenizer,
    texts: Sequence[str | bytes],
    num_workers: int,
    allowed_special: SpecialOption,
    disallowed_special: SpecialOption,
    pools: dict[int, EncodePool],
) -> list[list[int]]:
    """``tokenizer.encode`` of each text, on ``num_workers`` workers when there is enough text to pay for them.

    Args:
        tokenizer: The tokenizer.
        texts: Texts (or bytes).
        num_workers: How many workers.
        allowed_special: As ``Tokenizer.encode``.
        disallowed_special: As ``Tokenizer.encode``.
        pools: The tokenizer's process pools by ``num_workers``; a new one is added here (and stops with the
            tokenizer).

    Returns:
        One list of ids per text, in order.

    Raises:
        DisallowedSpecialError: As ``Tokenizer.encode``.
    """
    kwargs = _EncodeOptions(allowed_special=allowed_special, disallowed_special=disallowed_special)
    total = sum(len(t) for t in texts)
    if num_workers <= 1 or len(texts) < 2 or total < PARALLEL_MIN_CHARS:
        return [tokenizer.encode(t, **kwargs) for t in texts]
    for text in texts:  # checked here, so the error keeps its class and names the text's special token
        check_special(text, tokenizer.special_tokens_set, allowed_special, disallowed_special)
    if tokenizer._encoder.compiled_kind is not None:
        return encode_in_threads(functools.partial(tokenizer.encode, **kwargs), texts, num_workers)
    pool = pools.get(num_workers)
    if pool is None:
        pool = pools[num_workers] = EncodePool(tokenizer, num_workers)
        weakref.finalize(tokenizer, pool.close)
    return pool.encode(texts, allowed_special, disallowed_special)
