from __future__ import annotations

import subprocess
import sys

from microgpt import __version__


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "microgpt", *args], capture_output=True, text=True, timeout=120)


def test_help_and_version() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "microgpt" in result.stdout
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"microgpt {__version__}"


def test_unknown_command_is_a_usage_error() -> None:
    result = run("no-such-command")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
