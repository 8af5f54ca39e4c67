"""With ``MICROGPT_REQUIRE_KERNELS=1`` (CI: ``.ci/run`` sets it), the fast paths must build and run here.

Everywhere else the tests of the model's native C kernels and of the tokenizer's numba kernels skip where those
cannot be built (no C compiler, no numba): the plain code gives the same results without them. On CI such a skip
would hide a broken kernel build behind a green run, so there these tests fail instead, with the build's error.
"""

from __future__ import annotations

import logging
import os

import pytest

from microgpt.model import native
from microgpt.tokenizer import Tokenizer, bpe_jit
from microgpt.tokenizer.bpe import encode_chunk

REQUIRE_ENV = "MICROGPT_REQUIRE_KERNELS"
pytestmark = pytest.mark.skipif(
    os.environ.get(REQUIRE_ENV) != "1",
    reason=f"{REQUIRE_ENV} is not 1: the kernel tests may skip where the kernels cannot be built (CI sets it)",
)
SWITCHES = ("MICROGPT_KERNELS", "MICROGPT_NATIVE", "MICROGPT_NO_JIT")


def _switches() -> str:
    return ", ".join(f"{name}={os.environ[name]!r}" for name in SWITCHES if name in os.environ) or "none set"


def test_native_kernels_build_and_load(caplog: pytest.LogCaptureFixture) -> None:
    if native.library() is None:
        native.library.cache_clear()  # build again, to show why it failed
        with caplog.at_level(logging.WARNING):
            native.library()
        reasons = "; ".join(record.getMessage() for record in caplog.records) or "no warning logged"
        pytest.fail(f"the native C kernels are not available ({reasons}); kernel switches: {_switches()}")


def test_numba_kernels_import_compile_and_agree() -> None:
    if not bpe_jit.jit_available():
        try:
            from microgpt.tokenizer import bpe_kernels, split_kernels  # noqa: F401  # the import error says why
        except ImportError as error:
            pytest.fail(f"the numba kernels cannot be imported: {error}")
        pytest.fail(f"the numba kernels import but are turned off; kernel switches: {_switches()}")
    ranks = {bytes([i]): i for i in range(256)} | {b"ab": 256, b"abc": 257, b"ca": 258}
    pieces = ["abcab", "cabca" * 40, "x"]  # the second is longer than LONG_CHUNK: the heap kernel
    assert bpe_jit.ChunkBPE(ranks).encode(pieces) == [tuple(encode_chunk(p.encode(), ranks)) for p in pieces]
    tok = Tokenizer.train(["the cat sat on the mat, 123 times\n\n"] * 5, 300, pattern="gpt4")
    assert tok._encoder.compiled_kind is not None  # the compiled split + BPE serves encode
    text = "the cat sat on 12345 mats!\n\n  indeed"
    plain = Tokenizer(tok.ranks, tok.pattern, tok.special_tokens)
    plain._encoder.compiled_kind = None
    assert tok.encode(text) == plain.encode(text)
