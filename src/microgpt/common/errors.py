"""The errors microgpt shows to a user: one clear line first, no traceback in the CLI.

Library code raises these for bad input (a missing file, a config typo, a corrupt checkpoint). The CLI prints
``error: <message>`` and exits with :attr:`MicrogptError.exit_code`; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class MicrogptError(Exception):
    """A problem with the user's input or environment, reported without a traceback (CLI exit code 1)."""

    exit_code: int = 1


class ConfigError(MicrogptError):
    """An invalid configuration: unknown field, wrong type, bad override (CLI exit code 2, like a usage error)."""

    exit_code = 2


class DownloadError(MicrogptError):
    """A URL could not be fetched: bad status, timeout after retries, size limit, hash mismatch."""
