"""The tokenizer object: our byte-level BPE with tiktoken's verbs (encode, encode_ordinary, decode, ...).

A tokenizer is a map from token bytes to rank (the token id), a split pattern and a set of special tokens.
Encoding splits text with the pattern and encodes each chunk by rank order (:func:`~microgpt.tokenizer.bpe.
encode_chunk`): in compiled code for the known patterns, else through a regex and a per-chunk cache
(:mod:`~microgpt.tokenizer.encoder`).

>>> tok = Tokenizer.train(["hello hello world"], vocab_size=260, special_tokens=())
>>> tok.decode(tok.encode("hello world"))
'hello world'
"""

from __future__ import annotations

import functools
import hashlib
import json
import weakref
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Literal, TypedDict

import regex

from microgpt.common.errors import ConfigError, MicrogptError
from microgpt.tokenizer.encoder import ChunkEncoder
from microgpt.tokenizer.patterns import compile_pattern, pattern_name, resolve_pattern
from microgpt.tokenizer.pool import EncodePool, encode_in_threads
from microgpt.tokenizer.trainer import train_vocab

ENDOFTEXT = "<|endoftext|>"
PARALLEL_MIN_CHARS = 1 << 20  # below this much text, encode_batch stays in this process

AllSpecial = Literal["all"]


class _EncodeOptions(TypedDict):
    allowed_special: AllSpecial | Collection[str]
    disallowed_special: AllSpecial | Collection[str]


class DisallowedSpecialError(MicrogptError, ValueError):
    """Text spells a special token that the caller did not allow (a ``ValueError``, as in tiktoken)."""


def _replace_surrogates(text: str) -> str:
    """Join valid surrogate pairs and replace lone surrogates with U+FFFD, exactly as tiktoken does."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class Tokenizer:
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
        self._encoder = ChunkEncoder(ranks, self.pattern, self._regex)
        self._pools: dict[int, EncodePool] = {}
        self.n_vocab = max(self._decoder) + 1

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
            MicrogptError: When this tokenizer has no ``<|endoftext|>``.
        """
        if ENDOFTEXT not in self.special_tokens:
            raise MicrogptError(f"tokenizer {self.name!r} has no {ENDOFTEXT} special token")
        return self.special_tokens[ENDOFTEXT]

    @property
    def special_tokens_set(self) -> set[str]:
        """The special token texts."""
        return set(self.special_tokens)

    @property
    def pattern_name(self) -> str:
        """``gpt2``, ``gpt4`` or ``o200k`` for a known pattern, else ``custom``."""
        return pattern_name(self.pattern) or "custom"

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token's UTF-8 text).

        Raises:
            MicrogptError: When the id is not in the vocabulary.
        """
        try:
            return self._decoder[token_id]
        except KeyError:
            raise MicrogptError(f"token id {token_id} is not in the vocabulary (n_vocab {self.n_vocab})") from None

    def encode_single_token(self, text: str | bytes) -> int:
        """The id of a text that is exactly one token (a special token or a regular one).

        Raises:
            MicrogptError: When the text is not a single token.
        """
        if isinstance(text, str):
            if text in self.special_tokens:
                return self.special_tokens[text]
            text = text.encode("utf-8")
        if text in self.ranks:
            return self.ranks[text]
        raise MicrogptError(f"{text!r} is not a single token")

    def __repr__(self) -> str:
        """Name, size and pattern."""
        return f"<Tokenizer {self.name!r} n_vocab={self.n_vocab} pattern={self.pattern_name}>"

    # ---- encoding ----------------------------------------------------------------------------------------

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` with special tokens treated as plain text.

        >>> Tokenizer.train(["aaa"], 258, special_tokens=()).encode_ordinary("aaaa")
        [256, 256]
        """
        try:
            return self._encoder.encode(text)
        except UnicodeEncodeError:
            return self._encoder.encode(_replace_surrogates(text))

    def encode(
        self,
        text: str,
        *,
        allowed_special: AllSpecial | Collection[str] = frozenset(),
        disallowed_special: AllSpecial | Collection[str] = "all",
    ) -> list[int]:
        """Encode ``text``; special-token spellings are refused unless allowed (tiktoken's rules).

        Args:
            text: The text.
            allowed_special: Special tokens to encode as their id (``"all"`` for every one).
            disallowed_special: Special tokens whose spelling raises (``"all"``: every one not allowed);
                ``()`` encodes any other spelling as plain text.

        Returns:
            The token ids.

        Raises:
            DisallowedSpecialError: When the text spells a disallowed special token.
        """
        allowed = self._check_special(text, allowed_special, disallowed_special)
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        start = 0
        for match in _special_regex(frozenset(allowed)).finditer(text):
            ids += self.encode_ordinary(text[start : match.start()])
            ids.append(self.special_tokens[match.group()])
            start = match.end()
        ids += self.encode_ordinary(text[start:])
        return ids

    def _check_special(
        self, text: str, allowed_special: AllSpecial | Collection[str], disallowed_special: AllSpecial | Collection[str]
    ) -> set[str]:
        """Raise if ``text`` spells a disallowed special token; return the allowed special tokens."""
        allowed = self.special_tokens_set if isinstance(allowed_special, str) else set(allowed_special)
        if isinstance(disallowed_special, str):
            disallowed = self.special_tokens_set - allowed
        else:
            disallowed = set(disallowed_special)
        if disallowed and (match := _special_regex(frozenset(disallowed)).search(text)):
            raise DisallowedSpecialError(
                f"text contains the special token {match.group()!r}, which is disallowed; pass "
                f"allowed_special={{{match.group()!r}}} to encode it as a special token, or "
                f"disallowed_special=() to encode it as plain text"
            )
        return allowed & self.special_tokens_set

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        num_workers: int = 1,
        allowed_special: AllSpecial | Collection[str] = frozenset(),
        disallowed_special: AllSpecial | Collection[str] = "all",
    ) -> list[list[int]]:
        """Encode many texts on ``num_workers`` workers when there is enough text (1 MB) to pay for them.

        The workers are threads when the compiled encoder runs (numba and a known pattern: it releases the GIL),
        else processes (forked where the platform allows), kept for later calls with the same ``num_workers`` so
        their caches stay warm; :meth:`close` stops them.

        Returns:
            One list of ids per text, in order.

        Raises:
            DisallowedSpecialError: As :meth:`encode`.
        """
        kwargs = _EncodeOptions(allowed_special=allowed_special, disallowed_special=disallowed_special)
        total = sum(len(t) for t in texts)
        if num_workers <= 1 or len(texts) < 2 or total < PARALLEL_MIN_CHARS:
            return [self.encode(t, **kwargs) for t in texts]
        for text in texts:  # checked here, so the error keeps its class and names the text's special token
            self._check_special(text, allowed_special, disallowed_special)
        if self._encoder.compiled_kind is not None:
            return encode_in_threads(functools.partial(self.encode, **kwargs), texts, num_workers)
        pool = self._pools.get(num_workers)
        if pool is None:
            pool = self._pools[num_workers] = EncodePool(self, num_workers)
            weakref.finalize(self, pool.close)
        return pool.encode(texts, allowed_special, disallowed_special)

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

    # ---- decoding ----------------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenate the bytes of ``ids`` (special tokens as their UTF-8 text).

        Raises:
            MicrogptError: When an id is not in the vocabulary.
        """
        try:
            return b"".join(map(self._decoder.__getitem__, ids))
        except KeyError as error:
            raise MicrogptError(f"token id {error.args[0]} is not in the vocabulary (n_vocab {self.n_vocab})") from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Decode ``ids`` to text; bytes that are not valid UTF-8 become U+FFFD (``errors="replace"``).

        Raises:
            MicrogptError: When an id is not in the vocabulary.
        """
        return self.decode_bytes(ids).decode("utf-8", errors=errors)


@functools.lru_cache(maxsize=64)
def _special_regex(tokens: frozenset[str]) -> regex.Pattern[str]:
    """One regex that finds any of ``tokens`` (longest first, so a token that prefixes another loses)."""
    return regex.compile("|".join(regex.escape(t) for t in sorted(tokens, key=lambda t: (-len(t), t))))
