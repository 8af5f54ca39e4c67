r"""The tokenizer object: our byte-level BPE with tiktoken's verbs (encode, encode_ordinary, decode, ...).

A tokenizer is a map from token bytes to rank (the token id), a split pattern and a set of special tokens.
Encoding splits text with the pattern and encodes each chunk by rank order (:func:`~microgpt.tokenizer.bpe.
encode_chunk`): in compiled code for the known patterns, else through a regex and a per-chunk cache
(:mod:`~microgpt.tokenizer.encoder`). Special tokens in text follow tiktoken's rule (:mod:`~microgpt.tokenizer.
specials`); the decode verbs live in :mod:`~microgpt.tokenizer.decoding`, the workers of ``encode_batch`` in
:mod:`~microgpt.tokenizer.pool`.

The public API is tiktoken's ``Encoding``, verb for verb, with its semantics and exceptions, so code written for
tiktoken runs on it: ``encode``, ``encode_ordinary``, ``encode_batch``, ``encode_ordinary_batch``,
``encode_to_numpy``, ``encode_single_token``, ``decode``, ``decode_bytes``, ``decode_single_token_bytes``,
``decode_tokens_bytes``, ``decode_with_offsets``, ``decode_batch``, ``decode_bytes_batch``, ``token_byte_values``,
``is_special_token``, ``n_vocab``, ``max_token_value``, ``eot_token``, ``special_tokens_set``, ``name``. An unknown
token raises :class:`UnknownTokenError`, a ``KeyError`` as in tiktoken. (Not here: ``encode_with_unstable``.)

Bytes in: every encode verb also takes ``bytes``, valid UTF-8 or not. Valid UTF-8 gives the ids of its text;
otherwise the ids are tiktoken's ``Encoding._encode_bytes`` (see :meth:`Tokenizer.encode_ordinary`), and
``decode_bytes`` gives the bytes back exactly. (tiktoken's ``encode`` takes ``str`` only: a ``str`` with lone
surrogates, as ``bytes.decode(errors="surrogateescape")`` makes, has them replaced by U+FFFD, here as there.)

>>> tok = Tokenizer.train(["hello hello world"], vocab_size=260, special_tokens=())
>>> tok.decode(tok.encode("hello world"))
'hello world'
>>> tok.decode_bytes(tok.encode(b"hello \xff\xfe"))
b'hello \xff\xfe'
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from microgpt.common.errors import ConfigError
from microgpt.tokenizer.decoding import DecodingMixin, UnknownTokenError
from microgpt.tokenizer.encoder import ChunkEncoder
from microgpt.tokenizer.patterns import compile_pattern, pattern_name, resolve_pattern
from microgpt.tokenizer.pool import EncodePool, encode_batch
from microgpt.tokenizer.specials import AllSpecial, check_special, find_specials, first_special
from microgpt.tokenizer.trainer import train_vocab

ENDOFTEXT = "<|endoftext|>"


def _replace_surrogates(text: str) -> str:
    """Join valid surrogate pairs and replace lone surrogates with U+FFFD, exactly as tiktoken does."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class Tokenizer(DecodingMixin):
    """A byte-level BPE tokenizer: ranks (token bytes → id), a split pattern and special tokens.

    Build one with :meth:`train`, :meth:`from_pretrained` or :meth:`from_directory`.

    Args:
        ranks: Token bytes → rank; every single byte must be present.
        pattern: The split regex (syntax of the ``regex`` package) or a pattern name.
        special_tokens: Special token text → id; ids must not collide with ranks.
        name: A short name shown in logs and stored with shards.

    Raises:
        ConfigError: When a byte is missing, ids collide, or the pattern does not compile.
    """

    def __init__(
        self, ranks: dict[bytes, int], pattern: str, special_tokens: dict[str, int] | None = None, name: str = "bpe"
    ) -> None:
        """Build a tokenizer from its parts (see the class docstring)."""
        self.ranks = ranks
        self.pattern = resolve_pattern(pattern)
        self.special_tokens = dict(special_tokens or {})
        self.name = name
        self._regex = compile_pattern(self.pattern)
        self._decoder: dict[int, bytes] = {rank: token for token, rank in ranks.items()}
        if len(self._decoder) != len(ranks):
            raise ConfigError("two tokens share one rank")
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise ConfigError(f"not a byte-level vocabulary: {len(missing)} bytes have no token, e.g. {missing[0]}")
        for text, token_id in self.special_tokens.items():
            if token_id in self._decoder:
                raise ConfigError(f"special token {text!r} has id {token_id}, which is already a regular token")
            self._decoder[token_id] = text.encode("utf-8")
        if len(set(self.special_tokens.values())) != len(self.special_tokens):
            raise ConfigError("two special tokens share one id")
        self._special_ids = {token_id: text.encode("utf-8") for text, token_id in self.special_tokens.items()}
        self._encoder = ChunkEncoder(ranks, self.pattern, self._regex)
        self._pools: dict[int, EncodePool] = {}
        # The largest id (tiktoken's name); cl100k_base, for one, has gaps below it. n_vocab sizes an embedding.
        self.max_token_value: int = max(self._decoder)
        self.n_vocab: int = self.max_token_value + 1

    # ---- construction ------------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        documents: Iterable[str],
        vocab_size: int,
        *,
        pattern: str = "gpt4",
        special_tokens: Sequence[str] = (ENDOFTEXT,),
        workers: int = 1,
        progress: bool = False,
        name: str = "bpe",
    ) -> Tokenizer:
        """Train a new vocabulary on ``documents``.

        Tokens 0–255 are the bytes, then the learned merges in order, then the special tokens.

        Args:
            documents: Any iterable of strings (consumed once).
            vocab_size: Total size, special tokens included; at least 256 + the number of special tokens.
            pattern: ``gpt2``, ``gpt4`` (= ``cl100k``), ``o200k`` or a regex.
            special_tokens: Special token texts, given ids after the learned tokens.
            workers: Processes that count chunks (the result does not depend on it).
            progress: Show progress bars.
            name: The tokenizer's name.

        Returns:
            The trained tokenizer (fewer merges than asked only when the corpus runs out of pairs).

        Raises:
            ConfigError: When ``vocab_size`` is too small, a special token repeats, or the pattern is invalid.
            MicrogptError: When the corpus is empty.
        """
        specials = list(special_tokens)
        if len(set(specials)) != len(specials):
            raise ConfigError(f"special_tokens has duplicates: {specials}")
        if any(not s for s in specials):
            raise ConfigError("special_tokens: a special token cannot be empty")
        minimum = 256 + len(specials)
        if vocab_size < minimum:
            raise ConfigError(
                f"vocab_size must be at least 256 + {len(specials)} special tokens = {minimum}, got {vocab_size}"
            )
        regex_text = resolve_pattern(pattern)
        vocab = train_vocab(documents, vocab_size, regex_text, len(specials), workers=workers, progress=progress)
        ranks = {token: rank for rank, token in enumerate(vocab)}
        special_ids = {text: len(vocab) + i for i, text in enumerate(specials)}
        return cls(ranks, regex_text, special_ids, name=name)

    @classmethod
    def from_pretrained(cls, name: str, cache_dir: str | Path | None = None) -> Tokenizer:
        """Load one of OpenAI's encodings into our tokenizer.

        Names: ``gpt2``, ``r50k_base``, ``p50k_base``, ``p50k_edit``, ``cl100k_base``, ``o200k_base``.

        Files come from the cache folder (``cache_dir``, else ``$MICROGPT_TOKENIZER_DIR``, else
        ``<microgpt cache>/tokenizers``); a missing file is downloaded from the URL tiktoken uses and checked
        against its known sha256. With the files cached, nothing touches the network.

        Raises:
            ConfigError: For an unknown name (the message lists the known ones).
            MicrogptError: When a file is corrupt and cannot be downloaded again.
        """
        from microgpt.tokenizer.pretrained import load_pretrained

        ranks, pattern, specials = load_pretrained(name, cache_dir)
        return cls(ranks, pattern, specials, name=name)

    @classmethod
    def from_gpt2_files(cls, encoder_json: str | Path, vocab_bpe: str | Path, name: str = "gpt2") -> Tokenizer:
        """Load GPT-2's original ``encoder.json`` + ``vocab.bpe`` pair (the result equals ``gpt2``).

        Raises:
            MicrogptError: When the files are missing, malformed or disagree with each other.
        """
        from microgpt.tokenizer.patterns import GPT2_PATTERN
        from microgpt.tokenizer.pretrained import GPT2_SPECIALS, load_gpt2_ranks

        return cls(load_gpt2_ranks(Path(encoder_json), Path(vocab_bpe)), GPT2_PATTERN, dict(GPT2_SPECIALS), name=name)

    @classmethod
    def from_directory(cls, directory: str | Path) -> Tokenizer:
        """Load a tokenizer written by :meth:`save`.

        Raises:
            MicrogptError: When the folder is missing, the format is newer than this microgpt reads, or a file
                is corrupt (bad JSON, hash mismatch, malformed ranks).
        """
        from microgpt.tokenizer.storage import load_tokenizer_files

        return load_tokenizer_files(Path(directory))

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` (metadata), ``ranks.tiktoken`` and ``vocab.txt`` (human-readable) to ``directory``.

        Returns:
            The directory.
        """
        from microgpt.tokenizer.storage import save_tokenizer_files

        return save_tokenizer_files(self, Path(directory))

    # ---- identity ----------------------------------------------------------------------------------------

    @functools.cached_property
    def fingerprint(self) -> str:
        """Hex sha256 over ranks, pattern and special tokens: equal tokenizers have equal fingerprints."""
        digest = hashlib.sha256(b"microgpt-bpe-fingerprint-v1\n")
        digest.update(self.pattern.encode("utf-8") + b"\n")
        digest.update(json.dumps(sorted(self.special_tokens.items()), ensure_ascii=True).encode("ascii") + b"\n")
        for rank in sorted(self.ranks.values()):
            token = self._decoder[rank]
            digest.update(b"%d %d " % (rank, len(token)) + token)
        return digest.hexdigest()

    @property
    def eot_token(self) -> int:
        """The id of ``<|endoftext|>``.

        Raises:
            UnknownTokenError: When this tokenizer has no ``<|endoftext|>`` (a ``KeyError``, as in tiktoken).
        """
        if ENDOFTEXT not in self.special_tokens:
            raise UnknownTokenError(f"tokenizer {self.name!r} has no {ENDOFTEXT} special token")
        return self.special_tokens[ENDOFTEXT]

    @property
    def special_tokens_set(self) -> set[str]:
        """The special token texts."""
        return set(self.special_tokens)

    @property
    def pattern_name(self) -> str:
        """``gpt2``, ``gpt4`` or ``o200k`` for a known pattern, else ``custom``."""
        return pattern_name(self.pattern) or "custom"

    def is_special_token(self, token: int) -> bool:
        """Whether ``token`` is the id of a special token."""
        return token in self._special_ids

    def token_byte_values(self) -> list[bytes]:
        """The bytes of every regular (mergeable) token, sorted, as tiktoken lists them."""
        return sorted(self.ranks)

    def encode_single_token(self, text_or_bytes: str | bytes) -> int:
        """The id of a text or bytes that are exactly one token, a regular or a special one.

        As in tiktoken, special tokens are always accepted here (as text or as their UTF-8 bytes).

        >>> Tokenizer.train(["ab"], 257, special_tokens=("<|endoftext|>",)).encode_single_token(b"<|endoftext|>")
        256

        Raises:
            UnknownTokenError: When it is not a single token (a ``KeyError``, as in tiktoken).
        """
        data = text_or_bytes.encode("utf-8") if isinstance(text_or_bytes, str) else text_or_bytes
        token_id = self.ranks.get(data)  # a regular token first, as tiktoken looks them up
        if token_id is not None:
            return token_id
        try:
            return self.special_tokens[data.decode("utf-8")]
        except (UnicodeDecodeError, KeyError):
            raise UnknownTokenError(f"{text_or_bytes!r} is not a single token of {self.name!r}") from None

    def __repr__(self) -> str:
        """Name, size and pattern."""
        return f"<Tokenizer {self.name!r} n_vocab={self.n_vocab} pattern={self.pattern_name}>"

    # ---- encoding ----------------------------------------------------------------------------------------

    def encode_ordinary(self, text: str | bytes) -> list[int]:
        r"""Encode ``text`` with special tokens treated as plain text.

        ``bytes`` are encoded as their text when they are valid UTF-8. Otherwise (tiktoken's
        ``Encoding._encode_bytes``, id for id): the longest valid prefix is encoded as text, then its last chunk
        — with any all-whitespace tokens just before it — and every byte from the first invalid one to the end
        are BPE-encoded as one piece. Nothing is lost: ``decode_bytes`` gives the bytes back.

        >>> tok = Tokenizer.train(["aaa"], 258, special_tokens=())
        >>> tok.encode_ordinary("aaaa")
        [256, 256]
        >>> tok.encode_ordinary(b"aaaa\xffaa")
        [256, 256, 255, 256]
        """
        if isinstance(text, bytes):
            return self._encoder.encode_bytes(text)
        try:
            return self._encoder.encode(text)
        except UnicodeEncodeError:
            return self._encoder.encode(_replace_surrogates(text))

    def encode(
        self,
        text: str | bytes,
        *,
        allowed_special: AllSpecial | Collection[str] = frozenset(),
        disallowed_special: AllSpecial | Collection[str] = "all",
    ) -> list[int]:
        """Encode ``text``; special-token spellings are refused unless allowed (tiktoken's rules).

        Args:
            text: The text, or bytes (valid UTF-8 or not: the rules of :meth:`encode_ordinary` apply between
                special tokens, which are found by their UTF-8 bytes).
            allowed_special: Special tokens to encode as their id (``"all"`` for every one).
            disallowed_special: Special tokens whose spelling raises (``"all"``: every one not allowed);
                ``()`` encodes any other spelling as plain text.

        Returns:
            The token ids.

        Raises:
            DisallowedSpecialError: When the text spells a disallowed special token (a ``ValueError``).
        """
        allowed = check_special(text, self.special_tokens_set, allowed_special, disallowed_special)
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        start = 0
        for begin, end, special in find_specials(text, frozenset(allowed)):
            ids += self.encode_ordinary(text[start:begin])
            ids.append(self.special_tokens[special])
            start = end
        ids += self.encode_ordinary(text[start:])
        return ids

    def encode_to_numpy(
        self,
        text: str | bytes,
        *,
        allowed_special: AllSpecial | Collection[str] = frozenset(),
        disallowed_special: AllSpecial | Collection[str] = "all",
    ) -> npt.NDArray[np.uint32]:
        """:meth:`encode` as a ``uint32`` array; ordinary text on the compiled path makes no Python int per token.

        Raises:
            DisallowedSpecialError: As :meth:`encode`.
        """
        allowed = check_special(text, self.special_tokens_set, allowed_special, disallowed_special)
        if isinstance(text, str) and not (allowed and first_special(text, frozenset(allowed))):
            try:
                return self._encoder.encode_array(text)
            except UnicodeEncodeError:
                return self._encoder.encode_array(_replace_surrogates(text))
        ids = self.encode(text, allowed_special=allowed_special, disallowed_special=disallowed_special)
        return np.array(ids, dtype=np.uint32)

    def encode_ordinary_batch(
        self, texts: Sequence[str | bytes], *, num_workers: int = 1, num_threads: int | None = None
    ) -> list[list[int]]:
        """:meth:`encode_ordinary` of each text, on workers as :meth:`encode_batch` (tiktoken's ``num_threads`` too)."""
        return self.encode_batch(texts, num_workers=num_workers, num_threads=num_threads, disallowed_special=())

    def encode_batch(
        self,
        texts: Sequence[str | bytes],
        *,
        num_workers: int = 1,
        num_threads: int | None = None,
        allowed_special: AllSpecial | Collection[str] = frozenset(),
        disallowed_special: AllSpecial | Collection[str] = "all",
    ) -> list[list[int]]:
        """Encode many texts on ``num_workers`` workers when there is enough text (1 MB) to pay for them.

        The workers are threads when the compiled encoder runs (numba and a known pattern: it releases the GIL),
        else processes (forked where the platform allows), kept for later calls with the same ``num_workers`` so
        their caches stay warm; :meth:`close` stops them.

        Args:
            texts: Texts (or bytes, as :meth:`encode` takes them).
            num_workers: How many workers.
            num_threads: tiktoken's name for ``num_workers``; wins when given.
            allowed_special: As :meth:`encode`.
            disallowed_special: As :meth:`encode`.

        Returns:
            One list of ids per text, in order.

        Raises:
            DisallowedSpecialError: As :meth:`encode`.
        """
        if num_threads is not None:
            num_workers = num_threads
        return encode_batch(self, texts, num_workers, allowed_special, disallowed_special, self._pools)

    def close(self) -> None:
        """Stop the worker processes that :meth:`encode_batch` keeps (they also stop with the tokenizer)."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def __getstate__(self) -> dict[str, object]:
        """Pickle without worker pools and caches (for ``spawn`` workers)."""
        state = self.__dict__.copy()
        state["_pools"] = {}
        state.pop("_encoder")
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        """Rebuild the caches after unpickling."""
        self.__dict__.update(state)
        self._encoder = ChunkEncoder(self.ranks, self.pattern, self._regex)
