"""tiktoken's decode verbs (token ids → bytes or text) for :class:`~microgpt.tokenizer.tokenizer.Tokenizer`.

:class:`DecodingMixin` needs only the map from id to token bytes (special tokens as their UTF-8 text) and the
largest id; an unknown id raises :class:`UnknownTokenError`, a ``KeyError`` as in tiktoken.
"""

from __future__ import annotations

from collections.abc import Iterable

from microgpt.common.errors import MicrogptError

_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))  # 0b10xxxxxx: the 2nd to 4th bytes of a UTF-8 character


class UnknownTokenError(MicrogptError, KeyError):
    """A token id, or a text meant to be one token, that the vocabulary lacks (a ``KeyError``, as in tiktoken)."""

    def __str__(self) -> str:
        """The message itself (``KeyError`` would show it quoted, as a key)."""
        return str(self.args[0]) if self.args else ""


class DecodingMixin:
    """The decode verbs of :class:`~microgpt.tokenizer.tokenizer.Tokenizer`, which sets the two attributes below."""

    _decoder: dict[int, bytes]  # id → token bytes, special tokens as their UTF-8 text
    max_token_value: int  # the largest id

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token's UTF-8 text); the same as :meth:`decode_single_token_bytes`.

        Raises:
            UnknownTokenError: When the id is not in the vocabulary (a ``KeyError``).
        """
        try:
            return self._decoder[token_id]
        except KeyError:
            raise self._unknown_id(token_id) from None

    def _unknown_id(self, token_id: object) -> UnknownTokenError:
        return UnknownTokenError(f"token id {token_id!r} is not in the vocabulary (ids 0 to {self.max_token_value})")

    def decode_tokens_bytes(self, ids: Iterable[int]) -> list[bytes]:
        """The bytes of each token (special tokens as their UTF-8 text), e.g. to show how text was cut.

        Raises:
            UnknownTokenError: When an id is not in the vocabulary (a ``KeyError``).
        """
        try:
            return list(map(self._decoder.__getitem__, ids))
        except KeyError as error:
            raise self._unknown_id(error.args[0]) from None

    def decode_single_token_bytes(self, token: int) -> bytes:
        """The bytes of one token, special tokens included (tiktoken's name for :meth:`token_bytes`).

        Raises:
            UnknownTokenError: When the id is not in the vocabulary (a ``KeyError``).
        """
        return self.token_bytes(token)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenate the bytes of ``ids`` (special tokens as their UTF-8 text).

        Raises:
            UnknownTokenError: When an id is not in the vocabulary (a ``KeyError``, as in tiktoken).
        """
        return b"".join(self.decode_tokens_bytes(ids))

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Decode ``ids`` to text; bytes that are not valid UTF-8 become U+FFFD (``errors="replace"``).

        Raises:
            UnknownTokenError: When an id is not in the vocabulary (a ``KeyError``).
        """
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def decode_with_offsets(self, ids: Iterable[int]) -> tuple[str, list[int]]:
        """The text of ``ids`` and, for each token, the index of the character where it starts.

        A token that starts inside a character (its first byte is a UTF-8 continuation byte) gets the index of
        that character, as in tiktoken.

        >>> from microgpt.tokenizer import Tokenizer
        >>> tok = Tokenizer.train(["ab"], 257, special_tokens=())
        >>> tok.decode_with_offsets([256, 32, 0xC3, 0xA9, 97])
        ('ab éa', [0, 2, 3, 3, 4])

        Raises:
            UnknownTokenError: When an id is not in the vocabulary (a ``KeyError``).
            UnicodeDecodeError: When the bytes are not valid UTF-8 (tiktoken raises it too).
        """
        parts = self.decode_tokens_bytes(ids)
        offsets: list[int] = []
        chars = 0  # characters begun so far: the bytes that are not continuation bytes
        for part in parts:
            inside = bool(part) and 0x80 <= part[0] < 0xC0
            offsets.append(max(0, chars - inside))
            chars += len(part.translate(None, _CONTINUATION_BYTES))
        return b"".join(parts).decode("utf-8", errors="strict"), offsets

    def decode_batch(
        self, batch: Iterable[Iterable[int]], *, errors: str = "replace", num_threads: int | None = None
    ) -> list[str]:
        """:meth:`decode` of each sequence.

        ``num_threads`` (tiktoken's) is accepted and unused: decoding is one dictionary look-up per token under
        the GIL, so threads would only add their own cost.
        """
        del num_threads
        return [self.decode(ids, errors=errors) for ids in batch]

    def decode_bytes_batch(self, batch: Iterable[Iterable[int]], *, num_threads: int | None = None) -> list[bytes]:
        """:meth:`decode_bytes` of each sequence (``num_threads`` as in :meth:`decode_batch`)."""
        del num_threads
        return [self.decode_bytes(ids) for ids in batch]
