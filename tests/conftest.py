"""Shared fixtures: the real local HTTP server, paths to ../shared/data, and a hermetic environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http_server import ServerState, serve

ROOT = Path(__file__).resolve().parent.parent
# The project's shared data collection beside the repository (~29 MB of real corpora, OpenAI's rank files, the
# HellaSwag sample). It is not part of a clone: the tests that read it skip without it (README, "Tests").
SHARED_DATA = ROOT.parent / "shared" / "data"
SHARED_SKIP = (
    "../shared/data (the project's shared data folder, beside the repository) is not present; it does not ship "
    "with a clone; README, 'Tests', says what it holds and how to get the files"
)


@pytest.fixture
def http_server() -> Iterator[tuple[str, ServerState]]:
    """A real HTTP server on 127.0.0.1; register bytes in ``state.files[name]``."""
    with serve() as (url, state):
        yield url, state


@pytest.fixture
def shared_data() -> Path:
    """The folder of real data files beside the project (skips when it is absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(SHARED_SKIP)
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep every test off the user's caches and off the network hubs."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("MICROGPT_CACHE_DIR", str(cache / "microgpt"))
    monkeypatch.setenv("HF_HOME", str(cache / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MICROGPT_DEVICE", raising=False)


@pytest.fixture(autouse=True)
def _compiled_tokenizer_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests encode small texts: let them reach the compiled kernels at once (``bpe_jit.use_compiled``), as a
    process with the kernels compiled does, so the tests keep proving the compiled path against the plain one."""
    from microgpt.tokenizer import bpe_jit

    monkeypatch.setattr(bpe_jit, "_ready", True)
