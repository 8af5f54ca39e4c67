"""The one switch for every fast path: MICROGPT_KERNELS, and the two names it replaces."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from microgpt.common.errors import ConfigError
from microgpt.common.kernels import kernels_enabled

SWITCHES = ("MICROGPT_KERNELS", "MICROGPT_NATIVE", "MICROGPT_NO_JIT")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No switch set, and the once-per-process reading forgotten before and after each test."""
    for name in SWITCHES:
        monkeypatch.delenv(name, raising=False)
    kernels_enabled.cache_clear()
    yield
    kernels_enabled.cache_clear()


def test_on_by_default_and_off_with_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    assert kernels_enabled()
    monkeypatch.setenv("MICROGPT_KERNELS", "0")
    kernels_enabled.cache_clear()
    assert not kernels_enabled()


@pytest.mark.parametrize(("name", "value"), [("MICROGPT_NATIVE", "0"), ("MICROGPT_NO_JIT", "1")])
def test_the_old_names_still_turn_everything_off_with_a_warning(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING, logger="microgpt.common.kernels"):
        assert not kernels_enabled()
    assert f"{name} is deprecated: set MICROGPT_KERNELS=0" in caplog.text


def test_the_new_name_wins_over_an_old_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROGPT_NATIVE", "0")
    monkeypatch.setenv("MICROGPT_KERNELS", "1")
    assert kernels_enabled()


def test_old_names_with_values_that_kept_kernels_on_still_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROGPT_NATIVE", "1")
    monkeypatch.setenv("MICROGPT_NO_JIT", "")
    assert kernels_enabled()


@pytest.mark.parametrize("value", ["off", "false", "2"])
def test_a_value_other_than_0_or_1_is_refused_by_name(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROGPT_KERNELS", value)
    with pytest.raises(ConfigError, match=f"MICROGPT_KERNELS={value!r}: use 0"):
        kernels_enabled()
